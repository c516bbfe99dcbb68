//! Restore half of the network namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use ferry_images::{pb, ImageDir};

use super::netlink::Rtnl;
use super::{image_names, nd_type, run_tool, with_netns, NetError};
use crate::uts::enter::{in_namespaces, Ns};

const STAGE: &str = "restore";
/// Flags restore sets on a link (the rest are state the kernel reports).
const SETTABLE: u32 =
    (libc::IFF_UP | libc::IFF_NOARP | libc::IFF_PROMISC | libc::IFF_ALLMULTI | libc::IFF_MULTICAST)
        as u32;

/// Where the outside end of a veth goes.
#[derive(Debug, Clone)]
pub struct VethPeer {
    /// Name of the outside end.
    pub name: String,
    /// Its network namespace (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub netns: PathBuf,
}

/// Restore options.
#[derive(Debug, Clone, Default)]
pub struct NetRestoreOpts {
    /// For each veth inside (by name), its outside end.
    pub veth_peers: BTreeMap<String, VethPeer>,
}

fn sys<'a>(what: &'a str, call: &'static str) -> impl FnOnce(std::io::Error) -> NetError + 'a {
    move |source| NetError::Sys {
        stage: STAGE,
        what: what.to_string(),
        call,
        source,
    }
}

fn open_image(dir: &ImageDir, name: &str) -> Result<Option<File>, NetError> {
    let p = dir.path().join(name);
    if !p.exists() {
        return Ok(None);
    }
    File::open(&p).map(Some).map_err(|source| NetError::Sys {
        stage: STAGE,
        what: p.display().to_string(),
        call: "open",
        source,
    })
}

/// Recreates links, addresses and routes from the images in the (fresh) network namespace
/// of task `pid`. Returns the links restored.
pub fn restore_net(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
    opts: &NetRestoreOpts,
) -> Result<Vec<pb::NetDeviceEntry>, NetError> {
    let [netdev, ifaddr, route, route6] = image_names(ns_id);
    let links: Vec<pb::NetDeviceEntry> =
        dir.read_entries(&netdev)
            .map_err(|source| NetError::Image {
                stage: STAGE,
                file: netdev.clone(),
                source,
            })?;
    // Outside namespaces are opened now, from ferry's own view.
    let mut peers: BTreeMap<String, (String, File)> = BTreeMap::new();
    for l in &links {
        match l.r#type {
            nd_type::LOOPBACK => {}
            nd_type::VETH => {
                let p = opts
                    .veth_peers
                    .get(&l.name)
                    .ok_or_else(|| NetError::Unsupported {
                        stage: STAGE,
                        pid,
                        what: format!(
                            "veth {} (index {}) has no outside end given (veth_peers)",
                            l.name, l.ifindex
                        ),
                    })?;
                let f = File::open(&p.netns).map_err(sys(&p.name, "open peer netns"))?;
                peers.insert(l.name.clone(), (p.name.clone(), f));
            }
            t => {
                return Err(NetError::Unsupported {
                    stage: STAGE,
                    pid,
                    what: format!(
                        "{netdev}: link {} of nd_type {t}: only loopback and veth are restored",
                        l.name
                    ),
                })
            }
        }
    }
    let files = [
        open_image(dir, &ifaddr)?,
        open_image(dir, &route)?,
        open_image(dir, &route6)?,
    ];
    let what = format!("task {pid}");
    in_namespaces(pid, &[Ns::Net], || -> Result<(), NetError> {
        let mut rt = Rtnl::open().map_err(sys(&what, "netlink socket"))?;
        for l in &links {
            let w = format!("task {pid} link {}", l.name);
            let index = l.ifindex as i32;
            if l.r#type == nd_type::VETH {
                let (peer, ns) = &peers[&l.name];
                let ns_fd: OwnedFd = ns.try_clone().map_err(sys(&w, "dup netns fd"))?.into();
                rt.add_veth(&l.name, index, peer, &ns_fd)
                    .map_err(sys(&w, "RTM_NEWLINK veth"))?;
                rt.set_attrs(index, l.mtu, l.address.as_deref())
                    .map_err(sys(&w, "RTM_NEWLINK mtu/address"))?;
                // The dumped link had carrier: its outside end was up, so bring the new one up.
                if l.flags & libc::IFF_LOWER_UP as u32 != 0 {
                    let peer = peer.clone();
                    let pw = format!("{w} peer {peer}");
                    with_netns(ns, &pw, || -> Result<(), NetError> {
                        let mut o = Rtnl::open().map_err(sys(&pw, "netlink socket"))?;
                        let pl = o.links().map_err(sys(&pw, "RTM_GETLINK"))?;
                        let p =
                            pl.iter()
                                .find(|x| x.name == peer)
                                .ok_or_else(|| NetError::Sys {
                                    stage: STAGE,
                                    what: pw.clone(),
                                    call: "find peer",
                                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                                })?;
                        o.set_flags(p.index, libc::IFF_UP as u32, libc::IFF_UP as u32)
                            .map_err(sys(&pw, "RTM_NEWLINK up"))
                    })??;
                }
            } else if l.mtu != 65536 {
                rt.set_attrs(index, l.mtu, None)
                    .map_err(sys(&w, "RTM_NEWLINK mtu"))?;
            }
            rt.set_flags(index, l.flags, SETTABLE)
                .map_err(sys(&w, "RTM_NEWLINK flags"))?;
        }
        let [fa, fr, fr6] = files;
        // `ip ... restore` skips what already exists (lo's addresses, kernel routes).
        if let Some(f) = fa {
            run_tool(
                STAGE,
                &what,
                &["ip", "addr", "restore"],
                Some(f),
                None,
                None,
            )?;
        }
        if let Some(f) = fr {
            run_tool(
                STAGE,
                &what,
                &["ip", "-4", "route", "restore"],
                Some(f),
                None,
                None,
            )?;
        }
        if let Some(f) = fr6 {
            run_tool(
                STAGE,
                &what,
                &["ip", "-6", "route", "restore"],
                Some(f),
                None,
                None,
            )?;
        }
        Ok(())
    })
    .map_err(|source| NetError::Enter {
        stage: STAGE,
        source,
    })??;
    Ok(links)
}

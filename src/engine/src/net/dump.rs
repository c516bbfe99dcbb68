//! Dump half of the network namespace.

use std::fs::File;

use ferry_images::{pb, ImageDir};

use super::netlink::{Link, Rtnl};
use super::{image_names, nd_type, run_tool, NetError};
use crate::uts::enter::{in_namespaces, Ns};

const STAGE: &str = "dump";
const ARPHRD_LOOPBACK: u16 = 772;

/// A link as `net_device_entry`, or why it cannot be dumped.
fn entry(pid: i32, l: &Link) -> Result<pb::NetDeviceEntry, NetError> {
    let ty = match (l.hw_type, l.kind.as_deref()) {
        (ARPHRD_LOOPBACK, _) => nd_type::LOOPBACK,
        (_, Some("veth")) => nd_type::VETH,
        (_, kind) => {
            return Err(NetError::Unsupported {
                stage: STAGE,
                pid,
                what: format!(
                    "link {} (index {}, kind {}) : only loopback and veth links are dumped",
                    l.name,
                    l.index,
                    kind.unwrap_or("none")
                ),
            })
        }
    };
    if let Some(m) = l.master {
        return Err(NetError::Unsupported {
            stage: STAGE,
            pid,
            what: format!(
                "link {} is enslaved to link {m}; bridges and bonds are not dumped",
                l.name
            ),
        });
    }
    Ok(pb::NetDeviceEntry {
        r#type: ty,
        ifindex: l.index as u32,
        mtu: l.mtu,
        flags: l.flags,
        name: l.name.clone(),
        tun: None,
        address: (ty != nd_type::LOOPBACK).then(|| l.address.clone()),
        conf: vec![],
        conf4: vec![],
        conf6: vec![],
        macvlan: None,
        peer_ifindex: if ty == nd_type::VETH { l.link } else { None },
        peer_nsid: if ty == nd_type::VETH {
            l.link_netnsid.map(|v| v as u32)
        } else {
            None
        },
        master: None,
        sit: None,
    })
}

/// Dumps links, addresses and routes of the network namespace of task `pid` into
/// `netdev-ID.img`, `ifaddr-ID.img`, `route-ID.img` and `route6-ID.img`.
pub fn dump_net(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<Vec<pb::NetDeviceEntry>, NetError> {
    let [netdev, ifaddr, route, route6] = image_names(ns_id);
    let create = |name: &str| {
        let p = dir.path().join(name);
        File::create(&p).map_err(|source| NetError::Sys {
            stage: STAGE,
            what: p.display().to_string(),
            call: "create",
            source,
        })
    };
    let (fa, fr, fr6) = (create(&ifaddr)?, create(&route)?, create(&route6)?);
    let what = format!("task {pid}");
    let links = in_namespaces(pid, &[Ns::Net], || -> Result<Vec<Link>, NetError> {
        let links = Rtnl::open()
            .and_then(|mut r| r.links())
            .map_err(|source| NetError::Sys {
                stage: STAGE,
                what: what.clone(),
                call: "RTM_GETLINK",
                source,
            })?;
        run_tool(STAGE, &what, &["ip", "addr", "save"], None, Some(fa), None)?;
        run_tool(
            STAGE,
            &what,
            &["ip", "-4", "route", "save", "table", "all"],
            None,
            Some(fr),
            None,
        )?;
        run_tool(
            STAGE,
            &what,
            &["ip", "-6", "route", "save", "table", "all"],
            None,
            Some(fr6),
            None,
        )?;
        Ok(links)
    })
    .map_err(|source| NetError::Enter {
        stage: STAGE,
        source,
    })??;
    let entries = links
        .iter()
        .map(|l| entry(pid, l))
        .collect::<Result<Vec<_>, _>>()?;
    dir.write_entries(&netdev, &entries)
        .map_err(|source| NetError::Image {
            stage: STAGE,
            file: netdev,
            source,
        })?;
    Ok(entries)
}

//! Network namespace: loopback and a veth with MTU, MAC, IPv4/IPv6 addresses and a route,
//! dumped and restored into fresh namespaces twice in a row, with real TCP connectivity
//! checked through the restored veth; and the nftables network lock. Runs as root; every
//! namespace here belongs to a child process killed on drop, nothing touches the host's.

#[path = "container_res_common.rs"]
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{crit_decodes_all, NsChild};
use ferry_engine::net::{self, NetRestoreOpts, VethPeer};
use ferry_engine::uts::enter::{in_namespaces, Ns};
use ferry_images::ImageDir;

const MAC: &str = "02:46:45:52:52:59";

/// An "outside" namespace with a listener on 10.77.0.1, and the container end `eth0`.
fn outside_with_listener(outside: &NsChild) -> (TcpListener, SocketAddr) {
    outside.run(
        &["-n"],
        &["ip", "addr", "add", "10.77.0.1/24", "dev", "out0"],
    );
    outside.run(&["-n"], &["ip", "link", "set", "out0", "up"]);
    let l = in_namespaces(outside.pid, &[Ns::Net], || {
        TcpListener::bind("10.77.0.1:0").unwrap()
    })
    .unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn connects(pid: i32, to: SocketAddr) -> bool {
    in_namespaces(pid, &[Ns::Net], || {
        TcpStream::connect_timeout(&to, Duration::from_millis(400)).is_ok()
    })
    .unwrap()
}

fn build(inside: &NsChild, outside: &NsChild) {
    let p = inside.pid.to_string();
    outside.run(
        &["-n"],
        &[
            "ip", "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", &p,
        ],
    );
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ip", "link", "set", "eth0", "mtu", "1400", "address", MAC],
        &["ip", "link", "set", "eth0", "up"],
        &["ip", "addr", "add", "10.77.0.2/24", "dev", "eth0"],
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd77::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
        &["ip", "route", "add", "10.88.0.0/16", "via", "10.77.0.1"],
    ] {
        inside.run(&["-n"], cmd);
    }
}

fn verify(inside: &NsChild, ifindex: &str) {
    let link = inside.run(&["-n"], &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.starts_with(&format!("{ifindex}: eth0@")), "{link}");
    assert!(
        link.contains("mtu 1400") && link.contains(MAC) && link.contains(",UP"),
        "{link}"
    );
    let addr = inside.run(&["-n"], &["ip", "-o", "addr", "show"]);
    assert!(addr.contains("inet 10.77.0.2/24"), "{addr}");
    assert!(addr.contains("inet6 fd77::2/64"), "{addr}");
    assert!(addr.contains("lo    inet 127.0.0.1/8"), "{addr}");
    let routes = inside.run(&["-n"], &["ip", "route"]);
    assert!(
        routes.contains("10.88.0.0/16 via 10.77.0.1 dev eth0"),
        "{routes}"
    );
}

#[test]
fn net_links_addresses_routes_survive_two_cycles() {
    let inside = NsChild::spawn(&["--net"]);
    let outside = NsChild::spawn(&["--net"]);
    build(&inside, &outside);
    let (_l, to) = outside_with_listener(&outside);
    assert!(connects(inside.pid, to), "setup: no connectivity");
    let ifindex = inside
        .run(&["-n"], &["ip", "-o", "link", "show", "eth0"])
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(ifindex, "1");
    verify(&inside, &ifindex);
    let mut src = (inside, outside);
    let mut keep = Vec::new();
    for round in 1..=2 {
        let t = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(t.path()).unwrap();
        let links = net::dump_net(src.0.pid, &dir, 9).unwrap();
        assert_eq!(
            links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["lo", "eth0"],
            "round {round}"
        );
        assert_eq!(crit_decodes_all(t.path()), ["netdev-9.img"]);
        for raw in ["ifaddr-9.img", "route-9.img", "route6-9.img"] {
            assert!(
                std::fs::metadata(t.path().join(raw)).unwrap().len() > 0,
                "{raw}"
            );
        }
        let inside2 = NsChild::spawn(&["--net"]);
        let outside2 = NsChild::spawn(&["--net"]);
        let opts = NetRestoreOpts {
            veth_peers: [(
                "eth0".to_string(),
                VethPeer {
                    name: "out0".into(),
                    netns: format!("/proc/{}/ns/net", outside2.pid).into(),
                },
            )]
            .into(),
        };
        net::restore_net(inside2.pid, &dir, 9, &opts).unwrap();
        verify(&inside2, &ifindex);
        let (_l2, to2) = outside_with_listener(&outside2);
        assert!(
            connects(inside2.pid, to2),
            "round {round}: no connectivity through the restored veth"
        );
        keep.push(std::mem::replace(&mut src, (inside2, outside2)));
    }
}

#[test]
fn net_restore_without_peer_and_unsupported_links_fail_clearly() {
    let inside = NsChild::spawn(&["--net"]);
    let outside = NsChild::spawn(&["--net"]);
    build(&inside, &outside);
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    net::dump_net(inside.pid, &dir, 2).unwrap();
    let b = NsChild::spawn(&["--net"]);
    let err = net::restore_net(b.pid, &dir, 2, &NetRestoreOpts::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("veth eth0") && err.contains("outside end"),
        "{err}"
    );
    // A bridge is not supported yet: the dump says which link and kind.
    inside.run(&["-n"], &["ip", "link", "add", "br0", "type", "bridge"]);
    let err = net::dump_net(inside.pid, &dir, 3).unwrap_err().to_string();
    assert!(err.contains("br0") && err.contains("bridge"), "{err}");
}

fn tables(pid: &NsChild) -> String {
    pid.run(&["-n"], &["nft", "list", "tables"])
}

#[test]
fn network_lock_drops_traffic_until_unlocked_and_cleans_up() {
    let inside = NsChild::spawn(&["--net"]);
    let outside = NsChild::spawn(&["--net"]);
    build(&inside, &outside);
    let (_l, to) = outside_with_listener(&outside);
    assert!(connects(inside.pid, to));
    let lock = net::lock_network(inside.pid, "t1").unwrap();
    assert!(tables(&inside).contains("table inet ferry-t1"));
    assert!(!connects(inside.pid, to), "locked namespace still connects");
    lock.unlock().unwrap();
    assert!(!tables(&inside).contains("ferry-t1"));
    assert!(
        connects(inside.pid, to),
        "unlocked namespace does not connect"
    );
    // Dropped without unlock (an error path): the table goes anyway.
    {
        let _lock = net::lock_network(inside.pid, "t2").unwrap();
        assert!(tables(&inside).contains("ferry-t2"));
    }
    assert!(!tables(&inside).contains("ferry-t2"));
    assert!(connects(inside.pid, to));
    // A second lock of the same tag is refused by nft (table exists) and names the table.
    let l3 = net::lock_network(inside.pid, "t3").unwrap();
    let err = net::lock_network(inside.pid, "bad tag")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad tag"), "{err}");
    l3.unlock().unwrap();
}

/// The table ferry makes over nfnetlink is the ruleset `hooks/network-lock.nft` documents:
/// `nft` lists both the same, and a second lock of the namespace under the same tag is
/// refused without touching the first.
#[test]
fn network_lock_table_is_the_documented_ruleset() {
    let ns = NsChild::spawn(&["--net"]);
    let list = |t: &str| ns.run(&["-n"], &["nft", "list", "table", "inet", t]);
    let lock = net::lock_network(ns.pid, "doc").unwrap();
    let ours = list("ferry-doc");
    let again = net::lock_network(ns.pid, "doc").unwrap_err().to_string();
    assert!(
        again.contains("ferry-doc") && again.contains("exists"),
        "{again}"
    );
    assert_eq!(
        list("ferry-doc"),
        ours,
        "a refused second lock changed the table"
    );
    lock.unlock().unwrap();

    let src = include_str!("../../../hooks/network-lock.nft").replace("@TABLE@", "ferry-doc");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), src).unwrap();
    ns.run(&["-n"], &["nft", "-f", file.path().to_str().unwrap()]);
    let documented = list("ferry-doc");
    ns.run(&["-n"], &["nft", "delete", "table", "inet", "ferry-doc"]);
    assert_eq!(ours, documented);
    assert!(ours.contains("meta mark 0x0000c114 accept"), "{ours}");
}

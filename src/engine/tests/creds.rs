//! Capabilities across checkpoints, zdtm style: tests/workloads/caps_ambient.c raises
//! CAP_NET_BIND_SERVICE and CAP_NET_RAW into its ambient set (as root, and as uid 1000 keeping
//! only those two: a container's runAsUser with ambient capabilities), says "ready", is dumped
//! and restored twice in a row by `ferry-criu`, then checks from the inside that its ambient,
//! effective, permitted and inheritable sets and its uids are as before. Between the cycles the
//! test compares the Cap* lines of /proc, CapAmb included.

mod crit;
mod restore_common;
mod support;
mod workload;

use std::os::unix::fs::PermissionsExt;

use restore_common::*;
use support::{assert_ok, dump, restore_ok, start, verdict, wait_gone};

fn caps_view(pid: u32) -> Vec<String> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("Uid:") || l.starts_with("Gid:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn run_mode(mode: &str) {
    setup();
    let bin = workload::build("caps_ambient.c", "caps-ambient", &["-O1", "-Wall"]);
    let work = tempfile::tempdir().unwrap();
    // The "user" mode writes its files as uid 1000.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = work.path().to_str().unwrap();
    let pid = start(&bin, &[mode, dir], Some(&work.path().join("ready")));
    let _k = Killer(vec![pid]);
    let before = caps_view(pid);
    assert!(
        before.iter().any(|l| l == "CapAmb: 0000000000002400"),
        "workload did not raise its ambient set: {before:?}"
    );
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        let out = dump(pid, d.path(), &[]);
        assert_ok(&out, d.path(), &format!("round {round}: dump"));
        wait_gone(&[pid]);
        restore_ok(d.path(), &format!("round {round}"));
        assert_eq!(
            caps_view(pid),
            before,
            "round {round}: capabilities of {pid}"
        );
    }
    assert_eq!(verdict(pid, work.path()), "PASS");
}

#[test]
fn ambient_capabilities_of_root_two_cycles() {
    run_mode("root");
}

#[test]
fn ambient_capabilities_of_uid_1000_two_cycles() {
    run_mode("user");
}

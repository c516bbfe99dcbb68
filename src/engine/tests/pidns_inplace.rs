//! In-place restore (`pidns::inplace::restore_in_place`), the container runtime's path: a
//! harness plays the runtime's init (unshare(CLONE_NEWPID | CLONE_NEWNS), fork, /proc
//! remounted) and calls the entry point as PID 1 of the fresh namespace. Twice in a row, each
//! time checked from the inside; and a failure before the point of no return comes back as an
//! error with nothing left running.

mod pidns_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use pidns_common::*;

fn harness(dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-pidns-harness"));
    c.arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run ferry-pidns-harness")
}

#[test]
fn pidns_in_place_restore_twice() {
    subreaper();
    let reports = tempfile::tempdir().unwrap();
    let (mut unshare, init) = start(reports.path());
    let mut guard = NsGuard(init);
    let before = wait_reports(reports.path(), &BTreeMap::new());
    check_shape(&before);

    let mut host = init;
    let mut last = before.clone();
    for round in 0..2 {
        let imgs = tempfile::tempdir().unwrap();
        dump_and_check(host, imgs.path());
        guard.0 = 0;
        if round == 0 {
            // The unshare process ends with its child, which the dump killed.
            let _ = unshare.wait();
        }
        let out = harness(imgs.path(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_ok(&out, "in-place restore", &imgs.path().join("restore.log"));
        // "<host pid of PID 1> ok <ns pids...>"
        let mut w = stdout.split_whitespace();
        host = w.next().unwrap().parse().unwrap();
        guard.0 = host;
        assert_eq!(w.next(), Some("ok"), "{stdout}");
        let pids: Vec<&str> = w.collect();
        assert_eq!(pids.len(), 4, "{stdout}");
        assert_eq!(pids[0], "1");
        assert_eq!(ns_pid(host), 1);
        let now = wait_reports(reports.path(), &counters(&last));
        assert_same(&before, &now);
        last = now;
    }
}

#[test]
fn pidns_in_place_failure_is_reported_before_the_jump() {
    subreaper();
    let reports = tempfile::tempdir().unwrap();
    let (mut unshare, init) = start(reports.path());
    let guard = NsGuard(init);
    let before = wait_reports(reports.path(), &BTreeMap::new());
    let imgs = tempfile::tempdir().unwrap();
    dump_and_check(init, imgs.path());
    drop(guard);
    // The unshare process ends with its child, which the dump killed.
    let _ = unshare.wait();
    // Task "b" fails after its children exist: PID 1 must get the error back, not jump.
    let b = before["b"].pid.to_string();
    let out = harness(imgs.path(), &[("FERRY_TEST_FAIL_TASK", &b)]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("error:") && stdout.contains("injected failure"),
        "{stdout}"
    );
    let host: i32 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        !Path::new(&format!("/proc/{host}")).exists(),
        "the init still exists"
    );
    // PID 1 got the error back and exited with it (rather than being killed).
    assert!(stdout.contains("init exited with 1"), "{stdout}\n{stderr}");
    // Nothing of the tree reports any more.
    let c = counters(&wait_reports_none(reports.path()));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(c, counters(&wait_reports_none(reports.path())));
}

fn wait_reports_none(dir: &Path) -> BTreeMap<String, Report> {
    ROLES
        .iter()
        .filter_map(|r| Some((r.to_string(), read_report(dir, r)?)))
        .collect()
}

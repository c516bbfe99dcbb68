//! In-place restore (`pidns::inplace::restore_in_place`), the container runtime's path: a
//! harness plays the runtime's init (unshare(CLONE_NEWPID | CLONE_NEWNS), fork, /proc
//! remounted) and calls the entry point as PID 1 of the fresh namespace, while the harness
//! itself, outside the namespace, runs the outside half. Twice in a row, each time checked from
//! the inside, with exactly the tree's processes in the namespace (no helper left behind); a
//! failure before the point of no return, and errors before the plan exists (a broken image
//! directory, an exe that is not there), come back with the engine's message and nothing left
//! running.

mod crit;
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
    two_cycles(
        &|imgs| {
            let out = harness(imgs, &[]);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_ok(&out, "in-place restore", &imgs.join("restore.log"));
            // "<host pid of PID 1> ok <ns pids...>"
            (host_in(&stdout), stdout)
        },
        &|round, host, stdout| {
            let mut w = stdout.split_whitespace().skip(1);
            assert_eq!(w.next(), Some("ok"), "{stdout}");
            let pids: Vec<&str> = w.collect();
            assert_eq!(pids.len(), 4, "{stdout}");
            assert_eq!(pids[0], "1");
            assert_eq!(ns_pid(host), 1);
            // Exactly the checkpointed processes: PID 1 and its three descendants, no helper
            // (and no zombie of one) among them.
            let below = processes_below(host);
            assert_eq!(below.len(), 4, "round {round}: {below:?}");
        },
    );
}

#[test]
fn pidns_in_place_failure_is_reported_before_the_jump() {
    let Dumped {
        reports,
        imgs,
        before,
    } = dumped_tree();
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
    let host = host_in(&stdout);
    assert!(
        !Path::new(&format!("/proc/{host}")).exists(),
        "the init still exists"
    );
    // PID 1 got the error back and exited with it (rather than being killed).
    assert!(stdout.contains("init exited with 1"), "{stdout}\n{stderr}");
    // Nothing of the tree reports any more.
    assert_no_report_moves(reports.path());
}

#[test]
fn pidns_in_place_failure_after_the_jump_takes_the_namespace_down() {
    let Dumped { reports, imgs, .. } = dumped_tree();
    // PID 1's own restorer fails after it has unmapped PID 1's old memory: past the point of
    // no return, so the outside half reports and the namespace goes down with its init.
    let out = harness(imgs.path(), &[("FERRY_TEST_FAIL_RESTORER", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("error: ") && stdout.contains("restorer failed"),
        "{stdout}"
    );
    let host = host_in(&stdout);
    assert!(!Path::new(&format!("/proc/{host}")).exists(), "{stdout}");
    assert_no_report_moves(reports.path());
}

#[test]
fn pidns_in_place_runtime_death_takes_the_namespace_down() {
    let Dumped { reports, imgs, .. } = dumped_tree();
    // The outside half dies while every task waits in the restorer (PID 1 too, past the point
    // of no return): PTRACE_O_EXITKILL kills PID 1, and the kernel the namespace.
    let out = harness(imgs.path(), &[("FERRY_TEST_OUTSIDE_DIES", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let host = host_in(&stdout);
    // The dead harness's child comes to us (a subreaper): reap it.
    let start = std::time::Instant::now();
    let mut st = 0;
    // SAFETY: waitpid with WNOHANG on our (adopted) child into a local.
    while unsafe { libc::waitpid(host, &mut st, libc::WNOHANG) } != host {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the init {host} lives on without its runtime"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
        "killed by EXITKILL: {st:#x}"
    );
    assert_no_report_moves(reports.path());
}

/// The init's host pid, the first word of the harness's stdout.
fn host_in(stdout: &str) -> i32 {
    stdout
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no host pid in the harness's output: {stdout}"))
}

/// Nothing of the tree reports any more: the counters stand still.
fn assert_no_report_moves(dir: &Path) {
    let c = counters(&wait_reports_none(dir));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        c,
        counters(&wait_reports_none(dir)),
        "some task of the namespace still reports"
    );
}

fn wait_reports_none(dir: &Path) -> BTreeMap<String, Report> {
    ROLES
        .iter()
        .filter_map(|r| Some((r.to_string(), read_report(dir, r)?)))
        .collect()
}

/// Host pids of `init` and all its descendants, with their state letter.
fn processes_below(init: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let mut todo = vec![init];
    while let Some(p) = todo.pop() {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let st = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.trim_start().chars().next())
            .unwrap_or('?');
        out.push((p, st));
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .unwrap()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// An error before the plan exists reaches the outside with the engine's own message; the init
/// exits with it and nothing else ever ran in the namespace.
#[track_caller]
fn assert_early_error(dir: &Path, want: &str) {
    let out = harness(dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("error: ") && stdout.contains(want),
        "{stdout}"
    );
    assert!(stdout.contains("init exited with 1"), "{stdout}");
    let host = host_in(&stdout);
    assert!(!Path::new(&format!("/proc/{host}")).exists(), "{stdout}");
}

#[test]
fn pidns_in_place_errors_before_the_plan_are_reported() {
    // The reports directories stay: the images hold files the tree had open in them.
    let Dumped {
        reports: _reports,
        imgs,
        ..
    } = dumped_tree();

    // A broken image directory: the tree image is not a protobuf stream of pstree entries.
    let broken = tempfile::tempdir().unwrap();
    copy_images(imgs.path(), broken.path());
    std::fs::write(broken.path().join("pstree.img"), b"not an image").unwrap();
    assert_early_error(broken.path(), "pstree.img");

    // Images naming an exe that is not there (renamed in a copy of the workload).
    let exe_dir = tempfile::tempdir().unwrap();
    let exe = exe_dir.path().join("pidns_tree");
    std::fs::copy(workload(), &exe).unwrap();
    let Dumped {
        reports: _reports2,
        imgs: imgs2,
        ..
    } = dumped_tree_of(&exe);
    std::fs::remove_file(&exe).unwrap();
    assert_early_error(imgs2.path(), "pidns_tree");
}

fn copy_images(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

//! More fd kinds across checkpoints, zdtm style (the #6 cases that used to be refused): unlinked
//! FIFOs with unread bytes, pidfds of dead processes (reaped and zombie), pty pairs with bytes
//! queued both ways, and F_SETOWN owners and pidfds inside a child pid namespace. Each C
//! workload prepares, says "ready", is dumped and restored twice by `ferry-criu`, then verifies
//! from the inside (SIGUSR1) and writes PASS or what failed; every image must decode with
//! Debian's crit.

mod crit;
mod restore_common;
mod support;
#[path = "workload/mod.rs"]
mod workload_build;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use restore_common::*;
use support::{
    assert_ok, crit_decodes, has_images, ready_value, restore_ok, verdict, wait_file, wait_gone,
    Cycles,
};

fn workload(name: &str) -> PathBuf {
    workload_build::build(&format!("{name}.c"), name, &["-O1", "-Wall"])
}

/// Starts a workload ([`support::start`]) and waits for its ready file.
fn start(bin: &Path, args: &[&str], ready: &Path) -> u32 {
    support::start(bin, args, Some(ready))
}

/// Starts workload NAME in MODE on a fresh work directory and waits until it is ready; returns
/// the directory, the workload's pid and its [`Killer`].
fn start_mode(name: &str, mode: &str) -> (tempfile::TempDir, u32, Killer) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path().to_str().unwrap();
    let pid = start(&workload(name), &[w, mode], &work.path().join("ready"));
    (work, pid, Killer(vec![pid]))
}

/// The value of `key=PID` in the ready file.
fn pid_in(ready: &Path, key: &str) -> Option<u32> {
    ready_value(ready, key)
}

fn dump(pid: u32, dir: &Path) -> std::process::Output {
    support::dump(pid, dir, &[])
}

/// Each fd's link target and fdinfo, less what changes by nature across a checkpoint (mount
/// ids, inode numbers).
fn fd_view(pid: u32) -> Vec<String> {
    support::fd_view(pid, &["mnt_id", "ino"])
}

/// Two dump/restore cycles of the tree rooted at `pids[0]`, each task's fd view the same after
/// each, `must_have` among the images; then the workload's verdict must be PASS.
fn two_cycles_then_verify(pids: &[u32], work: &Path, must_have: &[&str]) {
    let c = Cycles {
        extra: &[],
        what: "fds",
        view: &fd_view_or_empty,
        runs: &|pids| pids.iter().for_each(|&p| assert_runs_or_zombie(p)),
    };
    support::two_cycles_then_verify(pids, work, &c, &|r, d| has_images(r, d, must_have));
}

/// A zombie has no fds and does not run; anything else must run.
fn assert_runs_or_zombie(pid: u32) {
    if !status_field(pid, "State").starts_with('Z') {
        assert_runs(pid);
    }
}

fn fd_view_or_empty(pid: u32) -> Vec<String> {
    if status_field(pid, "State").starts_with('Z') {
        Vec::new()
    } else {
        fd_view(pid)
    }
}

#[test]
fn files_unlinked_fifos_and_dead_pidfds_two_cycles() {
    let _g = lock();
    setup();
    let bin = workload("files_ghostfifo_pidfd");
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready");
    let w = work.path().to_str().unwrap();
    let pid = start(&bin, &[w], &ready);
    let zombie = pid_in(&ready, "child").expect("child=PID");
    let live = pid_in(&ready, "live").expect("live=PID");
    let _k = Killer(vec![pid, zombie, live]);
    assert!(status_field(zombie, "State").starts_with('Z'));
    two_cycles_then_verify(
        &[pid, zombie, live],
        work.path(),
        &[
            "ghost-file-1.img",
            "ghost-file-2.img",
            "remap-fpath.img",
            "fifo-data.img",
        ],
    );
    // The FIFOs' names went again after each restore.
    assert!(!work.path().join("ufifo").exists() && !work.path().join("ufifo2").exists());
}

#[test]
fn files_pty_with_queued_bytes_raw_mode_two_cycles() {
    let _g = lock();
    setup();
    let (work, pid, _k) = start_mode("files_pty_queued", "raw");
    two_cycles_then_verify(&[pid], work.path(), &["tty-data.img", "tty-info.img"]);
}

/// Packet mode (the master's) and exclusive mode (the slave's) survive, with a canonical slave
/// echoing.
#[test]
fn files_pty_packet_and_exclusive_modes_two_cycles() {
    let _g = lock();
    setup();
    let (work, pid, _k) = start_mode("files_pty_queued", "modes");
    two_cycles_then_verify(&[pid], work.path(), &["tty-info.img"]);
}

/// The dump reads the queued bytes out of the pair and writes them back at once: a tree left
/// running keeps them, untranslated, in order.
#[test]
fn files_pty_queued_bytes_stay_with_a_tree_left_running() {
    let _g = lock();
    setup();
    let (work, pid, _k) = start_mode("files_pty_queued", "raw");
    let before = fd_view(pid);
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["dump", "-t", &pid.to_string(), "--leave-running", "-D"])
        .arg(d.path())
        .output()
        .expect("run ferry-criu dump");
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.path().join("tty-data.img").exists());
    assert_runs(pid);
    assert_eq!(fd_view(pid), before);
    assert_eq!(verdict(pid, work.path()), "PASS");
}

/// Lines queued for a canonical-mode slave are a line editor's state: the dump refuses them by
/// name, and the tree runs on with its bytes still queued.
#[test]
fn files_pty_with_queued_canonical_lines_fails_the_dump_and_keeps_them() {
    let _g = lock();
    setup();
    let (work, pid, _k) = start_mode("files_pty_queued", "canon");
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "dump of queued canonical input succeeded"
    );
    assert!(
        err.contains(&format!("task {pid}: fd 3: pty"))
            && err.contains("9 bytes")
            && err.contains("canonical mode"),
        "{err}"
    );
    assert_runs(pid);
    assert_eq!(verdict(pid, work.path()), "PASS");
}

// ---- a tree in its own pid namespace ----

/// Starts files_pidns_owners as PID 1 of a new pid namespace; returns (unshare, host pid of
/// the namespace init).
#[allow(clippy::zombie_processes)] // waited for by the test once the namespace is gone
fn start_ns(bin: &Path, work: &Path, extra: &[&str]) -> (std::process::Child, u32) {
    let child = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(bin)
        .arg(work)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    let u = child.id();
    let result = work.join("result");
    wait_file(&work.join("ready"), Duration::from_secs(10), || {
        assert!(
            !result.exists(),
            "{}",
            std::fs::read_to_string(&result).unwrap_or_default()
        )
    });
    let init = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("namespace init");
    (child, init)
}

fn last_nspid(host: u32) -> String {
    status_field(host, "NSpid")
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_string()
}

#[test]
fn files_fown_and_pidfds_in_a_child_pid_namespace_two_cycles() {
    pidns_two_cycles(true, &[]);
}

/// Restored twice into a new pid namespace by ferry on the host, where each task forks the
/// stand-ins of its dead pidfds itself: the SIGCHLD their deaths leave must not reach the task.
/// (Not checked across an in-place restore: that path sends PID 1 a SIGCHLD of its own.)
#[test]
fn files_dead_pidfd_stand_ins_leave_no_sigchld_in_a_new_pid_namespace() {
    pidns_two_cycles(false, &["chld"]);
}

/// Two dump/restore cycles of files_pidns_owners in its own pid namespace; the second restore
/// is in place (ferry-pidns-harness) when `in_place` is set.
fn pidns_two_cycles(in_place: bool, extra: &[&str]) {
    let _g = lock();
    setup();
    let bin = workload("files_pidns_owners");
    let work = tempfile::tempdir().unwrap();
    let (mut unshare, init) = start_ns(&bin, work.path(), extra);
    let mut k = Killer(vec![init]);
    assert_eq!(last_nspid(init), "1");
    let mut host = init;
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        let out = dump(host, d.path());
        assert_ok(&out, d.path(), &format!("round {round}: dump"));
        crit_decodes(d.path());
        // The images hold the namespace's pids: the owner is C (pid 2 there), the group 1.
        let files = ferry_images::ImageDir::open(d.path()).unwrap();
        let entries: Vec<ferry_images::pb::FileEntry> = files.read_entries("files.img").unwrap();
        let owners: Vec<(u32, u32)> = entries
            .iter()
            .filter_map(|e| {
                e.reg
                    .as_ref()
                    .map(|r| r.fown)
                    .or(e.pipe.as_ref().map(|p| p.fown))
            })
            .filter(|o| o.pid != 0)
            .map(|o| (o.pid_type, o.pid))
            .collect();
        assert!(
            owners.contains(&(1, 2)) && owners.contains(&(2, 1)),
            "{owners:?}"
        );
        let nspids: Vec<i32> = entries
            .iter()
            .filter_map(|e| e.pidfd.as_ref().map(|p| p.nspid))
            .collect();
        assert!(nspids.contains(&2) && nspids.contains(&-1), "{nspids:?}");
        wait_gone(&[host]);
        if round == 0 {
            let _ = unshare.wait();
        }
        // Both restore paths: ferry as the coordinator on the host making the namespace
        // (`criu restore`), then in place as the namespace's PID 1 (the runtime's path, played
        // by ferry-pidns-harness).
        host = if round == 0 || !in_place {
            restore_ok(d.path(), &format!("round {round}"));
            std::fs::read_to_string(d.path().join("pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        } else {
            let out = Command::new(env!("CARGO_BIN_EXE_ferry-pidns-harness"))
                .arg(d.path())
                .stdin(Stdio::null())
                .output()
                .expect("run ferry-pidns-harness");
            // "<host pid of PID 1> ok <ns pids...>"
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success() && stdout.split_whitespace().nth(1) == Some("ok"),
                "round {round}: in-place restore failed: {stdout}\n{}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                log_of(d.path())
            );
            stdout.split_whitespace().next().unwrap().parse().unwrap()
        };
        k.0 = vec![host];
        assert_eq!(last_nspid(host), "1");
        assert_runs(host);
    }
    assert_eq!(verdict(host, work.path()), "PASS");
}

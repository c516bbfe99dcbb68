//! fd kinds across checkpoints, zdtm style: a C workload per family prepares its fds, says
//! "ready", is dumped and restored twice in a row (dump → restore → dump → restore) by
//! `ferry-criu`, then is told (SIGUSR1) to verify everything from the inside and writes PASS or
//! what failed. Between the cycles the test also compares each task's fd table and fdinfo (what
//! stays the same across a checkpoint: targets, positions, flags, counts, masks, epoll targets)
//! and checks the images decode with Debian's crit. Plus the CRIU 4.2 `files` fixture restored
//! by ferry, and a kind ferry refuses (io_uring) failing the dump while the tree runs on.

mod crit;
mod restore_common;
mod support;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use restore_common::*;
use support::*;

/// Builds tests/workloads/NAME.c with `gcc -static -O1 -Wall`, once per source version.
fn workload(name: &str) -> PathBuf {
    workload::build(&format!("{name}.c"), name, &["-O1", "-Wall"])
}

/// The child pid a workload wrote into DIR/ready (`child=PID`).
fn child_of(ready: &Path) -> u32 {
    ready_value(ready, "child").expect("child=PID in the ready file")
}

/// Starts workload NAME on a fresh work directory and waits until it is ready; returns the
/// directory, the workload's pid, its child's (from the ready file) and their [`Killer`].
fn start_pair(name: &str) -> (tempfile::TempDir, u32, u32, Killer) {
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready");
    let pid = start(&workload(name), &[work.path()], Some(&ready));
    let child = child_of(&ready);
    (work, pid, child, Killer(vec![pid, child]))
}

/// What must survive a checkpoint of each fd: mount ids, inode numbers, eventfd ids and the
/// running timers' time left and ticks change by nature.
fn fd_view(pid: u32) -> Vec<String> {
    support::fd_view(pid, &["mnt_id", "ino", "eventfd-id", "it_value", "ticks"])
}

/// Two dump/restore cycles, comparing each task's fd view, `must_have` among the images; then
/// SIGUSR1 and the workload's own verdict from DIR/result.
fn two_cycles_then_verify(pids: &[u32], work: &Path, must_have: &[&str], extra: &[&str]) {
    let c = Cycles {
        extra,
        what: "fds",
        view: &fd_view,
        runs: &|pids| pids.iter().for_each(|&p| assert_runs(p)),
    };
    support::two_cycles_then_verify(pids, work, &c, &|r, d| has_images(r, d, must_have));
}

#[test]
fn files_anon_eventfd_epoll_signalfd_timerfd_memfd_inotify_fanotify_two_cycles() {
    let _g = lock();
    setup();
    let (work, pid, child, _k) = start_pair("files_anon");
    two_cycles_then_verify(&[pid, child], work.path(), &["files.img", "memfd.img"], &[]);
}

#[test]
fn files_reg_ghost_dir_opath_pipe_fifo_pidfd_fown_two_tasks_two_cycles() {
    let _g = lock();
    setup();
    let (work, pid, child, _k) = start_pair("files_reg");
    two_cycles_then_verify(
        &[pid, child],
        work.path(),
        &[
            "ghost-file-1.img",
            "remap-fpath.img",
            "pipes-data.img",
            "fifo-data.img",
        ],
        &[],
    );
    // The ghost's name went again after each restore.
    assert!(!work.path().join("gone").exists());
}

#[test]
fn files_locks_flock_posix_ofd_two_tasks_two_cycles() {
    let _g = lock();
    setup();
    let (work, pid, child, _k) = start_pair("files_locks");
    // Without --file-locks the dump refuses, naming the lock, and the tree runs on.
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path(), &[]);
    assert!(
        !out.status.success(),
        "dump of a lock holder without --file-locks succeeded"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--file-locks"));
    assert_runs(pid);
    two_cycles_then_verify(
        &[pid, child],
        work.path(),
        &["file-locks.img"],
        &["--file-locks"],
    );
}

#[test]
fn files_pty_pair_controlling_terminal_termios_two_cycles() {
    let _g = lock();
    setup();
    let bin = workload("files_pty");
    let work = tempfile::tempdir().unwrap();
    let pid = start(&bin, &[work.path()], Some(&work.path().join("ready")));
    let _k = Killer(vec![pid]);
    two_cycles_then_verify(&[pid], work.path(), &["tty-info.img"], &[]);
}

/// An unlinked file above the ghost limit is a clear dump error (pid, fd, size, limit) and the
/// tree runs on untouched.
#[test]
fn files_ghost_above_the_limit_fails_the_dump_and_the_tree_runs_on() {
    let _g = lock();
    setup();
    let (_work, pid, _child, _k) = start_pair("files_reg");
    let before = fd_view(pid);
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path(), &["--ghost-limit", "50"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump past the ghost limit succeeded");
    assert!(
        err.contains(&format!("task {pid}: fd 7: unlinked file"))
            && err.contains("100 bytes")
            && err.contains("ghost limit of 50 bytes"),
        "{err}"
    );
    assert_runs(pid);
    assert_eq!(fd_view(pid), before);
}

#[test]
fn files_unsupported_kind_fails_the_dump_and_the_tree_runs_on() {
    let _g = lock();
    setup();
    let bin = workload("files_unsup");
    let pid = start(&bin, NO_ARGS, None);
    let _k = Killer(vec![pid]);
    std::thread::sleep(Duration::from_millis(200));
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "dump of an io_uring holder succeeded"
    );
    assert!(
        err.contains(&format!("task {pid}")) && err.contains("fd 3") && err.contains("io_uring"),
        "error does not name pid, fd and kind: {err}"
    );
    assert_runs(pid);
}

/// The CRIU 4.2 `files` fixture (REG with pos and O_APPEND, EVENTFD, EVENTPOLL, a UNIX
/// socketpair with queued data, MEMFD, a ghost file) restored by ferry, checked from /proc.
#[test]
fn files_criu_fixture_restores() {
    let _g = fixture_lock();
    setup();
    let host = Path::new(FIXTURES).join("files/host-files");
    for f in ["data.txt", "append.log"] {
        let dst = Path::new("/tmp/ferry-fixture").join(f);
        let _ = std::fs::remove_file(&dst);
        std::fs::copy(host.join(f), &dst).unwrap();
        // The images recorded mode 0644 (the fixture's copies are read-only).
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    let pid = 9057;
    let d = fixture("files");
    let _k = Killer(vec![pid]);
    let out = restore(d.path(), &[]);
    assert!(
        out.status.success(),
        "restore of the files fixture failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_of(d.path())
    );
    assert_runs(pid);
    let link = |fd: u32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let info = |fd: u32| std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let field = |fd: u32, k: &str| {
        info(fd)
            .lines()
            .find_map(|l| {
                l.strip_prefix(k)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(link(3), "/tmp/ferry-fixture/data.txt");
    assert_eq!(field(3, "pos"), "123");
    assert_eq!(link(4), "/tmp/ferry-fixture/append.log");
    assert_eq!(
        (field(4, "pos"), field(4, "flags")),
        ("41".into(), "0102001".into())
    );
    assert_eq!(link(6), "anon_inode:[eventfd]");
    assert_eq!(
        u64::from_str_radix(&field(6, "eventfd-count"), 16).unwrap(),
        7
    );
    assert!(info(7).contains("tfd:        6 events:       19 data:         feed0006"));
    assert!(link(8).starts_with("socket:") && link(9).starts_with("socket:"));
    assert!(link(10).starts_with("/memfd:ferry-memfd"));
    let mem = std::fs::read(format!("/proc/{pid}/fd/10")).unwrap();
    assert!(mem.starts_with(b"ferry memfd content: 0123456789abcdef"));
    assert_eq!(link(11), "/tmp/ferry-fixture/unlinked.tmp (deleted)");
    assert_eq!(field(11, "pos"), "100");
    let ghost = std::fs::read(format!("/proc/{pid}/fd/11")).unwrap();
    assert_eq!(ghost.len(), 100);
    assert!(ghost.starts_with(b"ABCDEFGHIJKLMNOPQRSTUVWX\n"));
}

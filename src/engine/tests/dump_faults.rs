//! Fault tests for the never-harm rule: a dump that fails at any stage (bad image directory,
//! full disk, unsupported fd, victim killed mid-dump) leaves the tree running as before, with
//! the same memory map, fds and registers.

mod crit;
mod dump_util;
mod workload;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dump_util::*;
use ferry_images::pb;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tmpfs mounted for one test, unmounted (lazily) on drop.
struct Mount(tempfile::TempDir);

impl Mount {
    fn tmpfs(opts: &str) -> Mount {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "ferry-test"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs -o {opts}");
        Mount(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Registers of a stopped task, read through a good dump (they cannot change while stopped).
/// A dump of `w` that must fail and leave its maps and fds as they were; returns its stderr.
fn refused(w: &Workload) -> String {
    let before = (maps(w.pid), fds(w.pid));
    let d = shm_dir();
    let out = dump(w.pid, d.path(), &[]);
    assert!(!out.status.success(), "dump of {} succeeded", w.pid);
    let after = (maps(w.pid), fds(w.pid));
    assert_eq!(after, before, "a refused dump changed task {}", w.pid);
    stderr(&out)
}

fn regs_of_stopped(pid: i32) -> (pb::UserX86RegsEntry, pb::UserX86FpregsEntry, u64) {
    let d = shm_dir();
    let out = dump(pid, d.path(), &["--leave-running"]);
    assert_ok(&out, d.path());
    let c: pb::CoreEntry = one(d.path(), &format!("core-{pid}.img"));
    let ti = c.thread_info.unwrap();
    (ti.gpregs, ti.fpregs, c.tc.unwrap().blk_sigset)
}

fn stop(pid: i32) {
    // SAFETY: stopping our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    while !status(pid, "State").starts_with('T') {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cont(pid: i32) {
    // SAFETY: continuing our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

#[test]
fn dump_into_a_file_or_readonly_dir_fails_before_touching_the_task() {
    let w = Workload::spawn("heap", "4");
    w.wait_ticks(1);
    let before = maps(w.pid);
    let f = tempfile::NamedTempFile::new().unwrap();
    let out = dump(w.pid, f.path(), &["-o", "-"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
    let ro = Mount::tmpfs("ro,size=1m");
    let out = dump(w.pid, &ro.path().join("x"), &["-o", "-"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("image directory"), "{}", stderr(&out));
    assert_eq!(maps(w.pid), before);
    w.wait_ticks(2);
}

#[test]
fn dump_on_a_full_disk_rolls_back_unharmed() {
    let w = Workload::spawn("heap", "32");
    w.wait_ticks(1);
    let pid = w.pid;
    stop(pid);
    let before = (maps(pid), fds(pid), status(pid, "SigBlk"));
    let regs = regs_of_stopped(pid);
    let full = Mount::tmpfs("size=4m");
    let out = dump(pid, &full.path().join("img"), &[]);
    assert!(!out.status.success(), "a 32 MiB dump cannot fit in 4 MiB");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("task {pid}")) && err.contains("pages-"),
        "{err}"
    );
    assert!(err.contains("No space left"), "{err}");
    let log = std::fs::read_to_string(full.path().join("img/dump.log")).unwrap();
    assert!(log.contains("rollback: tree released unharmed"), "{log}");
    // The task was neither killed nor changed: same map, fds, mask, registers.
    assert_eq!((maps(pid), fds(pid), status(pid, "SigBlk")), before);
    assert_eq!(regs_of_stopped(pid), regs);
    assert!(
        status(pid, "State").starts_with('T'),
        "still stopped as it was"
    );
    cont(pid);
    w.wait_ticks(3);
}

#[test]
fn dump_refuses_a_socket_fd_naming_pid_and_fd() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let w = Workload::spawn_with("heap", "2", Stdio::from(std::os::fd::OwnedFd::from(a)));
    w.wait_ticks(1);
    let err = refused(&w);
    // Its peer is this test process, outside the tree.
    assert!(
        err.contains(&format!("task {}: fd 0: unix socket inode", w.pid))
            && err.contains("outside the dumped tree"),
        "{err}"
    );
    w.wait_ticks(2);
}

#[test]
fn dump_fails_cleanly_when_the_victim_is_killed_mid_dump() {
    let mut w = Workload::spawn("heap", "1536");
    w.wait_ticks(1);
    let pid = w.pid;
    let d = shm_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(d.path())
        .args(["-v4", "-o", "dump.log", "--leave-running"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the victim once page data is flowing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Allocated bytes (the file is sized up front): page data is really flowing.
        let sz = std::fs::metadata(d.path().join("pages-1.img"))
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        if sz > 16 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dump never started writing pages"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "dump finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: killing our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "a dump of a dead task cannot succeed"
    );
    let err = stderr(&out);
    assert!(err.contains(&format!("task {pid}")), "{err}");
    assert!(
        !d.path().join("ferry-manifest.json").exists(),
        "no manifest for a failed dump"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(w.wait_exit().signal(), Some(libc::SIGKILL));
}

#[test]
fn dump_of_a_missing_pid_is_a_clear_error() {
    // Find a pid that is free right now.
    let mut pid = 4_000_000;
    while Path::new(&format!("/proc/{pid}")).exists() {
        pid -= 1;
    }
    let d = shm_dir();
    let out = dump(pid, d.path(), &["-o", "-"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("task {pid} does not exist")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn work_dir_gets_the_log_and_stats() {
    let w = Workload::spawn("heap", "1");
    w.wait_ticks(1);
    let d = shm_dir();
    let work = shm_dir();
    let pid = w.pid.to_string();
    let out = criu(&[
        "dump",
        "-t",
        &pid,
        "-D",
        d.path().to_str().unwrap(),
        "-W",
        work.path().to_str().unwrap(),
        "-o",
        "my.log",
        "-vv",
        "-R",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(work.path().join("my.log")).unwrap();
    assert!(
        log.contains("stage freeze") && log.contains("Dumping finished successfully"),
        "{log}"
    );
    let stats: pb::StatsEntry = one(work.path(), "stats-dump");
    assert!(stats.dump.unwrap().pages_written > 256);
    assert!(!d.path().join("stats-dump").exists() && !d.path().join("dump.log").exists());
    w.wait_ticks(2);
}

#[test]
fn dump_refuses_a_tree_holding_file_locks() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let w = Workload::spawn("flock", f.path().to_str().unwrap());
    w.wait_ticks(1);
    // Without --file-locks (with it, locks are dumped: see tests/files.rs).
    let err = refused(&w);
    assert!(
        err.contains(&format!(
            "task {}: holds a lock on fd {}",
            w.pid, w.info["fd"]
        )) && err.contains("FLOCK")
            && err.contains("only with --file-locks"),
        "{err}"
    );
    w.wait_ticks(2);
}

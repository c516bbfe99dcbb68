//! TCP and UDP sockets through ferry's dump and restore, zdtm style: tests/workloads/inet_sk.c
//! sets its sockets up, says ready, is dumped and restored twice in a row, then checks from
//! the inside (addresses and ports, every queued byte in order both ways, the connection and
//! the listener still working) and writes PASS or what failed. Each test runs the workload,
//! the dump and the restore inside a network namespace of its own (a `sleep` holds it), so
//! fixed ports never clash with the host or with parallel tests; both ends of every connection
//! are in the dumped tree, as in a container. Without `--tcp-established` the dump must refuse
//! an established connection by name and leave the tree working.

mod crit;
mod restore_common;
mod support;
mod workload;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use restore_common::kill_all;
use support::{
    assert_still_run, crit, dump_cmd, no_check, spawn_session, tree, verify_pass_and_exit,
    wait_ready_or_failed,
};

fn workload_bin() -> PathBuf {
    workload::build("inet_sk.c", "inet_sk", &["-O1", "-Wall"])
}

/// A network namespace of its own, held by a `sleep` (killed by pid on drop), loopback up.
struct NetNs {
    holder: u32,
    ns: File,
}

impl NetNs {
    fn new() -> NetNs {
        let mut c = Command::new("sleep");
        c.arg("600").stdin(Stdio::null());
        // SAFETY: unshare between fork and exec touches no shared state.
        unsafe {
            c.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("start the netns holder");
        let holder = child.id();
        std::mem::forget(child); // killed and reaped by pid
        let ns = File::open(format!("/proc/{holder}/ns/net")).unwrap();
        let n = NetNs { holder, ns };
        let out = n.cmd("ip").args(["link", "set", "lo", "up"]).output();
        let out = out.expect("run ip");
        assert!(out.status.success(), "ip link set lo up: {out:?}");
        n
    }

    /// A command that runs inside the namespace.
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(prog);
        let fd = self.ns.as_raw_fd();
        // SAFETY: setns between fork and exec on an fd inherited from us.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        kill_all(&[self.holder]);
    }
}

/// A running workload tree in its own network namespace; killed by pid on drop (the tree
/// first, then the namespace's holder).
struct Workload {
    pid: u32,
    pids: Vec<u32>,
    dir: tempfile::TempDir,
    ns: NetNs,
}

impl Workload {
    fn start(mode: &str) -> Workload {
        // SAFETY: prctl with integer arguments: restored trees become ours to reap.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let ns = NetNs::new();
        let dir = tempfile::Builder::new()
            .prefix("fin")
            .tempdir_in("/tmp")
            .unwrap();
        let mut c = ns.cmd(workload_bin());
        c.arg(mode).arg(dir.path());
        let pid = spawn_session(c, "inet_sk");
        let mut w = Workload {
            pid,
            pids: vec![pid],
            dir,
            ns,
        };
        wait_ready_or_failed(w.dir.path(), mode);
        w.pids = tree(pid);
        w
    }

    /// Sends the go signal and waits for the workload's own verdict, then for its exit.
    fn verify(&self) {
        let (pid, dir) = (self.pid, self.dir.path());
        verify_pass_and_exit(pid, &self.pids, dir, Duration::from_secs(30), String::new);
    }

    fn dump(&self, dir: &Path, extra: &[&str]) -> Output {
        let c = self.ns.cmd(env!("CARGO_BIN_EXE_ferry-criu"));
        dump_cmd(c, self.pid, dir, extra)
    }

    fn restore(&self, dir: &Path, extra: &[&str]) -> Output {
        self.ns
            .cmd(env!("CARGO_BIN_EXE_ferry-criu"))
            .args(["restore", "-D"])
            .arg(dir)
            .args(["-d", "-v4", "-o", "restore.log", "--pidfile"])
            .arg(dir.join("pid"))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run ferry-criu restore")
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        kill_all(&self.pids);
    }
}

/// Every tcp-stream image of a dump, decoded.
fn streams(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("tcp-stream-"))
        .collect();
    names.sort();
    names.iter().map(|n| crit(dir, n)).collect()
}

/// Two dump/restore rounds with `flags` on both; `check` looks at each image directory.
fn two_rounds(w: &Workload, flags: &[&str], check: &dyn Fn(&Path)) {
    support::two_rounds(
        &w.pids,
        |d| w.dump(d, flags),
        |d| w.restore(d, flags),
        check,
    );
}

/// files.img must hold `n` INETSK entries, crit-decodable; the tcp-stream images must hold
/// queued bytes both ways.
fn check_stream(d: &Path, n: usize) {
    let files = crit(d, "files.img");
    assert_eq!(files.matches("\"INETSK\"").count(), n, "{files}");
    let s = streams(d);
    assert_eq!(s.len(), 2, "one tcp-stream image per connection end");
    let queued = |key: &str| {
        s.iter()
            .filter_map(|j| {
                let at = j.find(key)? + key.len();
                let num: String = j[at..]
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                num.parse::<u64>().ok()
            })
            .sum::<u64>()
    };
    assert!(queued("\"inq_len\"") > 0, "no receive queue in {s:?}");
    assert!(queued("\"outq_len\"") > 0, "no send queue in {s:?}");
}

#[test]
fn listener_accepts_after_restore() {
    let w = Workload::start("listen");
    two_rounds(&w, &[], &|d| {
        let files = crit(d, "files.img");
        assert!(files.contains("\"INETSK\""), "{files}");
        assert!(files.contains("\"state\": 10"), "{files}");
        assert!(files.contains("\"reuseaddr\": true"), "{files}");
    });
    w.verify();
}

#[test]
fn tcp_pair_with_queued_data_ipv4() {
    let w = Workload::start("stream4");
    two_rounds(&w, &["--tcp-established"], &|d| check_stream(d, 3));
    w.verify();
}

#[test]
fn tcp_pair_with_queued_data_ipv6() {
    let w = Workload::start("stream6");
    two_rounds(&w, &["--tcp-established"], &|d| {
        check_stream(d, 3);
        assert!(crit(d, "files.img").contains("\"family\": 10"));
    });
    w.verify();
}

#[test]
fn tcp_pair_split_between_parent_and_child() {
    let w = Workload::start("tree");
    assert_eq!(w.pids.len(), 2, "parent and child");
    two_rounds(&w, &["--tcp-established"], &|d| check_stream(d, 3));
    w.verify();
}

#[test]
fn udp_bound_and_connected() {
    let w = Workload::start("udp");
    two_rounds(&w, &[], &|d| {
        let files = crit(d, "files.img");
        assert_eq!(files.matches("\"INETSK\"").count(), 2, "{files}");
        assert!(files.contains("6001"), "{files}");
    });
    w.verify();
}

#[test]
fn udp_ipv6() {
    let w = Workload::start("udp6");
    two_rounds(&w, &[], &no_check);
    w.verify();
}

#[test]
fn established_refused_without_the_flag() {
    let w = Workload::start("refuse");
    let d = tempfile::tempdir().unwrap();
    let out = w.dump(d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "dump without --tcp-established succeeded"
    );
    for want in [
        "established TCP connection tcp 127.0.0.1:",
        "use --tcp-established",
        &format!("task {}", w.pid),
        "fd ",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert_still_run(&w.pids);
    // A dump with the flag and a restore without it: refused by the restore, by name.
    let d2 = tempfile::tempdir().unwrap();
    let out = w.dump(d2.path(), &["--tcp-established", "--leave-running"]);
    assert!(
        out.status.success(),
        "dump --leave-running: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.restore(d2.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tcp-established"),
        "{err}"
    );
    // The tree ran on after both dumps, its connection intact.
    w.verify();
}

#[test]
fn failed_dump_takes_connections_out_of_repair_mode() {
    let w = Workload::start("rollback");
    for _ in 0..2 {
        let d = tempfile::tempdir().unwrap();
        let out = w.dump(d.path(), &["--tcp-established"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "dump with a raw socket succeeded");
        assert!(err.contains("unsupported: raw sockets"), "{err}");
        let log = std::fs::read_to_string(d.path().join("dump.log")).unwrap_or_default();
        assert!(log.contains("tree released unharmed"), "{log}");
        // The connection was in repair mode when the raw socket failed the dump.
        assert!(
            !d.path().read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("tcp-stream-")),
            "tcp-stream images are written only by a dump that succeeds"
        );
    }
    // Both ends left repair mode: the queued bytes and a reply still flow.
    w.verify();
}

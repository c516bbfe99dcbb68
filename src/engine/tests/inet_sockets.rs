//! TCP and UDP sockets through ferry's dump and restore, zdtm style: tests/workloads/inet_sk.c
//! sets its sockets up, says ready, is dumped and restored twice in a row, then checks from
//! the inside (addresses and ports, every queued byte in order both ways, the connection and
//! the listener still working) and writes PASS or what failed. Each test runs the workload,
//! the dump and the restore inside a network namespace of its own (a `sleep` holds it), so
//! fixed ports never clash with the host or with parallel tests; both ends of every connection
//! are in the dumped tree, as in a container. Without `--tcp-established` the dump must refuse
//! an established connection by name and leave the tree working.

mod restore_common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use restore_common::{exists, kill_all, log_of};

/// Builds the workload once per source version, under a file lock (tests run in parallel).
fn workload_bin() -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/inet_sk.c");
    let text = std::fs::read(&src).unwrap();
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = dir.join(format!("ferry-inet-sk-{hash:016x}"));
    let lock = File::create(dir.join("ferry-inet-sk.lock")).unwrap();
    // SAFETY: flock on a file we hold open; released when it is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !out.exists() {
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let st = Command::new("gcc")
            .args(["-O1", "-static", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("run gcc");
        assert!(st.success(), "gcc inet_sk.c failed: {st}");
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
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

fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten();
        for t in tasks.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(c.split_whitespace().filter_map(|s| s.parse::<u32>().ok()));
        }
        i += 1;
    }
    out
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
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
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid between fork and exec touches no shared state.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = c.spawn().expect("start inet_sk");
        let pid = child.id();
        std::mem::forget(child); // reaped by pid
        let mut w = Workload {
            pid,
            pids: vec![pid],
            dir,
            ns,
        };
        let start = Instant::now();
        while !w.dir.path().join("ready").exists() {
            if let Ok(r) = std::fs::read_to_string(w.dir.path().join("result")) {
                panic!("workload {mode} failed while preparing: {r}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "workload {mode} never got ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        w.pids = children(pid);
        w
    }

    /// Sends the go signal and waits for the workload's own verdict, then for its exit.
    fn verify(&self) {
        // SAFETY: a signal to the workload we started.
        unsafe { libc::kill(self.pid as i32, libc::SIGUSR1) };
        let res = self.dir.path().join("result");
        let start = Instant::now();
        loop {
            if let Ok(r) = std::fs::read_to_string(&res) {
                assert_eq!(r, "PASS", "workload verdict");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no verdict from the workload"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        while self.pids.iter().any(|&p| exists(p) && !zombie(p)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "workload did not exit"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn dump(&self, dir: &Path, extra: &[&str]) -> Output {
        self.ns
            .cmd(env!("CARGO_BIN_EXE_ferry-criu"))
            .args(["dump", "-t", &self.pid.to_string(), "-D"])
            .arg(dir)
            .args(["-v4", "-o", "dump.log"])
            .args(extra)
            .output()
            .expect("run ferry-criu dump")
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

fn wait_gone(pids: &[u32]) {
    let start = Instant::now();
    while pids.iter().any(|&p| exists(p)) {
        for &p in pids {
            let mut st = 0;
            // SAFETY: reaps our (subreaper) child by pid; harmless otherwise.
            unsafe { libc::waitpid(p as i32, &mut st, libc::WNOHANG | libc::__WALL) };
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dumped tree {pids:?} stays"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `crit decode` (Debian's) must read the image; returns its JSON.
fn crit(dir: &Path, img: &str) -> String {
    let out = Command::new("/usr/bin/crit")
        .args(["decode", "-i"])
        .arg(dir.join(img))
        .output()
        .expect("run crit");
    assert!(
        out.status.success(),
        "crit decode {img}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        let out = w.dump(d.path(), flags);
        assert!(
            out.status.success(),
            "round {round}: dump failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(d.path().join("dump.log")).unwrap_or_default()
        );
        check(d.path());
        wait_gone(&w.pids);
        let out = w.restore(d.path(), flags);
        assert!(
            out.status.success(),
            "round {round}: restore failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_of(d.path())
        );
        for &p in &w.pids {
            assert!(exists(p), "round {round}: pid {p} not restored");
        }
    }
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

fn no_check(_: &Path) {}

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
    for &p in &w.pids {
        assert!(
            exists(p) && !zombie(p),
            "pid {p} did not survive the refusal"
        );
    }
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

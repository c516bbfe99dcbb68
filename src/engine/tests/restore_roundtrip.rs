//! Round trips with ferry's own dump: a workload started here is dumped by `ferry-criu dump`,
//! restored by `ferry-criu restore`, dumped again from the restored task and restored again;
//! after each restore the task is checked from the outside (pids, maps, memory pattern, signal
//! state, timers) and must run on.

mod crit;
mod restore_common;
mod support;
mod workload;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use restore_common::*;
use support::{dump_ok, restore_ok, spawn_session, spawn_session_to, wait_gone};

/// Starts a fixture workload ([`spawn_session`]) and lets it set itself up; returns its pid.
fn start(bin: &str) -> u32 {
    let pid = spawn_session(Command::new(bin), bin);
    std::thread::sleep(Duration::from_millis(300));
    pid
}

fn dump(pid: u32, dir: &Path) {
    dump_ok(pid, dir, &[], "roundtrip");
}

/// The `loop` fixture started, dumped and gone: its pid, [`Killer`] and images.
fn dumped_loop() -> (u32, Killer, tempfile::TempDir) {
    let pid = start("/tmp/ferry-fixture/bin/loop");
    let k = Killer(vec![pid]);
    let d = tempfile::tempdir().unwrap();
    dump(pid, d.path());
    wait_gone(&[pid]);
    (pid, k, d)
}

fn cycle(pids: &[u32], check: &dyn Fn()) {
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        let before: Vec<Vec<String>> = pids.iter().map(|&p| maps(p)).collect();
        dump(pids[0], d.path());
        wait_gone(pids);
        restore_ok(d.path(), &format!("round {round}"));
        for (i, &p) in pids.iter().enumerate() {
            assert_eq!(maps(p), before[i], "round {round}: maps of {p}");
            assert_runs(p);
        }
        check();
    }
}

#[test]
fn roundtrip_loop() {
    let _g = lock();
    setup();
    let bin = "/tmp/ferry-fixture/bin/loop";
    let pid = start(bin);
    let _k = Killer(vec![pid]);
    let (bufp, ctr) = (symbol(bin, "loop_buf"), symbol(bin, "loop_counter"));
    cycle(&[pid], &|| {
        let buf = read_u64(pid, bufp);
        let data = read_mem(pid, buf, 1 << 20);
        assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let a = read_u64(pid, ctr);
        let t = Instant::now();
        while read_u64(pid, ctr) <= a {
            assert!(t.elapsed() < Duration::from_secs(5), "counter stuck");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn roundtrip_sigs() {
    let _g = lock();
    setup();
    let bin = "/tmp/ferry-fixture/bin/sigs";
    let pid = start(bin);
    let _k = Killer(vec![pid]);
    let want: Vec<String> = ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"]
        .iter()
        .map(|k| status_field(pid, k))
        .collect();
    let timers = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap();
    let usr1 = symbol(bin, "sigs_usr1");
    cycle(&[pid], &|| {
        let got: Vec<String> = ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"]
            .iter()
            .map(|k| status_field(pid, k))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap(),
            timers
        );
        let get = || u32::from_le_bytes(read_mem(pid, usr1, 4).try_into().unwrap());
        let n = get();
        // SAFETY: a signal by pid to the task this test restored.
        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
        let t = Instant::now();
        while get() != n + 1 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "SIGUSR1 handler did not run"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn roundtrip_tree() {
    let _g = lock();
    setup();
    let root = start("/tmp/ferry-fixture/bin/tree");
    let mut pids = vec![root];
    pids.extend(children_of(root));
    assert_eq!(pids.len(), 3, "tree has a parent and two children");
    let _k = Killer(pids.iter().rev().copied().collect());
    let threads = |p: u32| status_field(p, "Threads");
    let want: Vec<String> = pids.iter().map(|&p| threads(p)).collect();
    let p2 = pids.clone();
    cycle(&pids, &move || {
        assert_eq!(children_of(p2[0]).len(), 2);
        let got: Vec<String> = p2.iter().map(|&p| threads(p)).collect();
        assert_eq!(got, want);
        for &p in &p2[1..] {
            assert_eq!(status_field(p, "PPid"), p2[0].to_string());
            assert_eq!(status_field(p, "NSsid"), p2[0].to_string());
        }
    });
}

#[test]
fn corrupted_pages_are_caught_by_the_manifest() {
    let _g = lock();
    setup();
    let (pid, _k, d) = dumped_loop();
    // One flipped byte in the page data: same size, so only the checksum can tell.
    let p = d.path().join("pages-1.img");
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(&p, &b).unwrap();
    let out = restore(d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("manifest") && err.contains("pages-1.img"),
        "{err}"
    );
    assert_gone(&[pid]);
}

#[test]
fn attached_restore_waits_for_the_root() {
    let _g = lock();
    setup();
    let (pid, _k, d) = dumped_loop();
    // Without -d ferry stays the root's parent and exits with its status.
    let pidfile = d.path().join("pid");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["restore", "-D"])
        .arg(d.path())
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // The pidfile is written once the restore is complete.
    let t = Instant::now();
    while !pidfile.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "restore did not complete"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    assert_runs(pid);
    assert_eq!(status_field(pid, "PPid"), child.id().to_string());
    // SAFETY: SIGKILL by pid to the task this test restored.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(137), "exit status of ferry = 128 + SIGKILL");
    assert!(!exists(pid));
}

/// (range, VmFlags) of every VMA from /proc/PID/smaps, merged like `maps`' RELRO pieces are not:
/// only the flags that describe restored state (nh, hg, dc, gd, wf, dd).
fn vm_flags(pid: u32) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = Vec::new();
    let mut range = String::new();
    for l in smaps.lines() {
        if let Some(f) = l.strip_prefix("VmFlags:") {
            let keep: Vec<&str> = f
                .split_whitespace()
                .filter(|x| ["nh", "hg", "dc", "gd", "wf", "dd"].contains(x))
                .collect();
            if !keep.is_empty() {
                out.push(format!("{range} {}", keep.join(" ")));
            }
        } else {
            let mut it = l.split_whitespace();
            if let (Some(r), Some(perm)) = (it.next(), it.next()) {
                if r.contains('-') && perm.len() == 4 {
                    range = r.to_string();
                }
            }
        }
    }
    out
}

fn layout_status(path: &Path) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    assert!(!s.starts_with("BAD"), "workload reports: {s}");
    let get = |k: &str| {
        s.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("gen="), get("ticks="), get("alrm="))
}

/// Memory layout, FPU/AVX and signal/timer state, checked by the workload itself (see
/// tests/workloads/layout.c) across two dump/restore cycles.
#[test]
fn roundtrip_layout_avx_timers() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let bin = workload::build("layout.c", "layout", &["-O1", "-mavx2"]);
    let status = work.path().join("status");
    let data = work.path().join("data.bin");
    let mut c = Command::new(&bin);
    c.arg(&status).arg(&data);
    let pid = spawn_session(c, "layout");
    let _k = Killer(vec![pid]);
    let wait_gen = |n: u64| {
        let t = Instant::now();
        loop {
            let s = layout_status(&status);
            if s.0 >= n {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "workload stuck at {s:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_gen(5);
    let flags = vm_flags(pid);
    assert!(flags.iter().any(|f| f.contains("nh")), "{flags:?}");
    assert!(flags.iter().any(|f| f.contains("dc")), "{flags:?}");
    let status2 = status.clone();
    cycle(&[pid], &move || {
        let (g, t, a) = layout_status(&status2);
        let t0 = Instant::now();
        loop {
            let (g2, t2, a2) = layout_status(&status2);
            // Running on, its own checks passing, both timers still firing.
            if g2 >= g + 5 && t2 > t && a2 > a {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "workload after restore: gen {g2} ticks {t2} alrm {a2} (from {g} {t} {a})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(vm_flags(pid), flags);
        let pnd = u64::from_str_radix(&status_field(pid, "SigPnd"), 16).unwrap();
        assert_ne!(pnd & (1 << (libc::SIGUSR2 - 1)), 0, "SIGUSR2 still pending");
    });
}

fn proc_state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rfind(')')
        .and_then(|i| s[i + 1..].trim_start().chars().next())
        .unwrap_or('?')
}

/// A parent with a zombie child and a stopped child (tests/workloads/zombie_stop.c): after each
/// restore the zombie is a zombie of the same parent and the stopped child is stopped again.
#[test]
fn roundtrip_zombie_and_stopped() {
    let _g = lock();
    setup();
    let bin = workload::build("zombie_stop.c", "zombie_stop", &["-O1"]);
    let root = start(bin.to_str().unwrap());
    let kids = children_of(root);
    assert_eq!(kids.len(), 2);
    let (zombie, stopped) = if proc_state(kids[0]) == 'Z' {
        (kids[0], kids[1])
    } else {
        (kids[1], kids[0])
    };
    let _k = Killer(vec![stopped, root, zombie]);
    assert_eq!(proc_state(zombie), 'Z');
    assert_eq!(proc_state(stopped), 'T');
    let ctr = symbol(bin.to_str().unwrap(), "zs_counter");
    // `cycle` compares maps, which a zombie has none of: check it by hand.
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        dump(root, d.path());
        // Orphaned by the dump's kill, the zombie comes to us (subreaper): reaped here.
        wait_gone(&[root, stopped, zombie]);
        let out = restore(d.path(), &[]);
        assert!(
            out.status.success(),
            "round {round}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_of(d.path())
        );
        let t = Instant::now();
        while proc_state(stopped) != 'T' {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "child not stopped again"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(proc_state(zombie), 'Z');
        assert_eq!(status_field(zombie, "PPid"), root.to_string());
        assert_eq!(status_field(stopped, "PPid"), root.to_string());
        let a = read_u64(root, ctr);
        let t = Instant::now();
        while read_u64(root, ctr) <= a {
            assert!(t.elapsed() < Duration::from_secs(5), "parent stuck");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn thread_pending(pid: u32) -> Vec<(u32, String, String)> {
    let mut v: Vec<(u32, String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let tid: u32 = t.file_name().to_str().unwrap().parse().unwrap();
            let s = std::fs::read_to_string(t.path().join("status")).unwrap();
            let f = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            (tid, f("SigPnd:"), f("SigBlk:"))
        })
        .collect();
    v.sort();
    v
}

/// Builds tests/workloads/thread_sig.c; returns the binary's path.
fn thread_sig() -> String {
    let bin = workload::build("thread_sig.c", "thread_sig", &["-O1", "-pthread"]);
    bin.to_str().unwrap().to_string()
}

/// `thread_core.pdeath_sig` of every thread of `pid` in the images at `dir`, leader first.
fn pdeath_sigs(dir: &Path, pid: u32) -> Vec<Option<u32>> {
    use ferry_images::{pb, ImageDir};
    let d = ImageDir::open(dir).unwrap();
    let tree: Vec<pb::PstreeEntry> = d.read_entries("pstree.img").unwrap();
    let e = tree.iter().find(|e| e.pid == pid).unwrap();
    e.threads
        .iter()
        .map(|tid| {
            let c: pb::CoreEntry = d.read_one(&format!("core-{tid}.img")).unwrap();
            c.thread_core.unwrap().pdeath_sig
        })
        .collect()
}

/// The parent-death signal is per thread: each thread's own value is dumped, restored by the
/// restorer on that thread only, and so dumped again unchanged from the restored task.
#[test]
fn roundtrip_per_thread_pdeath_signal() {
    let _g = lock();
    setup();
    let pid = start(&thread_sig());
    let _k = Killer(vec![pid]);
    let want = vec![Some(libc::SIGWINCH as u32), Some(libc::SIGURG as u32)];
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        dump(pid, d.path());
        assert_eq!(pdeath_sigs(d.path(), pid), want, "round {round}");
        wait_gone(&[pid]);
        restore_ok(d.path(), &format!("round {round}"));
        assert_runs(pid);
    }
}

/// Per-thread pending signals and masks, the secondary thread's queued by the restorer itself
/// (tests/workloads/thread_sig.c).
#[test]
fn roundtrip_thread_pending_signals() {
    let _g = lock();
    setup();
    let pid = start(&thread_sig());
    let _k = Killer(vec![pid]);
    let want = thread_pending(pid);
    assert_eq!(want.len(), 2);
    assert_eq!(want[1].1, "0000000000000a00", "{want:?}");
    cycle(&[pid], &|| assert_eq!(thread_pending(pid), want));
}

/// A shell job: the workload shares the test's session and writes to a terminal; dumped and
/// restored with `--shell-job`, its tty fds come back on the terminal ferry is given.
#[test]
fn roundtrip_shell_job_on_a_pty() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _g = lock();
    setup();
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two fds into the locals; no name, termios or winsize.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both fds are fresh and ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    for fd in [m, s] {
        // SAFETY: F_SETFD on fds we own: the workload must inherit only its stdio.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let tty = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
    let child = Command::new("/tmp/ferry-fixture/bin/loop")
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::mem::forget(child);
    let _k = Killer(vec![pid]);
    std::thread::sleep(Duration::from_millis(200));
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["dump", "--shell-job", "-t", &pid.to_string(), "-D"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_gone(&[pid]);
    // Without --shell-job: a clear refusal, nothing left.
    let out = restore(d.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shell-job"), "{err}");
    assert_gone(&[pid]);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["restore", "--shell-job", "-d", "-D"])
        .arg(d.path())
        .stdin(slave.try_clone().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_runs(pid);
    for fd in [1, 2] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            tty,
            "fd {fd}"
        );
    }
    // SAFETY: getsid of this process.
    let sid = unsafe { libc::getsid(0) };
    assert_eq!(status_field(pid, "NSsid"), sid.to_string());
    drop(master);
}

/// A heap big enough for a pages file reserved before the freeze (`mem::reserve`), dumped into
/// /dev/shm: the reserve becomes pages-1.img and the heap comes back byte for byte, twice, while
/// the workload's own check of it goes on passing.
#[test]
fn roundtrip_big_heap_through_a_reserved_pages_file() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let bin = workload::build(
        "dumpee.c",
        "ferry-dumpee",
        &["-O1", "-pthread", "-mavx2", "-Wall"],
    );
    let out_path = work.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut c = Command::new(&bin);
    c.args(["heap", "24"]);
    let pid = spawn_session_to(c, Stdio::from(out), "dumpee heap");
    let _k = Killer(vec![pid]);
    let text = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let ticks = || text().lines().filter(|l| l.starts_with("tick ")).count();
    let wait_ticks = |n: usize| {
        let t = Instant::now();
        while ticks() < n {
            assert!(!text().contains("CORRUPT"), "{}", text());
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no ticks: {}",
                text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_ticks(1);
    let ready = text().lines().next().unwrap().to_string();
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {ready}"))
            .to_string()
    };
    let buf = u64::from_str_radix(field("buf=").trim_start_matches("0x"), 16).unwrap();
    let len: usize = field("len=").parse().unwrap();
    for round in 0..2 {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        dump(pid, d.path());
        let log = std::fs::read_to_string(d.path().join("dump.log")).unwrap();
        assert!(
            log.contains("stage reserve:") && log.contains(" for 1 pages files"),
            "round {round}: {log}"
        );
        wait_gone(&[pid]);
        restore_ok(d.path(), &format!("round {round}"));
        let mem = read_mem(pid, buf, len);
        let bad = mem
            .iter()
            .enumerate()
            .position(|(i, &b)| b != (i % 251) as u8);
        assert_eq!(bad, None, "round {round}: heap byte differs after restore");
        assert_runs(pid);
        // dumpee checks its heap every 10 ticks.
        wait_ticks(ticks() + 12);
    }
}

//! What the engine's C/R test binaries share around a C workload: starting it as a session leader
//! (stdio on /dev/null, no inherited fds: a dump refuses fds that are not the workload's, like a
//! build lock held with flock), waiting for its ready and result files with a deadline while it
//! still lives, `ferry-criu dump`, waiting for a dumped tree to leave /proc (reaping what is ours
//! as subreaper), the tree below a pid, an fd-table view that survives a checkpoint, and Debian's
//! `crit decode` as the outside reader of every image. Each waiter panics naming what it waited
//! for; killing by pid on drop is `restore_common::Killer`.
//!
//! Include it with `mod restore_common;` and `mod crit;` (it uses both).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::restore_common::exists;

/// No arguments, for [`start`].
pub const NO_ARGS: &[&str] = &[];

/// Spawns `c` as a session leader with /dev/null stdio and only fds 0-2, forgets the child (it
/// is reaped by pid: `Killer`, [`wait_gone`]) and returns its pid. `what` names it in the error.
pub fn spawn_session(c: Command, what: &str) -> u32 {
    spawn_session_to(c, Stdio::null(), what)
}

/// [`spawn_session`] with `stdout` as the workload's fd 1. `c` (and with it the caller's copy of
/// `stdout`) is dropped before this returns: the workload holds the only one.
pub fn spawn_session_to(mut c: Command, stdout: Stdio, what: &str) -> u32 {
    c.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::null());
    // SAFETY: setsid and close_range in the child between fork and exec touch no shared state;
    // any pre_exec the caller added (a setns, say) runs before.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = c
        .spawn()
        .unwrap_or_else(|e| panic!("start workload {what}: {e}"));
    let pid = child.id();
    std::mem::forget(child);
    pid
}

/// Starts `bin ARGS` as a session ([`spawn_session`]); with `ready`, waits (10 s) for that file
/// while the workload lives.
pub fn start<A: AsRef<OsStr>>(bin: &Path, args: &[A], ready: Option<&Path>) -> u32 {
    let mut c = Command::new(bin);
    c.args(args);
    let pid = spawn_session(c, &bin.display().to_string());
    if let Some(r) = ready {
        wait_file(r, Duration::from_secs(10), || {
            assert!(
                exists(pid),
                "workload {} died while preparing",
                bin.display()
            )
        });
    }
    pid
}

/// Waits until `p` exists, at most `limit`; `alive` is asked on every turn and panics when
/// waiting makes no sense any more (the workload died, it wrote a failure).
pub fn wait_file(p: &Path, limit: Duration, alive: impl Fn()) {
    let t = Instant::now();
    while !p.exists() {
        alive();
        assert!(
            t.elapsed() < limit,
            "{} never appeared (waited {limit:?})",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGUSR1 to `pid`, then the workload's own verdict from WORK/result (10 s, while it lives).
pub fn verdict(pid: u32, work: &Path) -> String {
    // SAFETY: a signal by pid to the workload this test started or restored.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let res = work.join("result");
    wait_file(&res, Duration::from_secs(10), || {
        assert!(exists(pid), "workload {pid} died while verifying")
    });
    std::fs::read_to_string(res).unwrap().trim().to_string()
}

/// The value of `key=N` among the words of a ready file.
pub fn ready_value<T: std::str::FromStr>(ready: &Path, key: &str) -> Option<T> {
    std::fs::read_to_string(ready)
        .unwrap_or_else(|e| panic!("read {}: {e}", ready.display()))
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `ferry-criu dump -t PID -D DIR -v4 -o dump.log EXTRA`.
pub fn dump(pid: u32, dir: &Path, extra: &[&str]) -> Output {
    dump_cmd(
        Command::new(env!("CARGO_BIN_EXE_ferry-criu")),
        pid,
        dir,
        extra,
    )
}

/// [`dump`] run by `c` (a `ferry-criu` command prepared by the caller, in a namespace say).
pub fn dump_cmd(mut c: Command, pid: u32, dir: &Path, extra: &[&str]) -> Output {
    c.args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["-v4", "-o", "dump.log"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry-criu dump")
}

/// [`dump`] that must succeed; the panic names the round-free context `what`, stderr and log.
pub fn dump_ok(pid: u32, dir: &Path, extra: &[&str], what: &str) {
    let out = dump(pid, dir, extra);
    assert_ok(&out, dir, &format!("{what}: dump of {pid}"));
}

/// Panics unless `out` succeeded, with stderr and DIR/dump.log.
pub fn assert_ok(out: &Output, dir: &Path, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default()
    );
}

/// Waits (10 s) until every pid of a dumped tree is gone, reaping what is ours.
pub fn wait_gone(pids: &[u32]) {
    let start = Instant::now();
    while pids.iter().any(|&p| exists(p)) {
        for &p in pids {
            let mut st = 0;
            // SAFETY: reaps our child (or subreaper orphan) by pid; harmless otherwise.
            unsafe { libc::waitpid(p as i32, &mut st, libc::WNOHANG | libc::__WALL) };
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dumped tree {pids:?} did not go away"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `pid` and every task below it (breadth first, through each thread's children file).
pub fn tree(pid: u32) -> Vec<u32> {
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

/// A zombie, or gone.
pub fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Each fd's link target (pipe inode numbers dropped: they change, and the test runner may hold
/// a pipe of its own) and its fdinfo lines but those keyed by one of `skip` (what changes by
/// nature across a checkpoint). epoll lists its targets in the order of kernel addresses: they
/// are compared as a set; a lock line's number in /proc/locks is dropped.
pub fn fd_view(pid: u32, skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("fds of {pid}: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    for fd in fds {
        let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let t = if t.starts_with("pipe:[") {
            "pipe".into()
        } else {
            t
        };
        out.push(format!("{fd} -> {t}"));
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let mut lines: Vec<&str> = info.lines().collect();
        lines.sort_by_key(|l| {
            (
                l.starts_with("tfd:"),
                if l.starts_with("tfd:") { *l } else { "" },
            )
        });
        for l in lines {
            let k = l.split(':').next().unwrap_or("");
            if skip.contains(&k) {
                continue;
            }
            let mut w: Vec<&str> = l.split_whitespace().collect();
            if k == "lock" && w.len() > 1 {
                w.remove(1);
            }
            out.push(format!("  {fd} {}", w.join(" ")));
        }
    }
    out
}

/// Debian's `crit decode` must read DIR/IMG; returns its JSON.
pub fn crit(dir: &Path, img: &str) -> String {
    super::crit::decode(dir, img)
}

/// Every image of a dump but the raw page files decodes with Debian's crit.
pub fn crit_decodes(dir: &Path) {
    super::crit::decode_all(dir, |n| n.ends_with(".img") && !n.starts_with("pages-"));
}

/// `ferry-criu restore` of DIR ([`restore`](super::restore_common::restore)) that must
/// succeed; the panic names `what` with stderr and the restore log.
pub fn restore_ok(dir: &Path, what: &str) {
    let out = super::restore_common::restore(dir, &[]);
    assert!(
        out.status.success(),
        "{what}: restore failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        super::restore_common::log_of(dir)
    );
}

/// Waits (10 s) for WORK/ready of workload `mode`; a WORK/result written first is its failure.
pub fn wait_ready_or_failed(work: &Path, mode: &str) {
    let result = work.join("result");
    wait_file(&work.join("ready"), Duration::from_secs(10), || {
        if let Ok(r) = std::fs::read_to_string(&result) {
            panic!("workload {mode} failed while preparing: {r}");
        }
    });
}

/// SIGUSR1 to `pid`; within `limit` WORK/result must read PASS (`detail` adds to the message),
/// then every task of `pids` must exit (10 s; a zombie counts as exited).
pub fn verify_pass_and_exit(
    pid: u32,
    pids: &[u32],
    work: &Path,
    limit: Duration,
    detail: impl Fn() -> String,
) {
    // SAFETY: a signal to the workload this test started.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let res = work.join("result");
    let start = Instant::now();
    loop {
        if let Ok(r) = std::fs::read_to_string(&res) {
            assert_eq!(r, "PASS", "workload verdict{}", detail());
            break;
        }
        assert!(start.elapsed() < limit, "no verdict from the workload");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    while pids.iter().any(|&p| exists(p) && !zombie(p)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "workload {pids:?} did not exit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Two dump/restore rounds of the tree `pids` (root first): `dump` and `restore` run
/// `ferry-criu` on an image directory, `check` looks at each; every pid must be back.
pub fn two_rounds(
    pids: &[u32],
    dump: impl Fn(&Path) -> Output,
    restore: impl Fn(&Path) -> Output,
    check: &dyn Fn(&Path),
) {
    for round in 0..2 {
        let d = tempfile::tempdir().unwrap();
        assert_ok(&dump(d.path()), d.path(), &format!("round {round}: dump"));
        check(d.path());
        wait_gone(pids);
        let out = restore(d.path());
        assert!(
            out.status.success(),
            "round {round}: restore failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            super::restore_common::log_of(d.path())
        );
        for &p in pids {
            assert!(exists(p), "round {round}: pid {p} not restored");
        }
    }
}

/// After a failed restore: no task of `pids` runs (a zombie left to reap counts as gone).
pub fn assert_none_left(pids: &[u32]) {
    for &p in pids {
        assert!(
            !exists(p) || zombie(p),
            "pid {p} left behind by a failed restore"
        );
    }
}

/// After a refused dump: every task of `pids` runs on (not a zombie).
pub fn assert_still_run(pids: &[u32]) {
    for &p in pids {
        assert!(
            exists(p) && !zombie(p),
            "pid {p} must keep running after a refused dump"
        );
    }
}

/// For [`two_rounds`] with nothing to look at in the images.
pub fn no_check(_: &Path) {}

/// What [`two_cycles_then_verify`] keeps the same across each cycle.
pub struct Cycles<'a> {
    /// `ferry-criu dump` arguments beyond the defaults.
    pub extra: &'a [&'a str],
    /// Names the view in messages ("fds", "maps").
    pub what: &'a str,
    /// A task's view, taken before each dump, that must be the same after the restore.
    pub view: &'a dyn Fn(u32) -> Vec<String>,
    /// After each restore, before the views: the restored tree runs.
    pub runs: &'a dyn Fn(&[u32]),
}

/// Two dump/restore cycles of the tree `pids` (root first): each dump must succeed and every
/// image decode with crit, `check(round, images)` looks at them, the tree must go and come back
/// with the same [`Cycles::view`] of each task; then SIGUSR1 and the workload's own verdict
/// from WORK/result must be PASS.
pub fn two_cycles_then_verify(pids: &[u32], work: &Path, c: &Cycles, check: &dyn Fn(usize, &Path)) {
    for round in 0..2 {
        let before: Vec<Vec<String>> = pids.iter().map(|&p| (c.view)(p)).collect();
        let d = tempfile::tempdir().unwrap();
        let out = dump(pids[0], d.path(), c.extra);
        assert_ok(&out, d.path(), &format!("round {round}: dump"));
        crit_decodes(d.path());
        check(round, d.path());
        wait_gone(pids);
        restore_ok(d.path(), &format!("round {round}"));
        (c.runs)(pids);
        for (i, &p) in pids.iter().enumerate() {
            assert_eq!(
                (c.view)(p),
                before[i],
                "round {round}: {} of task {p}",
                c.what
            );
        }
    }
    assert_eq!(verdict(pids[0], work), "PASS");
}

/// A `check` for [`two_cycles_then_verify`]: each of `names` is an image of the dump.
pub fn has_images(round: usize, d: &Path, names: &[&str]) {
    for img in names {
        assert!(d.join(img).exists(), "round {round}: no {img}");
    }
}

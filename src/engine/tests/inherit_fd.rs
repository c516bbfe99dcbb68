//! `criu restore --inherit-fd fd[N]:pipe:[INO]`: a process whose stdout is a pipe to the test
//! is dumped, and restored with its stdout reconnected to a new pipe ferry-criu was handed as
//! its own fd 1, twice in a row. Checked from the inside: the workload's count carries on from
//! where it stopped, on the new pipe. And CRIU's other classic: a stdout log file swapped for a
//! new one (`--inherit-fd fd[1]:PATH`).

mod crit;
mod restore_common;
mod support;
mod workload;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use restore_common::*;
use support::{dump_ok, spawn_session_to, wait_gone};

fn pipe() -> (BufReader<std::fs::File>, OwnedFd) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (BufReader::new(std::fs::File::from(r)), w)
}

/// `pipe:[INO]` of a pipe end.
fn key(end: &impl AsRawFd) -> String {
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", end.as_raw_fd()))
        .unwrap()
        .ino();
    format!("pipe:[{ino}]")
}

/// The next "count N" line (a hung read is ended by the [`watchdog`]).
fn next_count(r: &mut BufReader<std::fs::File>) -> u64 {
    let mut line = String::new();
    let n = r.read_line(&mut line).expect("read the workload's stdout");
    assert!(n > 0, "the workload's stdout pipe closed");
    line.trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count line: {line:?}"))
}

/// Starts a guard that kills `pid` if the test hangs reading (a read on a pipe has no timeout).
fn watchdog(pid: u32, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Dropping the sender (the round finished) disarms it; only a timeout kills.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // SAFETY: SIGKILL by pid to the workload this test started (its stdout closes).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    tx
}

/// Dumps `pid` (which must succeed) and waits until the dumped task is gone.
fn dump(pid: u32, dir: &Path) {
    dump_ok(pid, dir, &[], "inherit-fd");
    wait_gone(&[pid]);
}

/// `ferry-criu restore -d` with `stdout` as its fd 1 and the given --inherit-fd arguments.
fn restore_onto(dir: &Path, stdout: OwnedFd, inherit: &[String]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-criu"));
    c.args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped());
    for i in inherit {
        c.args(["--inherit-fd", i]);
    }
    c.output().expect("run ferry-criu restore")
}

#[test]
fn inherit_fd_reconnects_a_stdout_pipe_to_a_new_one_two_cycles() {
    let _g = lock();
    setup();
    let bin = workload::build("stdio_counter.c", "stdio_counter", &["-O1"]);
    let (mut r, w) = pipe();
    let pid = spawn_session_to(Command::new(&bin), Stdio::from(w), "stdio_counter");
    let _k = Killer(vec![pid]);
    let mut last = 0;
    for _ in 0..3 {
        last = next_count(&mut r);
    }
    for round in 0..2 {
        let dog = watchdog(pid, Duration::from_secs(20));
        let old_key = key(r.get_ref());
        let d = tempfile::tempdir().unwrap();
        dump(pid, d.path());
        let (mut nr, nw) = pipe();
        let mut inherit = vec![format!("fd[1]:{old_key}")];
        if round == 1 {
            // A key naming nothing in the images: a warning, not a failure.
            inherit.push("fd[0]:pipe:[1]".into());
        }
        let out = restore_onto(d.path(), nw, &inherit);
        assert!(
            out.status.success(),
            "round {round}: restore failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_of(d.path())
        );
        assert_runs(pid);
        let log = log_of(d.path());
        assert!(
            !log.contains(&format!("{old_key} has no end")),
            "the inherited pipe is reported unconnected:\n{log}"
        );
        if round == 1 {
            assert!(
                log.contains("inherit-fd fd[0]:pipe:[1] matches no file of the images"),
                "no warning for the unused key:\n{log}"
            );
        }
        // The restored task's fd 1 is the new pipe, and the count carries on there.
        let link = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
        assert_eq!(link.to_string_lossy(), key(nr.get_ref()), "round {round}");
        // What the workload wrote before the dump is still in the old pipe, for its reader:
        // drain it (every writer is gone) to learn where the count stopped.
        drain(&mut r, &mut last);
        let n = next_count(&mut nr);
        assert!(
            n > last,
            "round {round}: count {n} on the new pipe, {last} before the dump"
        );
        assert!(
            n <= last + 5,
            "round {round}: count {n} jumped from {last}: not the restored counter"
        );
        let again = next_count(&mut nr);
        assert_eq!(again, n + 1, "round {round}: the counter keeps counting");
        last = again;
        r = nr;
        drop(dog);
    }
}

/// Reads the old pipe to its end (every writer is gone after the dump), keeping the last count.
fn drain(r: &mut BufReader<std::fs::File>, last: &mut u64) {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            return;
        }
        if let Some(n) = line
            .trim()
            .strip_prefix("count ")
            .and_then(|n| n.parse().ok())
        {
            *last = n;
        }
    }
}

/// The count carried on in `path` (a log the workload appends to): the first count there.
fn first_count_in(path: &Path) -> u64 {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(n) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("count "))
            .and_then(|n| n.parse().ok())
        {
            return n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nothing written to {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn inherit_fd_swaps_a_stdout_log_file_for_a_new_one() {
    let _g = lock();
    setup();
    let bin = workload::build("stdio_counter.c", "stdio_counter", &["-O1"]);
    let work = tempfile::tempdir().unwrap();
    let old_log = work.path().join("old.log");
    let new_log = work.path().join("new.log");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&old_log)
        .unwrap();
    let pid = spawn_session_to(Command::new(&bin), Stdio::from(f), "stdio_counter");
    let _k = Killer(vec![pid]);
    first_count_in(&old_log);
    std::thread::sleep(Duration::from_millis(100));
    let d = tempfile::tempdir().unwrap();
    dump(pid, d.path());
    let stopped: u64 = std::fs::read_to_string(&old_log)
        .unwrap()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("count ")?.parse().ok())
        .expect("counts in the old log");
    let nf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&new_log)
        .unwrap();
    // CRIU's key for a file: its path relative to the root.
    let key = old_log
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let out = restore_onto(d.path(), nf.into(), &[format!("fd[1]:{key}")]);
    assert!(
        out.status.success(),
        "restore failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_of(d.path())
    );
    assert_runs(pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        new_log,
        "the restored stdout is the new log"
    );
    assert_eq!(
        first_count_in(&new_log),
        stopped + 1,
        "the count carries on"
    );
    let len = std::fs::metadata(&old_log).unwrap().len();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::metadata(&old_log).unwrap().len(),
        len,
        "nothing more goes to the old log"
    );
}

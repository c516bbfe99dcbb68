//! The container init's stdio across checkpoint/restore, runc's rules: descriptors.json records
//! fds 0-2; `/dev/null` is reopened inside the container (proven by every `cr_counter` test);
//! pipes are reconnected to the restoring caller's own fds of the same numbers (containerd's
//! and podman's case), checked from the inside over two cycles.

mod console;
mod cr_common;

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use cr_common::*;
use ferry_integration::cmd::{self, DEFAULT_TIMEOUT};
use ferry_integration::TestEnv;

fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (std::fs::File::from(r), w)
}

/// `run -d` with the container's stdout on a pipe the test reads; stdin and stderr /dev/null.
fn start_on_pipe(env: &TestEnv, b: &ferry_integration::Bundle) -> std::fs::File {
    let (r, w) = pipe();
    let mut c = env.command();
    c.args(["run", "-d", "--bundle", b.path.to_str().unwrap(), &b.id])
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::null());
    cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT).ok();
    track_state_pid(env, &b.id).expect("a pid");
    r
}

/// Lines of a pipe, read by a thread so a test waits with a deadline (a read has none).
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(r: std::fs::File) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, within 15 s.
    #[track_caller]
    fn next(&self) -> String {
        self.0
            .recv_timeout(Duration::from_secs(15))
            .expect("a line on the pipe within 15 s (it closed or stalled)")
    }

    /// The next `count N` line's N.
    #[track_caller]
    fn next_count(&self) -> u64 {
        loop {
            let l = self.next();
            if let Some(n) = l.trim().strip_prefix("count ").and_then(|n| n.parse().ok()) {
                return n;
            }
        }
    }

    /// The last count among the lines already there (the old pipe after its writer is gone).
    fn last_count(&self) -> Option<u64> {
        let mut last = None;
        while let Ok(l) = self.0.recv_timeout(Duration::from_millis(300)) {
            if let Some(n) = l.trim().strip_prefix("count ").and_then(|n| n.parse().ok()) {
                last = Some(n);
            }
        }
        last
    }
}

/// `restore -d` with the given stdio (runc's callers hand their pipes this way); stderr of
/// ferry itself is captured when `err` is None.
fn restore_with(
    env: &TestEnv,
    b: &ferry_integration::Bundle,
    img: &std::path::Path,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> ferry_integration::Out {
    let mut c = env.command();
    c.args([
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path.to_str().unwrap(),
        &b.id,
    ])
    .stdin(stdin)
    .stdout(stdout)
    .stderr(stderr);
    env.track_id(&b.id);
    let o = cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT);
    track_state_pid(env, &b.id);
    o
}

/// The restore's log must not say an inherited fd went unused or a pipe came back unconnected.
#[track_caller]
fn assert_all_reconnected(img: &std::path::Path) {
    let log = std::fs::read_to_string(img.join("restore.log")).expect("restore.log");
    assert!(
        !log.contains("matches no file") && !log.contains("comes back unconnected"),
        "{log}"
    );
}

/// After a restore: the counter's next line on `lines` (`what`: where they come from) carries
/// on from `last` (a tick or more was lost with the old pipe or console, not the count), the
/// line after is the next number, and its /count file carries on too. Returns that number.
#[track_caller]
fn assert_counts_on_at(lines: &Lines, b: &ferry_integration::Bundle, last: u64, what: &str) -> u64 {
    let n = lines.next_count();
    assert!(n > last && n <= last + 20, "{what}: count {n} after {last}");
    let again = lines.next_count();
    assert_eq!(again, n + 1, "{what}: the counter keeps counting");
    // Checked from the inside too: its /count file carries on.
    wait_count_above(b, again);
    again
}

/// What is in a pipe now, without waiting for its writers to close it.
fn drain(r: std::fs::File) -> String {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an fd this function owns.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = Vec::new();
    let _ = (&r).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn descriptors(img: &std::path::Path) -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(img.join("descriptors.json")).unwrap()).unwrap()
}

/// Two checkpoint/restore rounds of a container started by [`start_on_pipe`] (its count lines
/// on `out`): descriptors.json names /dev/null and the stdout pipe, the restore hands a new
/// pipe as ferry's fd 1 and reconnects it; `counts_on(new pipe, last count, round)` checks the
/// count carries on there and returns the last one it saw.
fn stdout_pipe_rounds(
    env: &TestEnv,
    b: &ferry_integration::Bundle,
    mut out: Lines,
    counts_on: impl Fn(&Lines, u64, u32) -> u64,
) {
    let mut last = out.next_count();
    for round in 0..2 {
        let img = env.dir.join(format!("img{round}"));
        checkpoint(env, &b.id, &img, &[]).ok();
        let descs = descriptors(&img);
        assert_eq!(descs[0], "/dev/null", "round {round}");
        assert!(
            descs[1].starts_with("pipe:["),
            "round {round}: fd 1 as the container was given it: {descs:?}"
        );
        // The old pipe ends with the count where the checkpoint stopped the container.
        last = out.last_count().unwrap_or(last).max(last);
        let (r, w) = pipe();
        restore_with(env, b, &img, Stdio::null(), Stdio::from(w), Stdio::piped()).ok();
        assert_eq!(env.status(&b.id), "running", "round {round}");
        assert_all_reconnected(&img);
        out = Lines::of(r);
        last = counts_on(&out, last, round);
    }
}

/// runc's rule, twice (a restore of a restore): the restoring caller's fd 1 replaces the
/// container's stdout pipe; the counter carries on there from where it stopped.
#[test]
fn cr_restore_reconnects_the_containers_stdout_pipe_to_the_callers() {
    let env = TestEnv::new("crpipe2");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let out = Lines::of(start_on_pipe(&env, &b));
    stdout_pipe_rounds(&env, &b, out, |out, last, round| {
        assert_counts_on_at(out, &b, last, &format!("round {round}: the new pipe"))
    });
    force_delete_and_check(&env, &b, &id);
}

/// runc keeps the init's stdio as it was when the container started (`external_descriptors`),
/// not as it is at checkpoint time: a process that moved its stdout pipe to another fd (a
/// shell's redirection, here for good) still gets the caller's new pipe there, twice.
#[test]
fn cr_restore_reconnects_a_stdout_pipe_the_init_moved_to_another_fd() {
    let env = TestEnv::new("crpipe4");
    let id = env.id("c");
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "exec 3>&1 1>/dev/null; i=0; while true; do i=$((i+1)); echo \"count $i\" >&3; \
             sleep 0.05; done",
        ],
    );
    let out = Lines::of(start_on_pipe(&env, &b));
    stdout_pipe_rounds(&env, &b, out, |out, last, round| {
        let n = out.next_count();
        assert!(
            n > last && n <= last + 40,
            "round {round}: count {n} after {last}"
        );
        assert_eq!(out.next_count(), n + 1, "round {round}: it keeps counting");
        n + 1
    });
    force_delete_and_check(&env, &b, &id);
}

/// All three stdio fds on the caller's pipes: a shell reads lines on stdin and answers on
/// stdout and stderr with a running number it keeps in memory; after the restore the new
/// pipes carry on the conversation.
#[test]
fn cr_restore_reconnects_stdin_stdout_and_stderr_pipes() {
    let env = TestEnv::new("crpipe3");
    let id = env.id("c");
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "i=0; while read l; do i=$((i+1)); echo \"out $i $l\"; echo \"err $i $l\" >&2; done",
        ],
    );
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let mut c = env.command();
    c.args(["run", "-d", "--bundle", b.path.to_str().unwrap(), &id])
        .stdin(Stdio::from(in_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT).ok();
    drop(c); // its copies of the pipe ends: the container must hold the only ones
    track_state_pid(&env, &id).expect("a pid");
    let mut stdin = std::fs::File::from(in_w);
    let (mut out, mut err) = (Lines::of(out_r), Lines::of(err_r));
    std::io::Write::write_all(&mut stdin, b"a\n").unwrap();
    assert_eq!(out.next(), "out 1 a");
    assert_eq!(err.next(), "err 1 a");
    let mut n = 1;
    for round in 0..2 {
        let img = env.dir.join(format!("img{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let descs = descriptors(&img);
        assert!(
            descs.iter().all(|d| d.starts_with("pipe:[")),
            "round {round}: {descs:?}"
        );
        let (in_r, in_w) = pipe();
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let o = restore_with(
            &env,
            &b,
            &img,
            Stdio::from(in_r),
            Stdio::from(out_w),
            Stdio::from(err_w),
        );
        if !o.status.success() {
            // ferry's own stderr is the container's new stderr pipe: its error is there.
            panic!(
                "round {round}: {}\nferry said: {}\nrestore.log:\n{}",
                o.cmdline,
                drain(err_r),
                std::fs::read_to_string(img.join("restore.log")).unwrap_or_default()
            );
        }
        assert_eq!(env.status(&id), "running", "round {round}");
        assert_all_reconnected(&img);
        stdin = std::fs::File::from(in_w);
        out = Lines::of(out_r);
        err = Lines::of(err_r);
        n += 1;
        std::io::Write::write_all(&mut stdin, format!("r{round}\n").as_bytes()).unwrap();
        assert_eq!(out.next(), format!("out {n} r{round}"), "round {round}");
        assert_eq!(err.next(), format!("err {n} r{round}"), "round {round}");
    }
    force_delete_and_check(&env, &b, &id);
}

/// descriptors.json naming a pipe the images do not hold (a mismatched or edited checkpoint):
/// the output would go to a pipe nobody reads, so the restore refuses, naming the pipe, before
/// anything is created.
#[test]
fn cr_restore_refuses_a_stdio_pipe_the_images_do_not_hold() {
    let env = TestEnv::new("crpipe4");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let _old = start_on_pipe(&env, &b);
    wait_count_above(&b, 2);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    std::fs::write(
        img.join("descriptors.json"),
        r#"["/dev/null","pipe:[4242]","/dev/null"]"#,
    )
    .unwrap();
    let (_r, w) = pipe();
    let o = restore_with(
        &env,
        &b,
        &img,
        Stdio::null(),
        Stdio::from(w),
        Stdio::piped(),
    )
    .failed();
    assert!(o.stderr.contains("pipe:[4242]"), "names the pipe:\n{o}");
    assert!(o.stderr.contains("stdio fd 1"), "names the fd:\n{o}");
    assert_nothing_left(&env, &b, &id);
}

/// The pty master sent to the console socket `listener`.
fn recv_master(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    std::fs::File::from(console::recv_fd(listener))
}

/// A terminal container (`process.terminal`, master sent to `--console-socket`) checkpointed
/// and restored twice with `--console-socket`: each restore sends a new master, and the
/// counter's lines carry on through it. Without `--console-socket` the restore is refused by
/// name and leaves nothing behind.
#[test]
fn cr_restore_of_a_terminal_container_onto_a_new_console() {
    let env = TestEnv::new("crtty");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    b.edit_config(|c| c["process"]["terminal"] = true.into());
    let sock = env.dir.join("console0.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    ferry_null(
        &env,
        &[
            "run",
            "-d",
            "--console-socket",
            sock.to_str().unwrap(),
            "--bundle",
            b.path.to_str().unwrap(),
            &id,
        ],
    )
    .ok();
    env.track_id(&id);
    track_state_pid(&env, &id).expect("a pid");
    let mut tty = Lines::of(recv_master(&listener));
    let mut last = tty.next_count();
    for round in 0..2 {
        let img = env.dir.join(format!("img{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let descs = descriptors(&img);
        assert!(
            descs.iter().all(|d| d.starts_with("/dev/pts/")),
            "round {round}: {descs:?}"
        );
        last = tty.last_count().unwrap_or(last).max(last);
        if round == 0 {
            let o = restore(&env, &b, &id, &img, &[]).failed();
            assert!(o.stderr.contains("--console-socket"), "{o}");
            assert!(o.stderr.contains("terminal"), "{o}");
            assert_nothing_left(&env, &b, &id);
        }
        let sock = env.dir.join(format!("console{}.sock", round + 1));
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        restore(
            &env,
            &b,
            &id,
            &img,
            &["--console-socket", sock.to_str().unwrap()],
        )
        .ok();
        tty = Lines::of(recv_master(&listener));
        assert_eq!(env.status(&id), "running", "round {round}");
        assert_all_reconnected(&img);
        // The restored init's stdio is the new console's slave.
        let pid = track_state_pid(&env, &id).expect("a pid");
        let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
        assert!(fd0.to_string_lossy().starts_with("/dev/pts/"), "{fd0:?}");
        // ... and its controlling terminal (tty_nr, field 7 of /proc/PID/stat).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let tty_nr: u64 = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(4)
            .unwrap()
            .parse()
            .unwrap();
        let rdev = std::os::unix::fs::MetadataExt::rdev(
            &std::fs::metadata(format!("/proc/{pid}/fd/0")).unwrap(),
        );
        assert_eq!(
            tty_nr, rdev,
            "round {round}: the init's controlling terminal"
        );
        last = assert_counts_on_at(&tty, &b, last, &format!("round {round}: the new console"));
    }
    force_delete_and_check(&env, &b, &id);
}

/// Attached `restore` (no `-d`): the same pipes, and ferry waits for the restored init and
/// exits with its status (SIGKILL: 137), as `run` does.
#[test]
fn cr_restore_attached_reconnects_the_pipe_and_exits_with_the_container() {
    let env = TestEnv::new("crpipe5");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let old = Lines::of(start_on_pipe(&env, &b));
    let first = old.next_count();
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let last = old.last_count().unwrap_or(first).max(first);
    let (r, w) = pipe();
    let mut c = env.command();
    c.args([
        "restore",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path.to_str().unwrap(),
        &id,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::from(w))
    .stderr(Stdio::null());
    env.track_id(&id);
    let mut ferry = c.spawn().expect("spawn ferry restore");
    drop(c);
    env.track_pid(ferry.id() as i32);
    let out = Lines::of(r);
    let n = out.next_count();
    assert!(n > last && n <= last + 20, "count {n} after {last}");
    track_state_pid(&env, &id).expect("a pid");
    assert_eq!(env.status(&id), "running");
    env.ferry(&["kill", &id, "KILL"]).ok();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = ferry.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "ferry restore did not return"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(137), "exit status of the killed init");
    assert_nothing_left(&env, &b, &id);
}

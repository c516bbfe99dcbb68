//! Terminal containers: `process.terminal = true` with `--console-socket`. The runtime sends the
//! pty master over the unix socket with SCM_RIGHTS (as runc does for podman/conmon and
//! containerd's shim); the test receives it and reads what the container wrote to its tty.

mod console;

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use console::recv_fd;
use ferry_integration::TestEnv;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Reads the pty master until `needle` shows up (or 15 s pass, or the pty closes).
fn read_until(master: OwnedFd, needle: &str) -> String {
    let mut f = std::fs::File::from(master);
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut chunk = [0u8; 1024];
    while !got.contains(needle) && Instant::now() < deadline {
        // Wait for output with a bound, so a silent container fails the test instead of hanging.
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll on the pty master: {e}"),
        }
        match f.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    got
}

#[test]
fn terminal_container_sends_its_pty_master_to_the_console_socket() {
    let env = TestEnv::new("tty");
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", "tty; echo tty-ok; sleep 300"]);
    b.edit_config(|c| c["process"]["terminal"] = true.into());
    let sock = env.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    env.ferry_to_files(
        &[
            "run",
            "-d",
            "--console-socket",
            sock.to_str().unwrap(),
            "--bundle",
            b.path.to_str().unwrap(),
            &id,
        ],
        &b.stdout_path(),
        &b.stderr_path(),
    )
    .ok();
    env.track_id(&id);
    let master = recv_fd(&listener);
    assert_eq!(env.status(&id), "running");
    let got = read_until(master, "tty-ok");
    assert!(
        got.contains("/dev/pts/"),
        "the init's stdin is a pty: {got:?}"
    );
    assert!(
        got.contains("tty-ok"),
        "output came through the master: {got:?}"
    );
}

#[test]
fn exec_with_a_terminal_sends_its_pty_master_to_the_console_socket() {
    // As in runc, a console socket goes with a detached exec (`-d -t`); an attached `-t` exec
    // uses the caller's own terminal instead.
    let env = TestEnv::new("exectty");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    env.start_running(&b);
    let sock = env.dir.join("exec-console.sock");
    let pid_file = env.dir.join("exec.pid");
    let listener = UnixListener::bind(&sock).unwrap();
    env.ferry(&[
        "exec",
        "-d",
        "-t",
        "--console-socket",
        sock.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; echo exec-tty-ok; exec sleep 300",
    ])
    .ok();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("--pid-file written")
        .trim()
        .parse()
        .expect("a pid");
    env.track_pid(pid);
    let master = recv_fd(&listener);
    let got = read_until(master, "exec-tty-ok");
    assert!(
        got.contains("/dev/pts/"),
        "the exec'd process has a pty: {got:?}"
    );
    assert!(
        got.contains("exec-tty-ok"),
        "output came through the master: {got:?}"
    );
}

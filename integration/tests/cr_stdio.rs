//! The container init's stdio across checkpoint/restore, runc's rules: descriptors.json records
//! fds 0-2; `/dev/null` is reopened inside the container (proven by every `cr_counter` test);
//! pipes are reconnected to the restoring caller's own fds (containerd's and podman's case).

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

#[test]
fn cr_checkpoint_records_the_callers_pipe_and_restore_refuses_it_clearly_today() {
    let env = TestEnv::new("crpipe");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let _out = start_on_pipe(&env, &b);
    wait_count_above(&b, 2);
    let img = env.dir.join("img");
    let o = checkpoint(&env, &id, &img, &[]);
    if !o.success() {
        // The engine refuses the pipe on dump: it must say so by name, and the container
        // must run on.
        assert!(o.stderr.contains("pipe"), "names the pipe:\n{o}");
        assert_eq!(env.status(&id), "running");
        return;
    }
    let descs: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(img.join("descriptors.json")).unwrap())
            .unwrap();
    assert_eq!(descs[0], "/dev/null");
    assert!(descs[1].starts_with("pipe:["), "{descs:?}");
    let o = restore(&env, &b, &id, &img, &[]).failed();
    assert!(o.stderr.contains("not supported yet"), "{o}");
    assert!(o.stderr.contains(&descs[1]), "names the pipe:\n{o}");
    assert!(
        o.stderr.contains("inherit-fd"),
        "names the missing piece:\n{o}"
    );
    assert_nothing_left(&env, &b, &id);
}

#[test]
#[ignore = "needs: the engine's inherit-fd (ferry_engine::restore::Options::inherit_fds, CRIU's --inherit-fd fd[N]:pipe:[INO])"]
fn cr_restore_reconnects_the_containers_stdout_pipe_to_the_callers() {
    let env = TestEnv::new("crpipe2");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let _old = start_on_pipe(&env, &b);
    wait_count_above(&b, 2);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    // runc's rule: the restoring caller's fd 1 replaces the container's stdout pipe.
    let (r, w) = pipe();
    let mut c = env.command();
    c.args([
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path.to_str().unwrap(),
        &id,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::from(w))
    .stderr(Stdio::piped());
    env.track_id(&id);
    cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT).ok();
    track_state_pid(&env, &id);
    // The counter's "count N" lines now arrive on the new pipe, carrying on.
    let mut lines = BufReader::new(r).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let line = lines.next().expect("the pipe stays open").unwrap();
        if let Some(n) = line
            .strip_prefix("count ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            assert!(
                n > stopped_at,
                "count {n} on the new pipe after {stopped_at}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no count on the new pipe"
        );
    }
}

//! Helpers shared by the checkpoint/restore tests (`cr_*.rs`).
//!
//! Containers here run with their stdio on /dev/null, as containerd's null IO and
//! `runc run -d </dev/null >/dev/null` give them: descriptors.json then names `/dev/null`
//! three times, which the restore reopens inside the container, exactly like the runc+CRIU
//! fixture `runc-busybox`. (A host file as stdout cannot be checkpointed by runc+CRIU either;
//! caller pipes are reconnected through the engine's inherit-fd: see `cr_stdio.rs`.)

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferry_integration::cmd::{self, wait_until, DEFAULT_TIMEOUT};
use ferry_integration::{Bundle, Out, TestEnv};

/// Patience for a container to show progress.
pub const T: Duration = Duration::from_secs(15);

/// Counter tick of the tests' containers, in ms.
pub const TICK_MS: &str = "50";

/// Runs the runtime with stdin, stdout and stderr on /dev/null: what `run -d` and `create`
/// hand to the container (its errors show only as the exit code).
#[track_caller]
pub fn ferry_null(env: &TestEnv, args: &[&str]) -> Out {
    let mut c = env.command();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT)
}

/// Runs the runtime with stdin and stdout on /dev/null and stderr captured (for verbs whose
/// container does not keep the runtime's stdio: restore reopens descriptors.json's).
#[track_caller]
pub fn ferry_err(env: &TestEnv, args: &[&str]) -> Out {
    let mut c = env.command();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT)
}

/// Tracks the init pid the runtime reports for `id` (killed by pidfd at teardown).
pub fn track_state_pid(env: &TestEnv, id: &str) -> Option<i32> {
    let o = env.ferry(&["state", id]);
    if !o.success() {
        return None;
    }
    let pid = o.json()["pid"].as_i64().filter(|p| *p > 0)? as i32;
    env.track_pid(pid);
    Some(pid)
}

/// A bundle running the counter on /count with the tests' tick, logging every tick to
/// /count.clock (see [`clock_log`]).
pub fn counter_bundle(env: &TestEnv, id: &str) -> Bundle {
    env.bundle(id, &["counter", "/count", TICK_MS, "clock"])
}

/// The counter's tick log (`counter FILE MS clock`): (tick, CLOCK_MONOTONIC in ns as the
/// counter read it), in the order written; a torn last line is left out; empty when the
/// counter keeps no log.
pub fn clock_log(b: &Bundle) -> Vec<(u64, i128)> {
    let text = b.read_rootfs_file("/count.clock").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (n, ns) = l.split_once(' ')?;
            Some((n.parse().ok()?, ns.parse().ok()?))
        })
        .collect()
}

/// `run -d` of bundle `b` (its id) with null stdio; tracks the init and returns its pid.
#[track_caller]
pub fn run_detached(env: &TestEnv, b: &Bundle) -> i32 {
    ferry_null(
        env,
        &["run", "-d", "--bundle", b.path.to_str().unwrap(), &b.id],
    )
    .ok();
    track_state_pid(env, &b.id).expect("state has a pid after run -d")
}

/// Asserts process `pid` is in a namespace of kind `ns` ("net", "ipc", ...) of its own.
#[track_caller]
pub fn assert_own_namespace(pid: i32, ns: &str) {
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
        std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
        "the container has its own {ns} namespace"
    );
}

/// nftables tables in the network namespace of `pid`.
#[track_caller]
pub fn nft_tables(pid: i32) -> String {
    let o = cmd::run(
        std::process::Command::new("nsenter").args([
            "-t",
            &pid.to_string(),
            "-n",
            "nft",
            "list",
            "tables",
        ]),
        T,
    );
    assert!(o.success(), "{o}");
    o.stdout
}

/// `run -d` with null stdio; waits until the counter has counted to at least 3.
#[track_caller]
pub fn start_counter(env: &TestEnv, b: &Bundle) -> i32 {
    let pid = run_detached(env, b);
    assert_eq!(env.status(&b.id), "running");
    assert!(
        wait_until(T, || b.counter("/count").unwrap_or(0) >= 3),
        "the counter never counted"
    );
    pid
}

/// `checkpoint --image-path IMG [extra] ID`.
#[track_caller]
pub fn checkpoint(env: &TestEnv, id: &str, img: &Path, extra: &[&str]) -> Out {
    let mut args = vec!["checkpoint", "--image-path", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(id);
    env.ferry(&args)
}

/// `restore -d --image-path IMG --bundle B [extra] ID` with null stdio.
#[track_caller]
pub fn restore(env: &TestEnv, b: &Bundle, id: &str, img: &Path, extra: &[&str]) -> Out {
    env.track_id(id);
    let mut args = vec![
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(id);
    let o = ferry_err(env, &args);
    track_state_pid(env, id);
    o
}

/// Waits until the counter passes `value`; returns what it read.
#[track_caller]
pub fn wait_count_above(b: &Bundle, value: u64) -> u64 {
    let mut last = 0;
    assert!(
        wait_until(T, || {
            last = b.counter("/count").unwrap_or(0);
            last > value
        }),
        "the counter did not pass {value} (last {last})"
    );
    last
}

/// Watches the counter right after a restore: every value read is at least `stopped_at` (a
/// restarted counter would write 1 first), and it carried on. With a tick log ([`clock_log`])
/// whose length [`settled_count`] noted at the checkpoint, the ticks logged since go
/// `stopped_at + 1`, `stopped_at + 2`, ... (`stopped_at` first when the counter was frozen
/// between updating the count and logging it): a restarted counter logs 1 again. Otherwise the
/// first new value read must be `stopped_at + 1`, give or take a tick missed by the polling,
/// which under load can be too tight: `ferry restore` may return a few hundred ms after the
/// tree resumed. Returns the first new value read.
#[track_caller]
pub fn assert_counts_on_from(b: &Bundle, stopped_at: u64) -> u64 {
    let start = std::time::Instant::now();
    let mark = log_marks().get(&b.rootfs()).copied();
    loop {
        if let Some(v) = b.counter("/count") {
            assert!(
                v >= stopped_at,
                "read {v} after a checkpoint at {stopped_at}: the counter started over"
            );
            if let (true, Some(mark)) = (v > stopped_at, mark) {
                assert_log_goes_on(b, mark, stopped_at);
                return v;
            }
            if v > stopped_at {
                assert!(
                    v <= stopped_at + 3,
                    "first new count {v} after a checkpoint at {stopped_at}: not carried on"
                );
                return v;
            }
        }
        assert!(
            start.elapsed() < T,
            "the counter did not pass {stopped_at} after the restore"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Tick-log lengths noted by [`settled_count`], per rootfs.
fn log_marks() -> std::sync::MutexGuard<'static, std::collections::HashMap<PathBuf, usize>> {
    static M: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, usize>>> =
        std::sync::OnceLock::new();
    M.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The ticks logged after entry `mark` go on from `stopped_at` (see [`assert_counts_on_from`]).
#[track_caller]
fn assert_log_goes_on(b: &Bundle, mark: usize, stopped_at: u64) {
    let mut log = Vec::new();
    assert!(
        wait_until(T, || {
            log = clock_log(b);
            log.iter().skip(mark).any(|t| t.0 > stopped_at)
        }),
        "no tick after {stopped_at} in the counter's log past its {mark} entries at the checkpoint"
    );
    let since: Vec<u64> = log[mark..].iter().map(|t| t.0).collect();
    let first = if since[0] == stopped_at {
        stopped_at
    } else {
        stopped_at + 1
    };
    let expect: Vec<u64> = (first..first + since.len() as u64).collect();
    assert_eq!(
        since, expect,
        "ticks logged after a checkpoint at {stopped_at}: not carried on"
    );
}

/// The counter's value once it has stopped changing (the container is gone or frozen).
#[track_caller]
pub fn settled_count(b: &Bundle) -> u64 {
    let first = b.counter("/count").expect("a count");
    std::thread::sleep(Duration::from_millis(300));
    let again = b.counter("/count").expect("a count");
    assert_eq!(
        first, again,
        "the counter still counts: the container still runs"
    );
    // Where the ticks logged after a restore will start (for assert_counts_on_from).
    if b.rootfs().join("count.clock").exists() {
        log_marks().insert(b.rootfs(), clock_log(b).len());
    }
    again
}

/// Processes whose root directory is `rootfs` (same device and inode, seen from the host).
pub fn processes_in(rootfs: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(rootfs).map(|m| (m.dev(), m.ino())) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/root"))
                .map(|m| (m.dev(), m.ino()) == want)
                .unwrap_or(false)
        })
        .collect()
}

/// Asserts the runtime no longer knows container `id` (`state` exits 1 and says so).
#[track_caller]
pub fn assert_no_state(env: &TestEnv, id: &str) {
    env.ferry(&["state", id])
        .code_is(1)
        .stderr_has("container does not exist");
}

/// Asserts nothing of container `id` (bundle `b`) is left: no state, no state directory, no
/// cgroup, no process in its rootfs, no mount below the bundle.
#[track_caller]
pub fn assert_nothing_left(env: &TestEnv, b: &Bundle, id: &str) {
    assert_no_state(env, id);
    assert!(!env.root.join(id).exists(), "state directory of {id} left");
    let cgs: Vec<PathBuf> = ferry_integration::cleanup::cgroup_dirs(&b.cgroups_path)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(cgs.is_empty(), "cgroups left: {cgs:?}");
    let procs = processes_in(&b.rootfs());
    assert!(procs.is_empty(), "processes left in the rootfs: {procs:?}");
    let mounts = ferry_integration::cleanup::mounts_under(&b.path);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

/// Ends container `id` with `signal` (KILL, TERM), waits for it to stop, deletes it and asserts
/// nothing of it is left.
#[track_caller]
pub fn kill_delete_and_check(env: &TestEnv, b: &Bundle, id: &str, signal: &str) {
    env.ferry(&["kill", id, signal]).ok();
    env.wait_status(id, "stopped", T);
    env.ferry(&["delete", id]).ok();
    assert_nothing_left(env, b, id);
}

/// `delete -f` of a running container `id` (null stdio); asserts nothing of it is left.
#[track_caller]
pub fn force_delete_and_check(env: &TestEnv, b: &Bundle, id: &str) {
    ferry_null(env, &["delete", "-f", id]).ok();
    assert_nothing_left(env, b, id);
}

/// Copies a directory's files (images are flat).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// lchown -R of `dir`, every owner shifted by `delta` (a rootfs handed to a mapped range).
pub fn shift_owners(dir: &Path, delta: i64) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(dir).unwrap();
    let s = |id: u32| Some((i64::from(id) + delta) as u32);
    std::os::unix::fs::lchown(dir, s(md.uid()), s(md.gid())).unwrap();
    if md.is_dir() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            shift_owners(&e.path(), delta);
        }
    }
}

/// Gives bundle `b` a user namespace mapping ids 0..size to `host`.. (uid and gid), its rootfs
/// shifted by `shift` to match, as podman `--uidmap` and Kubernetes `hostUsers: false` do.
pub fn userns_bundle(b: &Bundle, host: u32, size: u32, shift: i64) {
    b.edit_config(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        let m = serde_json::json!([{"containerID": 0, "hostID": host, "size": size}]);
        c["linux"]["uidMappings"] = m.clone();
        c["linux"]["gidMappings"] = m;
    });
    shift_owners(&b.rootfs(), shift);
}

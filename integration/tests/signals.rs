//! End-to-end `kill` (signal names, numbers, `--all`) and `pause`/`resume` (the freezer):
//! the counter workload reports each signal it receives and stops counting while frozen.

use std::fs;
use std::time::Duration;

use ferry_integration::cleanup::{cgroup_dirs, process_alive};
use ferry_integration::cmd::wait_until;
use ferry_integration::TestEnv;

const T: Duration = Duration::from_secs(15);

#[test]
fn kill_delivers_signals_by_name_and_number() {
    let env = TestEnv::new("kill");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    env.start_running(&b);
    assert!(
        wait_until(T, || b.counter("/count").is_some()),
        "counter started"
    );
    let signals = || b.read_rootfs_file("/count.signals").unwrap_or_default();

    env.ferry(&["kill", &id, "USR1"]).ok();
    assert!(
        wait_until(T, || signals().contains("10\n")),
        "SIGUSR1 by name: {:?}",
        signals()
    );
    env.ferry(&["kill", &id, "SIGUSR2"]).ok();
    assert!(
        wait_until(T, || signals().contains("12\n")),
        "SIGUSR2 with SIG prefix: {:?}",
        signals()
    );
    env.ferry(&["kill", &id, "1"]).ok();
    assert!(
        wait_until(T, || signals().lines().any(|l| l == "1")),
        "SIGHUP by number: {:?}",
        signals()
    );

    let o = env.ferry(&["kill", &id, "NOSUCHSIGNAL"]).failed();
    assert!(
        o.stderr.to_lowercase().contains("signal"),
        "names the bad signal:\n{o}"
    );
    assert_eq!(env.status(&id), "running", "a bad signal harms nothing");

    env.ferry(&["kill", &id, "15"]).ok();
    env.wait_status(&id, "stopped", T);
    assert!(
        b.stdout().contains("exiting on signal 15"),
        "stdout: {:?}",
        b.stdout()
    );
    // Signalling a stopped container is an error (runc: "container not running").
    env.ferry(&["kill", &id, "TERM"]).failed();
}

#[test]
fn kill_all_reaches_every_process() {
    let env = TestEnv::new("killall");
    let id = env.id("c");
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "sleep 1000 & sleep 1000 & exec counter /count 100",
        ],
    );
    env.start_running(&b);
    let mut pids = Vec::new();
    assert!(
        wait_until(T, || {
            pids = env
                .ferry(&["ps", "--format", "json", &id])
                .ok()
                .json()
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_i64())
                .map(|p| p as i32)
                .collect();
            pids.len() >= 3
        }),
        "three processes in the container: {pids:?}"
    );
    for p in &pids {
        env.track_pid(*p);
    }
    env.ferry(&["kill", "--all", &id, "KILL"]).ok();
    assert!(
        wait_until(T, || pids.iter().all(|p| !process_alive(*p))),
        "kill --all left some of {pids:?} alive"
    );
    env.wait_status(&id, "stopped", T);
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let env = TestEnv::new("pause");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "50"]);
    env.start_running(&b);
    assert!(
        wait_until(T, || b.counter("/count").unwrap_or(0) >= 2),
        "counting"
    );

    env.ferry(&["pause", &id]).ok();
    assert_eq!(env.status(&id), "paused");
    // The v1 freezer of this machine says FROZEN (cgroup2 hosts: cgroup.freeze = 1).
    let frozen = cgroup_dirs(&b.cgroups_path).into_iter().any(|d| {
        fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            || fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    });
    assert!(frozen, "no freezer of {} reports frozen", b.cgroups_path);
    let c1 = b.counter("/count").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let c2 = b.counter("/count").unwrap();
    assert_eq!(c1, c2, "counter moved while paused");
    // Pausing twice is an error in runc ("container not running").
    env.ferry(&["pause", &id]).failed();
    // A paused container cannot be deleted without --force either.
    env.ferry(&["delete", &id]).failed();

    env.ferry(&["resume", &id]).ok();
    assert_eq!(env.status(&id), "running");
    assert!(
        wait_until(T, || b.counter("/count").unwrap_or(0) > c2 + 2),
        "counter did not continue after resume (stuck at {c2})"
    );
    // Resuming a running container is an error in runc ("container not paused").
    env.ferry(&["resume", &id]).failed();
}

#[test]
fn delete_force_of_a_paused_container() {
    let env = TestEnv::new("pausedel");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "50"]);
    let pid = env.start_running(&b);
    env.ferry(&["pause", &id]).ok();
    env.ferry(&["delete", "--force", &id]).ok();
    assert!(
        wait_until(T, || !process_alive(pid)),
        "frozen init {pid} survived delete --force"
    );
    env.ferry(&["state", &id]).code_is(1);
    assert!(
        wait_until(T, || cgroup_dirs(&b.cgroups_path).is_empty()),
        "cgroups left behind"
    );
}

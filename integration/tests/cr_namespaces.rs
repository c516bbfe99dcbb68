//! `ferry checkpoint` / `ferry restore` of the busybox counter container with the namespaces
//! the default test config leaves out: a cgroup namespace (podman and runc add one by default
//! on cgroup v2 hosts) is checkpointed and restored, twice, with the view inside unchanged; a
//! time namespace's clocks go on from where they were at the checkpoint, twice. (User
//! namespaces: `cr_userns.rs`.)

mod cr_common;

use cr_common::*;
use ferry_integration::{Bundle, TestEnv};
use serde_json::{json, Value};

/// Adds `ns` to the bundle's namespaces.
fn add_namespace(b: &Bundle, ns: Value) {
    b.edit_config(|c| {
        c["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
    });
}

/// What `cat FILE` prints inside the container (through `exec`, which joins its namespaces).
#[track_caller]
fn exec_cat(env: &TestEnv, id: &str, file: &str) -> String {
    env.ferry(&["exec", id, "cat", file]).ok().stdout
}

/// Inode of a namespace of `pid`, as the host sees it.
fn ns_ino(pid: i32, ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .ino()
}

fn init_pid(env: &TestEnv, id: &str) -> i32 {
    env.state(id)["pid"].as_i64().unwrap() as i32
}

#[test]
fn cr_cgroup_namespace_restored_twice_with_the_same_view_inside() {
    let env = TestEnv::new("crcgns");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    add_namespace(&b, json!({"type": "cgroup"}));
    start_counter(&env, &b);
    let pid = init_pid(&env, &id);
    assert_ne!(
        ns_ino(pid, "cgroup"),
        ns_ino(std::process::id() as i32, "cgroup"),
        "the container has a cgroup namespace of its own"
    );
    // The init's own view of its cgroups: relative to the namespace's root, so "/" everywhere.
    let view = exec_cat(&env, &id, "/proc/1/cgroup");
    assert!(
        view.lines().all(|l| l.ends_with(":/")),
        "the init sits at the root of its cgroup namespace:\n{view}"
    );
    let host_view = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let stopped_at = settled_count(&b);
        restore(&env, &b, &id, &img, &[]).ok();
        assert_eq!(env.status(&id), "running", "round {round}: state");
        assert_counts_on_from(&b, stopped_at);
        let pid = init_pid(&env, &id);
        assert_ne!(
            ns_ino(pid, "cgroup"),
            ns_ino(std::process::id() as i32, "cgroup"),
            "round {round}: the restored init has a cgroup namespace of its own"
        );
        assert_eq!(
            exec_cat(&env, &id, "/proc/1/cgroup"),
            view,
            "round {round}: the view inside"
        );
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap(),
            host_view,
            "round {round}: the same cgroups seen from the host"
        );
    }
    env.ferry(&["kill", &id, "KILL"]).ok();
    env.wait_status(&id, "stopped", T);
    env.ferry(&["delete", &id]).ok();
    assert_nothing_left(&env, &b, &id);
}

/// Boot time in seconds as `/proc/uptime` shows it (time-namespace aware).
fn uptime(text: &str) -> f64 {
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Waits for tick `n` in the clock log; returns the log.
#[track_caller]
fn wait_clock_tick(b: &Bundle, n: u64) -> Vec<(u64, i128)> {
    let mut log = Vec::new();
    assert!(
        ferry_integration::cmd::wait_until(T, || {
            log = clock_log(b);
            log.iter().any(|&(t, _)| t == n)
        }),
        "no tick {n} in the counter's clock log"
    );
    log
}

/// CLOCK_MONOTONIC of this (host) process, in ns.
fn host_monotonic() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[test]
fn cr_time_namespace_clocks_go_on_from_the_checkpoint_twice() {
    let env = TestEnv::new("crtimens");
    let id = env.id("c");
    // The counter also logs CLOCK_MONOTONIC as it reads it, each tick (count.clock).
    let b = counter_bundle(&env, &id);
    let offset = 100 * 86400_i64;
    add_namespace(&b, json!({"type": "time"}));
    b.edit_config(|c| {
        c["linux"]["timeOffsets"] = json!({
            "monotonic": {"secs": offset, "nanosecs": 0},
            "boottime": {"secs": offset, "nanosecs": 0}
        });
    });
    start_counter(&env, &b);
    let host = || uptime(&std::fs::read_to_string("/proc/uptime").unwrap());
    // The offsets are real: the container's boot time is 100 days ahead of the host's.
    let inside = uptime(&exec_cat(&env, &id, "/proc/uptime"));
    assert!(
        inside - host() > (offset - 60) as f64,
        "boottime offset inside: host {}, container {inside}",
        host()
    );
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        let before = uptime(&exec_cat(&env, &id, "/proc/uptime"));
        let host_before = host();
        let ck_start = std::time::Instant::now();
        checkpoint(&env, &id, &img, &[]).ok();
        let ck_took = ck_start.elapsed();
        let stopped_at = settled_count(&b);
        let clocks: Vec<String> = std::fs::read_dir(&img)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("timens-") && n != "timens-0.img")
            .collect();
        assert_eq!(
            clocks.len(),
            1,
            "round {round}: the namespace's clocks image"
        );
        // CRIU's decoder reads it, and its boot time is the one seen inside at the checkpoint.
        let o = ferry_integration::cmd::run(
            std::process::Command::new("/usr/bin/crit")
                .args(["decode", "-i"])
                .arg(img.join(&clocks[0])),
            T,
        );
        assert!(o.success(), "crit decode {}:\n{o}", clocks[0]);
        let boot = o.json()["entries"][0]["boottime"]["tv_sec"]
            .as_f64()
            .unwrap_or_else(|| panic!("boottime in {}", o.stdout));
        assert!(
            boot >= before.floor() && boot < before + 10.0,
            "round {round}: boottime {boot} in the image, {before} inside before"
        );
        // Down for 3 s more: clocks inside must not count them (CRIU's timens restore).
        std::thread::sleep(std::time::Duration::from_secs(3));
        let rs_start = std::time::Instant::now();
        restore(&env, &b, &id, &img, &[]).ok();
        let log = wait_clock_tick(&b, stopped_at + 1);
        let rs_took = rs_start.elapsed();
        assert_eq!(env.status(&id), "running", "round {round}: state");
        // The counter carried on: its own log has every tick once, in order, the checkpoint's
        // included (a restarted counter would log 1 again). Read from the log rather than by
        // catching the first new /count value in time: under CPU contention `ferry restore`
        // returns up to a few hundred ms after the tree resumed, several ticks later.
        for (i, &(n, _)) in log.iter().enumerate() {
            assert_eq!(
                n,
                i as u64 + 1,
                "round {round}: tick {} of the counter's log is {n} (checkpoint at {stopped_at})",
                i + 1
            );
        }
        // CLOCK_MONOTONIC as the restored counter reads it (its own vDSO, in the restored
        // namespace): never backwards, tick after tick, the checkpoint's gap included.
        for w in log.windows(2) {
            assert!(
                w[1].1 >= w[0].1,
                "round {round}: the counter's CLOCK_MONOTONIC went back from tick {} ({} ns) \
                 to tick {} ({} ns)",
                w[0].0,
                w[0].1,
                w[1].0,
                w[1].1
            );
        }
        // Across the checkpoint it went on from where it stopped: forward by at most what
        // checkpoint and restore took (it misses the 3 s between), a tick, and a margin.
        let at = |n: u64| log.iter().find(|&&(t, _)| t == n).unwrap().1;
        let gap = at(stopped_at + 1) - at(stopped_at);
        let bound = (ck_took + rs_took).as_nanos() as i128 + 300_000_000;
        assert!(
            gap <= bound,
            "round {round}: CLOCK_MONOTONIC inside jumped {gap} ns across the checkpoint; \
             checkpoint took {ck_took:?}, restore {rs_took:?}"
        );
        // And it still reads the namespace's clock: about 100 days ahead of the host's (less
        // the downtimes not counted so far).
        let ahead = at(stopped_at + 1) - host_monotonic();
        let offset_ns = offset as i128 * 1_000_000_000;
        assert!(
            ahead > offset_ns - 60_000_000_000 && ahead < offset_ns,
            "round {round}: the counter's CLOCK_MONOTONIC is {ahead} ns ahead of the host's"
        );
        let after = uptime(&exec_cat(&env, &id, "/proc/uptime"));
        let host_after = host();
        assert!(
            host_after - host_before >= 3.0,
            "round {round}: host {host_before} -> {host_after}"
        );
        // The 3 s slept lie wholly between the clocks' dump and the restore's offsets: the
        // inside clock misses at least them (less /proc/uptime's 10 ms resolution), however
        // long checkpoint and restore took.
        let missed = (host_after - host_before) - (after - before);
        assert!(
            after >= before && missed >= 2.95,
            "round {round}: boot time inside {before} -> {after}, host {host_before} -> \
             {host_after}: {missed:.2} s not counted inside"
        );
        let pid = init_pid(&env, &id);
        assert_ne!(
            ns_ino(pid, "time"),
            ns_ino(std::process::id() as i32, "time"),
            "round {round}: the restored init has a time namespace of its own"
        );
    }
    // A config without the time namespace cannot give the clocks back: refused, nothing left.
    let img = env.dir.join("img-3");
    checkpoint(&env, &id, &img, &[]).ok();
    b.edit_config(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "time");
    });
    restore(&env, &b, &id, &img, &[])
        .code_is(1)
        .stderr_has("the images' tree has its own time namespace; the config makes none");
    assert_nothing_left(&env, &b, &id);
}

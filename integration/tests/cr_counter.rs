//! `ferry checkpoint` / `ferry restore` of the busybox counter container, end to end: the
//! container is checkpointed and restored ten times in a row and counts on from where it
//! stopped each time; `--leave-running` (running and paused); restore under a new id, after
//! the original is deleted, from a copied image directory; exactly the checkpointed processes
//! afterwards; errors inside the container before the engine's plan; a TCP connection between
//! two of its processes.

mod cr_common;

use cr_common::*;
use ferry_integration::cmd::wait_until;
use ferry_integration::TestEnv;

/// After a restore: running, the same count carried on (never restarted), and the runtime's
/// other verbs work on it.
#[track_caller]
fn assert_carries_on(env: &TestEnv, b: &ferry_integration::Bundle, id: &str, stopped_at: u64) {
    assert_eq!(env.status(id), "running", "state after restore");
    assert_counts_on_from(b, stopped_at);
}

#[test]
fn cr_counter_checkpointed_and_restored_ten_times_counts_on() {
    let env = TestEnv::new("crten");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let mut last_pid = 0;
    for round in 1..=10 {
        let img = env.dir.join(format!("img-{round}"));
        let before = b.counter("/count").unwrap();
        checkpoint(&env, &id, &img, &[]).ok();
        // The container is gone (runc's destroy) and stopped counting.
        assert_no_state(&env, &id);
        let stopped_at = settled_count(&b);
        assert!(stopped_at >= before, "round {round}: count went back");
        for f in [
            "inventory.img",
            "pstree.img",
            "core-1.img",
            "descriptors.json",
            "dump.log",
        ] {
            assert!(img.join(f).exists(), "round {round}: {f} written");
        }
        assert_eq!(
            std::fs::read_to_string(img.join("descriptors.json")).unwrap(),
            r#"["/dev/null","/dev/null","/dev/null"]"#
        );
        restore(&env, &b, &id, &img, &[]).ok();
        assert_carries_on(&env, &b, &id, stopped_at);
        let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
        assert!(pid > 0 && pid != last_pid, "round {round}: a new init pid");
        last_pid = pid;
    }
    // Afterwards it is a container like any other.
    let o = env.ferry(&["ps", &id]).ok();
    assert!(o.stdout.contains("counter"), "ps lists the counter:\n{o}");
    let o = env.ferry(&["exec", &id, "cat", "/count"]).ok();
    assert!(o.stdout.trim().parse::<u64>().is_ok(), "exec works:\n{o}");
    let o = env.ferry(&["exec", &id, "hostname"]).ok();
    assert_eq!(o.stdout.trim(), "ferry-it", "hostname restored");
    env.ferry(&["pause", &id]).ok();
    assert_eq!(env.status(&id), "paused");
    let frozen = settled_count(&b);
    env.ferry(&["resume", &id]).ok();
    wait_count_above(&b, frozen);
    kill_delete_and_check(&env, &b, &id, "KILL");
}

#[test]
fn cr_leave_running_keeps_counting_and_writes_work_files_apart() {
    let env = TestEnv::new("crleave");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let pid = start_counter(&env, &b);
    let img = env.dir.join("img");
    let work = env.dir.join("work");
    checkpoint(
        &env,
        &id,
        &img,
        &["--leave-running", "--work-path", work.to_str().unwrap()],
    )
    .ok();
    assert_eq!(env.status(&id), "running");
    assert_eq!(
        env.state(&id)["pid"].as_i64().unwrap() as i32,
        pid,
        "same init"
    );
    let c = b.counter("/count").unwrap();
    wait_count_above(&b, c);
    assert!(work.join("dump.log").exists(), "dump.log in --work-path");
    assert!(
        work.join("stats-dump").exists(),
        "stats-dump in --work-path"
    );
    assert!(
        !img.join("dump.log").exists(),
        "no dump.log among the images"
    );
    for f in [
        "inventory.img",
        "pstree.img",
        "descriptors.json",
        "ferry-manifest.json",
    ] {
        assert!(img.join(f).exists(), "{f} written");
    }
    // The images decode with CRIU's own decoder, and the namespace images carry the ids the
    // tree's ids-1.img gives the container's namespaces (what a restore looks them up by).
    let crit = |f: &str| {
        let o = ferry_integration::cmd::run(
            std::process::Command::new("/usr/bin/crit")
                .args(["decode", "-i"])
                .arg(img.join(f)),
            T,
        );
        assert!(o.success(), "crit decode {f}:\n{o}");
        o.json()
    };
    let ids = &crit("ids-1.img")["entries"][0];
    for (key, name) in [
        ("uts_ns_id", "utsns-{}.img"),
        ("ipc_ns_id", "ipcns-var-{}.img"),
        ("mnt_ns_id", "mountpoints-{}.img"),
        ("net_ns_id", "netdev-{}.img"),
    ] {
        let id = ids[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {ids}"));
        let f = name.replace("{}", &id.to_string());
        assert!(img.join(&f).exists(), "{f} for {key} {id}");
        crit(&f);
    }
    for f in ["pstree.img", "inventory.img", "core-1.img", "cgroup.img"] {
        crit(f);
    }
    // A paused container stays paused.
    env.ferry(&["pause", &id]).ok();
    let img2 = env.dir.join("img2");
    checkpoint(&env, &id, &img2, &["--leave-running"]).ok();
    assert_eq!(env.status(&id), "paused", "paused before, paused after");
    settled_count(&b);
    env.ferry(&["resume", &id]).ok();
    let c = b.counter("/count").unwrap();
    wait_count_above(&b, c);
}

#[test]
fn cr_restore_under_a_new_id_after_delete_from_a_copied_image_dir() {
    let env = TestEnv::new("crnewid");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    env.ferry(&["delete", &id])
        .code_is(1)
        .stderr_has("container does not exist");
    let copy = env.dir.join("copied-images");
    copy_dir(&img, &copy);
    std::fs::remove_dir_all(&img).unwrap();
    let id2 = env.id("moved");
    restore(&env, &b, &id2, &copy, &[]).ok();
    assert_carries_on(&env, &b, &id2, stopped_at);
    let st = env.state(&id2);
    assert_eq!(st["id"], id2.as_str());
    assert_eq!(
        st["bundle"].as_str().unwrap(),
        b.path.to_str().unwrap(),
        "state names the caller's bundle"
    );
    assert_no_state(&env, &id);
    kill_delete_and_check(&env, &b, &id2, "TERM");
}

#[test]
fn cr_attached_restore_waits_for_the_container_and_returns_its_code() {
    let env = TestEnv::new("crattach");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    let pid_file = env.dir.join("restored.pid");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    env.track_id(&id);
    let mut c = env.command();
    c.args([
        "restore",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    assert_counts_on_from(&b, stopped_at);
    assert!(
        wait_until(T, || pid_file.exists()),
        "--pid-file written once restored"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    env.track_pid(pid);
    assert_eq!(env.state(&id)["pid"].as_i64().unwrap() as i32, pid);
    // SIGTERM ends the counter cleanly (exit 0); the attached restore returns that code and
    // deletes the container, as runc does.
    env.ferry(&["kill", &id, "TERM"]).ok();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the container's exit code");
    assert_nothing_left(&env, &b, &id);
}

/// The restore's helpers live outside the container (ferry finishes the restore from there):
/// a non-reaping init like counter would keep any child of its as a zombie, which the next
/// checkpoint would dump and restore again.
#[test]
fn cr_restore_leaves_exactly_the_checkpointed_processes() {
    let env = TestEnv::new("crexact");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let stopped_at = settled_count(&b);
        restore(&env, &b, &id, &img, &[]).ok();
        assert_counts_on_from(&b, stopped_at);
        // Inside the container: PID 1 (the counter) and the `ps` itself, nothing else.
        let o = env.ferry(&["exec", &id, "ps", "-o", "pid,comm"]).ok();
        let pids: Vec<&str> = o
            .stdout
            .lines()
            .skip(1)
            .filter(|l| !l.contains("ps"))
            .collect();
        assert_eq!(pids.len(), 1, "round {round}: only the counter:\n{o}");
        assert!(pids[0].trim_start().starts_with("1 "), "{o}");
        // From the host: the init has no child at all (the exec above is not its child).
        let init = env.state(&id)["pid"].as_i64().unwrap();
        let kids = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
        assert_eq!(
            kids.trim(),
            "",
            "round {round}: children of the restored init"
        );
        // And the container's own /proc: no second procfs stacked on it for the restore.
        let mi = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
        let procs = mi
            .lines()
            .filter(|l| l.split(" - ").next().and_then(|p| p.split(' ').nth(4)) == Some("/proc"))
            .count();
        assert_eq!(procs, 1, "round {round}: one /proc mount:\n{mi}");
    }
}

/// Errors the engine meets inside the container before it has a plan reach the caller with
/// the engine's own message, and leave nothing behind.
#[test]
fn cr_restore_errors_inside_the_container_before_the_plan_leave_nothing() {
    let env = TestEnv::new("crearly");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);

    // A broken image directory whose damage only the engine's plan sees (the memory image).
    let broken = env.dir.join("broken");
    copy_dir(&img, &broken);
    std::fs::write(broken.join("mm-1.img"), b"not an image").unwrap();
    let o = restore(&env, &b, &id, &broken, &[]).failed();
    assert!(o.stderr.contains("mm-1.img"), "names the image:\n{o}");
    assert!(o.stderr.contains("read images"), "names the stage:\n{o}");
    assert_nothing_left(&env, &b, &id);

    // Images naming an exe the container's rootfs no longer has.
    let exe = b.rootfs().join("bin/counter");
    let moved = b.rootfs().join("bin/counter.moved");
    std::fs::rename(&exe, &moved).unwrap();
    let o = restore(&env, &b, &id, &img, &[]).failed();
    std::fs::rename(&moved, &exe).unwrap();
    assert!(o.stderr.contains("/bin/counter"), "names the exe:\n{o}");
    assert_nothing_left(&env, &b, &id);

    // Nothing was left in the way: the same images restore.
    restore(&env, &b, &id, &img, &[]).ok();
    assert_carries_on(&env, &b, &id, stopped_at);
}

#[test]
fn cr_restore_honours_no_pivot_and_the_cgroup_modes() {
    let env = TestEnv::new("crmodes");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &["--manage-cgroups-mode", "full"]).ok();
    assert!(img.join("cgroup.img").exists(), "cgroups dumped");
    let stopped_at = settled_count(&b);
    // strict wants to create every cgroup, but the runtime made the container's already: a
    // clear refusal, and nothing left.
    let o = restore(&env, &b, &id, &img, &["--manage-cgroups-mode", "strict"]).failed();
    assert!(o.stderr.contains("cgroup"), "{o}");
    assert_nothing_left(&env, &b, &id);
    restore(
        &env,
        &b,
        &id,
        &img,
        &["--no-pivot", "--manage-cgroups-mode", "full"],
    )
    .ok();
    assert_carries_on(&env, &b, &id, stopped_at);
    let pids = ferry_integration::cleanup::cgroup_dirs(&b.cgroups_path)
        .iter()
        .map(|d| ferry_integration::cleanup::cgroup_procs(d))
        .find(|p| !p.is_empty())
        .unwrap_or_default();
    let init = env.state(&id)["pid"].as_i64().unwrap() as i32;
    assert!(
        pids.contains(&init),
        "init {init} in the config's cgroup: {pids:?}"
    );

    let img2 = env.dir.join("img2");
    checkpoint(&env, &id, &img2, &["--manage-cgroups-mode", "ignore"]).ok();
    assert!(!img2.join("cgroup.img").exists(), "ignore dumps no cgroups");
    let stopped_at = settled_count(&b);
    restore(&env, &b, &id, &img2, &["--manage-cgroups-mode", "ignore"]).ok();
    assert_carries_on(&env, &b, &id, stopped_at);
}

#[test]
fn cr_hostname_set_at_runtime_comes_back() {
    let env = TestEnv::new("crhost");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    env.ferry(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        &id,
        "hostname",
        "changed-inside",
    ])
    .ok();
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    restore(&env, &b, &id, &img, &[]).ok();
    assert_carries_on(&env, &b, &id, stopped_at);
    // The config says ferry-it; the image says what the container made of it.
    let o = env.ferry(&["exec", &id, "hostname"]).ok();
    assert_eq!(o.stdout.trim(), "changed-inside");
}

/// An established TCP connection between two processes of the container (busybox nc over its
/// own loopback) survives `--tcp-established`: the in-place restore takes it out of repair mode
/// (from a helper in the namespace, reaped before the tree runs) and the data flows on, in order.
#[test]
fn cr_tcp_connection_inside_the_container_flows_on_after_restore() {
    let env = TestEnv::new("crtcp");
    let id = env.id("c");
    let script = "while [ ! -e /go ]; do sleep 0.05; done; \
                  sleep 100000 | nc -l -p 5000 > /got & sleep 0.3; \
                  i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done | nc 127.0.0.1 5000";
    let b = env.bundle(&id, &["sh", "-c", script]);
    run_detached(&env, &b);
    env.ferry(&[
        "exec",
        "--cap",
        "CAP_NET_ADMIN",
        &id,
        "ip",
        "link",
        "set",
        "lo",
        "up",
    ])
    .ok();
    std::fs::write(b.rootfs().join("go"), b"").unwrap();
    let got = b.rootfs().join("got");
    let lines = || {
        std::fs::read_to_string(&got)
            .unwrap_or_default()
            .lines()
            .count()
    };
    if !wait_until(T, || lines() >= 5) {
        let o = env.ferry(&["exec", &id, "ps", "-o", "pid,comm,args"]);
        let n = env.ferry(&["exec", &id, "netstat", "-tan"]);
        panic!("no data over the connection:\n{o}\n{n}");
    }
    let children = |init: i64| {
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .unwrap()
            .split_whitespace()
            .count()
    };
    let before = children(env.state(&id)["pid"].as_i64().unwrap());
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &["--tcp-established"]).ok();
    let at = lines();
    restore(&env, &b, &id, &img, &["--tcp-established"]).ok();
    assert!(
        wait_until(T, || lines() >= at + 10),
        "the connection did not carry on (stopped at {at} lines)"
    );
    let text = std::fs::read_to_string(&got).unwrap();
    let nums: Vec<u64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    for (k, w) in nums.windows(2).enumerate() {
        assert_eq!(w[1], w[0] + 1, "line {k}: the stream went on in order");
    }
    // The helper is gone, reaped before the tree ran: the init's children are the tree's.
    let after = children(env.state(&id)["pid"].as_i64().unwrap());
    assert_eq!(after, before, "the init's children (two pipelines)");
    kill_delete_and_check(&env, &b, &id, "KILL");
}

//! The container a restore builds (ferry's own build, `cr_build`), checked against what
//! `ferry run` (libcontainer) makes from the same config: the same mount table (rootfs, the
//! config's mounts, read-only and masked paths) after two restores in a row; the config's hooks
//! run once each, in order, with the restored init's pid; a failing hook or an impossible mount
//! is a clear error that leaves nothing behind; on a cgroup2 view of the host the init is born in
//! its cgroup and its cgroup namespace is rooted there.

mod cr_common;

use std::path::Path;

use cr_common::*;
use ferry_integration::TestEnv;

/// The mount table of `pid` as (mount point, fs type, per-mount options, super options):
/// what a container's build decides, without the ids and peer groups the kernel hands out.
fn mounts_of(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    text.lines()
        .map(|l| {
            let (head, tail) = l.split_once(" - ").unwrap();
            let h: Vec<&str> = head.split(' ').collect();
            let t: Vec<&str> = tail.split(' ').collect();
            format!("{} {} {} {}", h[4], t[0], h[5], t[2])
        })
        .collect()
}

#[test]
fn cr_restored_container_has_the_mount_table_run_made_twice_in_a_row() {
    let env = TestEnv::new("crmnt");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    b.edit_config(|c| {
        c["root"]["readonly"] = serde_json::json!(true);
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"]}));
    });
    // The counter writes /count: on a read-only root it counts in /tmp instead.
    b.edit_config(|c| c["process"]["args"] = serde_json::json!(["counter", "/tmp/count", "20"]));
    let pid = run_detached(&env, &b);
    let count = |b: &ferry_integration::Bundle| -> Option<u64> {
        let pid = env.state(&b.id)["pid"].as_i64()? as i32;
        let s = std::fs::read_to_string(format!("/proc/{pid}/root/tmp/count")).ok()?;
        s.trim().parse().ok()
    };
    assert!(ferry_integration::cmd::wait_until(T, || count(&b)
        .unwrap_or(0)
        >= 3));
    let want = mounts_of(pid);
    assert!(
        want.iter().any(|m| m.starts_with("/proc/keys ")),
        "masked paths in the table: {want:#?}"
    );
    assert!(
        want.iter().any(|m| m.starts_with("/proc/sys proc ro,")),
        "read-only paths in the table: {want:#?}"
    );
    assert!(
        want.iter()
            .any(|m| m.starts_with("/ ") && m.contains(" ro,")),
        "read-only root: {want:#?}"
    );
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        let before = count(&b).unwrap();
        checkpoint(&env, &id, &img, &[]).ok();
        restore(&env, &b, &id, &img, &[]).ok();
        let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            mounts_of(pid),
            want,
            "round {round}: the restored mount table"
        );
        assert!(
            ferry_integration::cmd::wait_until(T, || count(&b).unwrap_or(0) > before),
            "round {round}: the restored counter counts on from {before}"
        );
    }
    force_delete_and_check(&env, &b, &id);
}

/// A hook that appends its name to `log` and keeps the state it was given on stdin.
fn hook(name: &str, log: &Path) -> serde_json::Value {
    let l = log.display();
    serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("cat > {l}.{name}; echo {name} >> {l}")]
    })
}

#[test]
fn cr_restore_runs_the_config_hooks_once_each_in_order() {
    let env = TestEnv::new("crhooks");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    let log = env.dir.join("hooks.log");
    b.edit_config(|c| {
        c["hooks"] = serde_json::json!({
            "prestart": [hook("prestart", &log)],
            "createRuntime": [hook("createRuntime", &log)],
            "createContainer": [hook("createContainer", &log)],
            // After pivot_root: the container's own sh, writing into its rootfs.
            "startContainer": [{"path": "/bin/sh",
                                "args": ["sh", "-c", "echo startContainer >> /hooks.log"]}],
            "poststart": [hook("poststart", &log)]
        });
    });
    start_counter(&env, &b);
    // `run` ran them once; the restore must run them again, once each.
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(b.rootfs().join("hooks.log")).unwrap();
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    restore(&env, &b, &id, &img, &[]).ok();
    assert_counts_on_from(&b, stopped_at);
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        ["prestart", "createRuntime", "createContainer", "poststart"],
        "hooks in the runtime's and the container's namespaces"
    );
    assert_eq!(
        b.read_rootfs_file("/hooks.log").as_deref(),
        Some("startContainer\n"),
        "startContainer ran once inside the container"
    );
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    for name in ["prestart", "createRuntime", "poststart"] {
        let text = std::fs::read_to_string(format!("{}.{name}", log.display())).unwrap();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["id"], id, "{name}: {state}");
        assert_eq!(
            state["pid"].as_i64(),
            Some(pid),
            "{name}: the restored init's pid"
        );
    }
    force_delete_and_check(&env, &b, &id);
}

#[test]
fn cr_restore_build_failures_are_clear_and_leave_nothing() {
    let env = TestEnv::new("crbuildfail");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    let good = b.config();

    // A prestart hook that fails: ferry's side of the build.
    b.edit_config(|c| {
        c["hooks"] = serde_json::json!({"prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]});
    });
    let o = restore(&env, &b, &id, &img, &[]).failed();
    assert!(o.stderr.contains("prestart"), "{o}");
    assert_nothing_left(&env, &b, &id);

    // A bind mount whose source is gone: the init's side, inside the new namespaces.
    b.write_config(&good);
    let missing = env.dir.join("no-such-dir");
    b.edit_config(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": missing,
            "options": ["rbind"]}));
    });
    let o = restore(&env, &b, &id, &img, &[]).failed();
    assert!(
        o.stderr.contains("rootfs") || o.stderr.contains("no-such-dir"),
        "{o}"
    );
    assert_nothing_left(&env, &b, &id);

    // The images are untouched: the fixed config restores them.
    b.write_config(&good);
    restore(&env, &b, &id, &img, &[]).ok();
    assert_counts_on_from(&b, stopped_at);
    force_delete_and_check(&env, &b, &id);
}

/// `ferry ARGS` in a mount namespace of its own where /sys/fs/cgroup is the cgroup2 hierarchy,
/// as on a cgroup v2 host (this host is hybrid: its cgroup2 mount has no controllers, enough for
/// membership). stdio is null, like a detached caller's.
#[track_caller]
fn ferry_on_cgroup2(env: &TestEnv, args: &[&str]) -> ferry_integration::cmd::Out {
    let script = "mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"";
    let mut c = std::process::Command::new("unshare");
    c.args(["-m", "sh", "-c", script, "sh"])
        .arg(&env.bin)
        .arg("--root")
        .arg(&env.root)
        .args(args)
        .current_dir(&env.dir)
        .stdin(std::process::Stdio::null());
    ferry_integration::cmd::run(&mut c, T)
}

#[test]
fn cr_restore_on_cgroup2_clones_the_init_into_its_cgroup_twice() {
    let env = TestEnv::new("crcg2");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    b.edit_config(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(serde_json::json!({"type": "cgroup"}));
    });
    let bundle = b.path.to_str().unwrap();
    ferry_on_cgroup2(&env, &["run", "-d", "--bundle", bundle, &id]).ok();
    track_state_pid(&env, &id);
    assert!(ferry_integration::cmd::wait_until(T, || b
        .counter("/count")
        .unwrap_or(0)
        >= 3));
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        let img = img.to_str().unwrap();
        // The engine's cgroup dump reads the host's hierarchies: this view is the runtime's only.
        let ignore = ["--manage-cgroups-mode", "ignore"];
        let mut ck = vec!["checkpoint", "--image-path", img];
        ck.extend(ignore);
        ck.push(&id);
        ferry_on_cgroup2(&env, &ck).ok();
        let stopped_at = settled_count(&b);
        let mut rs = vec!["restore", "-d", "--image-path", img, "--bundle", bundle];
        rs.extend(ignore);
        rs.push(&id);
        ferry_on_cgroup2(&env, &rs).ok();
        let pid = track_state_pid(&env, &id).unwrap();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("0::/{}", b.cgroups_path.trim_start_matches('/'));
        assert!(
            cg.lines().any(|l| l == want),
            "round {round}: init {pid} in its cgroup2 cgroup {want}: {cg}"
        );
        // Born in its cgroup, it made its cgroup namespace there: seen from inside, at the root.
        let o = ferry_integration::cmd::run(
            std::process::Command::new("nsenter").args([
                "-t",
                &pid.to_string(),
                "-C",
                "cat",
                &format!("/proc/{pid}/cgroup"),
            ]),
            T,
        );
        assert!(
            o.stdout.lines().any(|l| l == "0::/"),
            "round {round}: init {pid} from inside its cgroup namespace: {o}"
        );
        assert_counts_on_from(&b, stopped_at);
    }
    ferry_on_cgroup2(&env, &["delete", "-f", &id]).ok();
    assert_nothing_left(&env, &b, &id);
    // The same cgroup2 hierarchy is mounted here at /sys/fs/cgroup/unified.
    let v2 = Path::new("/sys/fs/cgroup/unified").join(b.cgroups_path.trim_start_matches('/'));
    assert!(!v2.exists(), "{} left", v2.display());
}

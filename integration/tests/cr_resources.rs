//! Container resources across `ferry checkpoint`/`ferry restore`: a bind mount from the bundle's
//! config (external: restored from the config's source), content the container wrote into its
//! /dev/shm tmpfs (restored from the image's archive); a tree that never sleeps, seized while
//! its cgroup is frozen (the tmpfs archive, taken frozen, and the memory, taken at the seize,
//! must agree), running or paused; SysV shared memory, semaphores and a message queue in the
//! container's IPC namespace, checked from inside after two cycles.

mod cr_build;
mod cr_common;

use cr_build::*;
use cr_common::*;
use ferry_integration::cmd::wait_until;
use ferry_integration::TestEnv;

#[test]
fn cr_bind_mount_and_dev_shm_content_come_back() {
    let env = TestEnv::new("crres");
    let id = env.id("c");
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "echo written-before > /dev/shm/note && mkdir /dev/shm/dir && \
             echo nested > /dev/shm/dir/f && exec counter /count 50",
        ],
    );
    let data = env.dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("host.txt"), "from the host\n").unwrap();
    b.edit_config(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind",
            "source": data.to_str().unwrap(), "options": ["rbind", "rw"]
        }))
    });
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    // The bind mount's content belongs to the host: not archived.
    let listing: Vec<String> = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        listing.iter().any(|f| f.starts_with("tmpfs-dev-")),
        "tmpfs archives written: {listing:?}"
    );
    restore(&env, &b, &id, &img, &[]).ok();
    assert_carries_on_here(&env, &b, &id, stopped_at);
    let o = env.ferry(&["exec", &id, "cat", "/dev/shm/note"]).ok();
    assert_eq!(o.stdout, "written-before\n", "/dev/shm content restored");
    let o = env.ferry(&["exec", &id, "cat", "/dev/shm/dir/f"]).ok();
    assert_eq!(o.stdout, "nested\n");
    let o = env.ferry(&["exec", &id, "cat", "/data/host.txt"]).ok();
    assert_eq!(
        o.stdout, "from the host\n",
        "bind mount from the config's source"
    );
    // Writes through the bind reach the host directory.
    env.ferry(&["exec", &id, "sh", "-c", "echo back > /data/out.txt"])
        .ok();
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "back\n"
    );
}

#[track_caller]
fn assert_carries_on_here(env: &TestEnv, b: &ferry_integration::Bundle, id: &str, at: u64) {
    assert_eq!(env.status(id), "running");
    assert_counts_on_from(b, at);
}

/// Starts `tight_loop /dev/shm/n /report` (built into the bundle) and waits until it turns.
fn start_tight_loop(env: &TestEnv, id: &str) -> (ferry_integration::Bundle, i32) {
    let b = env.bundle(id, &["tight_loop", "/dev/shm/n", "/report"]);
    build_workload(&b, "tight_loop");
    let pid = run_detached(env, &b);
    wait_file(&in_rootfs(&b, "/report.iter"), T);
    (b, pid)
}

/// Waits until the loop has rewritten its turn count twice more (so it has compared memory
/// with its file many times since), then asserts it never saw them differ.
#[track_caller]
fn assert_loop_consistent(b: &ferry_integration::Bundle, when: &str) {
    let iter = in_rootfs(b, "/report.iter");
    let read = || std::fs::read_to_string(&iter).unwrap_or_default();
    for _ in 0..2 {
        let before = read();
        assert!(
            wait_until(T, || read() != before && !read().is_empty()),
            "{when}: the loop does not turn (count {before:?})"
        );
    }
    let report = in_rootfs(b, "/report");
    assert!(
        !report.exists(),
        "{when}: memory and the frozen tmpfs disagree, the tree ran between freeze and seize:\n{}",
        std::fs::read_to_string(&report).unwrap_or_default()
    );
}

#[test]
fn cr_tree_seized_while_frozen_runs_no_user_code_in_between() {
    let env = TestEnv::new("crfrz");
    let id = env.id("c");
    let (b, _) = start_tight_loop(&env, &id);
    for round in 0..2 {
        let img = env.dir.join(format!("img{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let tasks = image_entries(&env, &img.join("pstree.img"));
        assert!(
            tasks.len() >= 2,
            "round {round}: the loop and its forker (and any grandchild) dumped: {tasks:?}"
        );
        restore(&env, &b, &id, &img, &[]).ok();
        assert_eq!(env.status(&id), "running");
        assert_loop_consistent(&b, &format!("after restore {round}"));
    }
    kill_delete_and_check(&env, &b, &id, "KILL");
}

#[test]
fn cr_paused_container_does_not_run_during_a_leave_running_checkpoint() {
    let env = TestEnv::new("crpause");
    let id = env.id("c");
    let (b, pid) = start_tight_loop(&env, &id);
    // A second loop through a foreground `exec`: a process of the container's cgroup outside
    // the init's tree, held still by the checkpoint too.
    let mut exec = env
        .command()
        .args(["exec", &id, "tight_loop", "/dev/shm/x", "/report-exec"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let exec_pid = exec.id() as i32;
    env.track_pid(exec_pid);
    wait_file(&in_rootfs(&b, "/report-exec.iter"), T);
    let outside: Vec<i32> = processes_in(&b.rootfs())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("/dev/shm/x"))
        })
        .collect();
    assert!(!outside.is_empty(), "the exec'd loop runs");
    for p in &outside {
        let mut a = *p;
        while a > 1 {
            assert_ne!(a, pid, "exec'd process {p} is outside the init's tree");
            a = std::fs::read_to_string(format!("/proc/{a}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse().ok()
                })
                .unwrap_or(0);
        }
    }
    env.ferry(&["pause", &id]).ok();
    let v0 = read_in_container(pid, "/dev/shm/n").expect("the loop's file");
    let x0 = read_in_container(pid, "/dev/shm/x").expect("the exec'd loop's file");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(read_in_container(pid, "/dev/shm/n").unwrap(), v0, "paused");
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &["--leave-running"]).ok();
    assert_eq!(env.status(&id), "paused", "paused before, paused after");
    let v1 = read_in_container(pid, "/dev/shm/n").unwrap();
    assert_eq!(
        v1.trim(),
        v0.trim(),
        "the paused container ran during its checkpoint"
    );
    assert_eq!(
        read_in_container(pid, "/dev/shm/x").unwrap(),
        x0,
        "the paused container's exec'd process ran during its checkpoint"
    );
    let tasks = image_entries(&env, &img.join("pstree.img"));
    assert_eq!(
        tasks.len(),
        tree_size(pid),
        "the init's tree is dumped, the exec'd process is not: {tasks:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        read_in_container(pid, "/dev/shm/n").unwrap(),
        v0,
        "still paused"
    );
    env.ferry(&["resume", &id]).ok();
    assert!(
        wait_until(T, || read_in_container(pid, "/dev/shm/n")
            .is_some_and(|v| v != v0)),
        "the loop goes on after resume"
    );
    assert_loop_consistent(&b, "after resume");
    // A running container checkpointed with --leave-running goes on as well.
    checkpoint(&env, &id, &env.dir.join("img2"), &["--leave-running"]).ok();
    assert_eq!(env.status(&id), "running");
    assert_loop_consistent(&b, "after a --leave-running checkpoint");
    let x1 = read_in_container(pid, "/dev/shm/x").unwrap();
    assert!(
        wait_until(T, || read_in_container(pid, "/dev/shm/x")
            .is_some_and(|v| v != x1)),
        "the exec'd loop goes on"
    );
    env.ferry(&["kill", &id, "KILL"]).ok();
    let _ = exec.wait();
}

/// Number of tasks in the tree rooted at `pid` (stable while the container is paused).
fn tree_size(pid: i32) -> usize {
    let mut todo = vec![pid];
    let mut n = 0;
    while let Some(p) = todo.pop() {
        n += 1;
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
    }
    n
}

/// Waits for `/ipc-WHAT-ROUND` of the sysv_ipc workload; its `/ipc-fail-ROUND` ends the wait.
#[track_caller]
fn wait_ipc(b: &ferry_integration::Bundle, what: &str, round: u32) {
    let want = in_rootfs(b, &format!("/ipc-{what}-{round}"));
    let fail = in_rootfs(b, &format!("/ipc-fail-{round}"));
    let ok = wait_until(T, || want.exists() || fail.exists());
    if fail.exists() {
        panic!(
            "round {round}: {}",
            std::fs::read_to_string(&fail).unwrap_or_default()
        );
    }
    assert!(ok, "round {round}: {} never appeared", want.display());
}

#[test]
fn cr_sysv_shm_sem_msg_in_container_ipc_ns_twice() {
    sysv_ipc_twice("cripc", &["sysv_ipc", "2"]);
}

/// The same with the segment attached (mapped) in the init across the checkpoints.
#[test]
fn cr_sysv_shm_attached_in_container_ipc_ns_twice() {
    sysv_ipc_twice("cripcat", &["sysv_ipc", "2", "attached"]);
}

fn sysv_ipc_twice(tag: &str, args: &[&str]) {
    let env = TestEnv::new(tag);
    let id = env.id("c");
    let b = env.bundle(&id, args);
    build_workload(&b, "sysv_ipc");
    let pid = run_detached(&env, &b);
    assert_own_namespace(pid, "ipc");
    wait_ipc(&b, "ready", 0);
    for round in 0..2u32 {
        let img = env.dir.join(format!("img{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let names: Vec<String> = std::fs::read_dir(&img)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for kind in ["shm", "sem", "msg"] {
            let f = names
                .iter()
                .find(|n| n.starts_with(&format!("ipcns-{kind}-")))
                .unwrap_or_else(|| panic!("round {round}: no ipcns-{kind} image in {names:?}"));
            assert_eq!(
                image_entries(&env, &img.join(f)).len(),
                1,
                "round {round}: one {kind} object in {f}"
            );
        }
        restore(&env, &b, &id, &img, &[]).ok();
        assert_eq!(env.status(&id), "running");
        std::fs::write(in_rootfs(&b, &format!("/ipc-go-{round}")), "").unwrap();
        wait_ipc(&b, "ok", round);
        if round == 0 {
            wait_ipc(&b, "ready", 1);
        }
    }
    kill_delete_and_check(&env, &b, &id, "KILL");
}

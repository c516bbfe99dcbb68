//! Checkpoint and restore refusals and failures: clear errors (runc's words where callers match
//! on them), and nothing changed or left behind — no state, cgroups, mounts or processes.

mod cr_common;

use cr_common::*;
use ferry_integration::TestEnv;

#[test]
fn cr_checkpoint_of_a_stopped_or_created_container_fails_and_changes_nothing() {
    let env = TestEnv::new("crstop");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    env.ferry(&["kill", &id, "KILL"]).ok();
    env.wait_status(&id, "stopped", T);
    let img = env.dir.join("img");
    let o = checkpoint(&env, &id, &img, &[]).failed();
    assert!(
        o.stderr
            .contains("Container cannot be checkpointed in stopped state"),
        "runc's message:\n{o}"
    );
    assert!(!img.exists(), "no image directory for a refused checkpoint");
    assert_eq!(env.status(&id), "stopped", "the container is untouched");
    env.ferry(&["delete", &id]).ok();

    let id2 = env.id("created");
    let b2 = counter_bundle(&env, &id2);
    ferry_null(
        &env,
        &["create", "--bundle", b2.path.to_str().unwrap(), &id2],
    )
    .ok();
    track_state_pid(&env, &id2);
    let o = checkpoint(&env, &id2, &img, &[]).failed();
    assert!(
        o.stderr
            .contains("Container cannot be checkpointed in created state"),
        "runc's message:\n{o}"
    );
    assert!(!img.exists());
    assert_eq!(env.status(&id2), "created");

    let o = checkpoint(&env, "no-such-container", &img, &[]).failed();
    assert!(o.stderr.contains("container does not exist"), "{o}");
}

#[test]
fn cr_checkpoint_of_a_container_with_host_file_stdio_is_refused_before_it_is_touched() {
    let env = TestEnv::new("crhostio");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    // The rig's own runner: stdout and stderr are files of the host, outside the container.
    let pid = env.start_running(&b);
    let img = env.dir.join("img");
    let o = checkpoint(&env, &id, &img, &[]).failed();
    assert!(o.stderr.contains("not supported yet"), "{o}");
    assert!(o.stderr.contains("stdio fd 1"), "names the fd:\n{o}");
    assert!(o.stderr.contains("stdout.log"), "names the file:\n{o}");
    assert!(!img.exists(), "refused before the image directory is made");
    assert_eq!(env.status(&id), "running");
    assert_eq!(env.state(&id)["pid"].as_i64().unwrap() as i32, pid);
    let c = b.counter("/count").unwrap_or(0);
    wait_count_above(&b, c);
}

#[test]
fn cr_restore_from_broken_image_dirs_fails_clearly_and_leaves_nothing() {
    let env = TestEnv::new("crbroken");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    settled_count(&b);
    let pid_file = env.dir.join("restore.pid");
    let pf = ["--pid-file", pid_file.to_str().unwrap()];

    // Not a checkpoint at all.
    let empty = env.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = restore(&env, &b, &id, &empty, &pf).failed();
    assert!(o.stderr.contains("inventory.img is missing"), "{o}");
    assert_nothing_left(&env, &b, &id);

    // A missing directory.
    let o = restore(&env, &b, &id, &env.dir.join("nowhere"), &pf).failed();
    assert!(o.stderr.contains("does not exist"), "{o}");
    assert_nothing_left(&env, &b, &id);

    // A missing pages file: the engine's error, from inside the container, reaches the caller.
    let no_pages = env.dir.join("no-pages");
    copy_dir(&img, &no_pages);
    std::fs::remove_file(no_pages.join("pages-1.img")).unwrap();
    let o = restore(&env, &b, &id, &no_pages, &pf).failed();
    assert!(o.stderr.contains("pages-1.img"), "names the file:\n{o}");
    assert_nothing_left(&env, &b, &id);

    // Corrupted memory: caught by the manifest before any task runs its own code.
    let corrupt = env.dir.join("corrupt");
    copy_dir(&img, &corrupt);
    let pages = corrupt.join("pages-1.img");
    let mut bytes = std::fs::read(&pages).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&pages, bytes).unwrap();
    let o = restore(&env, &b, &id, &corrupt, &pf).failed();
    assert!(o.stderr.contains("pages-1.img"), "names the file:\n{o}");
    assert_nothing_left(&env, &b, &id);

    // A garbled descriptors.json.
    let garbled = env.dir.join("garbled");
    copy_dir(&img, &garbled);
    std::fs::write(garbled.join("descriptors.json"), b"[\"/dev/null\"").unwrap();
    let o = restore(&env, &b, &id, &garbled, &pf).failed();
    assert!(o.stderr.contains("descriptors.json"), "{o}");
    assert_nothing_left(&env, &b, &id);

    assert!(!pid_file.exists(), "no pid file for a restore that failed");
    // The good images still restore afterwards: nothing was left in the way.
    restore(&env, &b, &id, &img, &[]).ok();
    assert_eq!(env.status(&id), "running");
}

#[test]
fn cr_restore_onto_an_existing_container_is_refused() {
    let env = TestEnv::new("crexist");
    let id = env.id("c");
    let b = counter_bundle(&env, &id);
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &["--leave-running"]).ok();
    let o = restore(&env, &b, &id, &img, &[]).failed();
    assert!(
        o.stderr
            .contains(&format!("container with id {id} already running")),
        "runc's message:\n{o}"
    );
    assert_eq!(env.status(&id), "running");
}

/// freezer.state of the container's v1 freezer cgroup, if there is one.
fn freezer_state(b: &ferry_integration::Bundle) -> Option<String> {
    ferry_integration::cleanup::cgroup_dirs(&b.cgroups_path)
        .into_iter()
        .find_map(|d| std::fs::read_to_string(d.join("freezer.state")).ok())
        .map(|s| s.trim().to_string())
}

#[test]
fn cr_checkpoint_failing_in_the_engine_leaves_the_container_as_it_was() {
    let env = TestEnv::new("crharm");
    let id = env.id("c");
    // The counter's working directory is removed under it: the engine refuses a deleted cwd,
    // after the container was locked, frozen and its namespaces dumped.
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "mkdir /gone && cd /gone && rmdir /gone && exec counter /count 50",
        ],
    );
    let pid = start_counter(&env, &b);
    let img = env.dir.join("img");
    let o = checkpoint(&env, &id, &img, &[]).failed();
    assert!(o.stderr.contains("checkpoint of container"), "{o}");
    assert!(
        o.stderr.contains("deleted") || o.stderr.contains("removed"),
        "names why:\n{o}"
    );
    assert_eq!(env.status(&id), "running");
    assert_eq!(
        env.state(&id)["pid"].as_i64().unwrap() as i32,
        pid,
        "same init"
    );
    if let Some(s) = freezer_state(&b) {
        assert_eq!(s, "THAWED");
    }
    assert!(!nft_tables(pid).contains("ferry-"), "network lock removed");
    let c = b.counter("/count").unwrap();
    wait_count_above(&b, c);

    // Paused before: paused after.
    env.ferry(&["pause", &id]).ok();
    checkpoint(&env, &id, &img, &["--leave-running"]).failed();
    assert_eq!(env.status(&id), "paused");
    settled_count(&b);
    assert!(!nft_tables(pid).contains("ferry-"), "network lock removed");
    env.ferry(&["resume", &id]).ok();
    let c = b.counter("/count").unwrap();
    wait_count_above(&b, c);
}

//! TCP inside a container's own network namespace across `ferry checkpoint`/`ferry restore`:
//! a server and its client (two processes of the container, on its loopback) with unread data
//! in both directions and a listening socket. With `--tcp-established` the connection is
//! dumped in TCP repair mode and carries on after each of two restores (restore of a
//! restore), checked from inside; without it the checkpoint refuses, as runc+CRIU do, and the
//! container runs on untouched. No network lock (nftables table) outlives a checkpoint or
//! restore.

mod cr_build;
mod cr_common;

use cr_build::*;
use cr_common::*;
use ferry_integration::cmd::wait_until;
use ferry_integration::{Bundle, TestEnv};

/// Waits until both sides wrote `/tcp-WHAT-ROUND-SIDE`; a `/tcp-fail-ROUND-SIDE` ends the
/// wait with its reason.
#[track_caller]
fn wait_both(b: &Bundle, what: &str, round: u32) {
    for side in ["server", "client"] {
        let want = in_rootfs(b, &format!("/tcp-{what}-{round}-{side}"));
        let fail = in_rootfs(b, &format!("/tcp-fail-{round}-{side}"));
        let ok = wait_until(T, || want.exists() || fail.exists());
        if fail.exists() {
            panic!(
                "round {round}, {side}: {}",
                std::fs::read_to_string(&fail).unwrap_or_default()
            );
        }
        assert!(
            ok,
            "round {round}: the {side} never wrote {}",
            want.display()
        );
    }
}

fn state_pid(env: &TestEnv, id: &str) -> i32 {
    env.state(id)["pid"].as_i64().expect("a pid") as i32
}

#[test]
fn cr_tcp_connection_in_container_netns_carries_on_twice() {
    let env = TestEnv::new("crtcp");
    let id = env.id("c");
    let b = env.bundle(&id, &["tcp_pair", "2"]);
    build_workload(&b, "tcp_pair");
    // The workload brings its loopback up itself.
    b.edit_config(|c| {
        for set in ["bounding", "effective", "permitted", "ambient"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push("CAP_NET_ADMIN".into());
        }
    });
    let pid = run_detached(&env, &b);
    assert_own_namespace(pid, "net");
    wait_both(&b, "ready", 0);

    // Without --tcp-established: refused, and the container runs on as it was.
    let refused = env.dir.join("refused");
    let o = checkpoint(&env, &id, &refused, &[])
        .failed()
        .stderr_has("--tcp-established");
    eprintln!("refused as expected: {}", o.stderr.trim());
    assert_eq!(env.status(&id), "running");
    assert_eq!(state_pid(&env, &id), pid, "the same container");
    assert!(!nft_tables(pid).contains("ferry-"), "network lock removed");

    for round in 0..2u32 {
        let img = env.dir.join(format!("img{round}"));
        checkpoint(&env, &id, &img, &["--tcp-established"]).ok();
        // Both ends' unread bytes are in the images: each receive queue holds what the other
        // side sent this round (tcp_pair's round_len).
        let mut inq: Vec<u64> = std::fs::read_dir(&img)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-"))
            .flat_map(|e| image_entries(&env, &e.path()))
            .filter_map(|t| t["inq_len"].as_u64())
            .filter(|n| *n > 0)
            .collect();
        inq.sort();
        let r = u64::from(round);
        assert_eq!(
            inq,
            vec![3000 + 1000 * r, 3517 + 1000 * r],
            "round {round}: unread bytes of both directions in tcp-stream images"
        );
        if round == 1 {
            // An image holding established connections needs the flag on restore too.
            let o = restore(&env, &b, &id, &img, &[])
                .failed()
                .stderr_has("--tcp-established");
            eprintln!("restore refused as expected: {}", o.stderr.trim());
            assert_no_state(&env, &id);
        }
        restore(&env, &b, &id, &img, &["--tcp-established"]).ok();
        assert_eq!(env.status(&id), "running");
        let pid = state_pid(&env, &id);
        assert!(!nft_tables(pid).contains("ferry-"), "network lock lifted");
        std::fs::write(in_rootfs(&b, &format!("/tcp-go-{round}")), "").unwrap();
        wait_both(&b, "ok", round);
        if round == 0 {
            wait_both(&b, "ready", 1);
        }
    }
    // Both processes still alive and in the container.
    let o = env.ferry(&["ps", &id]).ok();
    assert_eq!(
        o.stdout.matches("tcp_pair").count(),
        2,
        "server and client:\n{o}"
    );
    kill_delete_and_check(&env, &b, &id, "KILL");
}

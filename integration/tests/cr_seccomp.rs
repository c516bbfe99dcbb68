//! A container with an OCI seccomp profile (as podman runs every container: libcontainer loads
//! it through libseccomp; no no_new_privs; no CAP_SYS_ADMIN left) checkpointed and restored
//! twice with `ferry checkpoint` / `ferry restore`: the init's filter comes back (the kernel's
//! /proc view equal, no_new_privs still off, capabilities as they were) and still acts — a
//! loop in the container keeps finding `mkdir` refused with the profile's errno, and its
//! counter carries on; a process exec'd into the restored container is filtered too. Once with
//! `noNewPrivileges` left out and once with it written out as `false`.

mod cr_common;

use cr_common::*;
use ferry_integration::cmd::wait_until;
use ferry_integration::TestEnv;

/// The loop: each round tries mkdir (refused by the profile), writes the verdict to /probe
/// and the round number to /count (both renamed into place: a checkpoint never sees them half
/// written).
const SCRIPT: &str = "i=0; while :; do \
    if mkdir /probe-dir 2>/dev/null; then r=made; rmdir /probe-dir; else r=denied; fi; \
    echo $r > /probe.tmp; mv /probe.tmp /probe; \
    i=$((i+1)); echo $i > /count.tmp; mv /count.tmp /count; sleep 0.05; done";

/// Seccomp, no_new_privs and capability lines of /proc/PID/status.
fn seccomp_view(pid: i32) -> Vec<String> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let keep = [
        "Seccomp:",
        "Seccomp_filters:",
        "NoNewPrivs:",
        "CapEff:",
        "CapPrm:",
        "CapBnd:",
    ];
    st.lines()
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[track_caller]
fn assert_probe_denied(b: &ferry_integration::Bundle) {
    let probe = b.rootfs().join("probe");
    let _ = std::fs::remove_file(&probe);
    assert!(
        wait_until(T, || probe.exists()),
        "the container loop never wrote /probe"
    );
    assert_eq!(
        b.read_rootfs_file("/probe").unwrap_or_default().trim(),
        "denied",
        "mkdir was not refused: the filter is gone"
    );
}

/// A process exec'd into the container is filtered as the init is, with no_new_privs off.
#[track_caller]
fn assert_exec_filtered(env: &TestEnv, id: &str, what: &str) {
    let o = env.ferry(&[
        "exec",
        id,
        "sh",
        "-c",
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; mkdir /exec-dir",
    ]);
    assert_eq!(o.code(), 1, "{what}: exec:\n{o}");
    assert!(
        o.stdout.contains("Seccomp:\t2"),
        "{what}: exec'd filter:\n{o}"
    );
    assert!(
        o.stdout.contains("NoNewPrivs:\t0"),
        "{what}: exec'd nnp:\n{o}"
    );
    assert!(
        o.stderr.contains("Permission denied"),
        "{what}: exec'd mkdir not refused with the profile's errno:\n{o}"
    );
}

#[test]
fn cr_oci_seccomp_profile_survives_two_checkpoints() {
    // Absent, as podman writes it (Go's omitempty drops a false): no no_new_privs.
    seccomp_rounds("crsecc", None);
}

#[test]
fn cr_oci_seccomp_profile_with_explicit_no_new_privileges_false() {
    // Written out, as configs serialized by Rust's oci-spec or by hand are: the same meaning.
    seccomp_rounds("crseccf", Some(false));
}

fn seccomp_rounds(name: &str, nnp: Option<bool>) {
    let env = TestEnv::new(name);
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", SCRIPT]);
    b.set_seccomp(
        nnp,
        &[
            serde_json::json!(
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ),
            serde_json::json!({"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}),
        ],
    );
    let pid = start_counter(&env, &b);
    assert_probe_denied(&b);
    let view = seccomp_view(pid);
    assert!(view.contains(&"Seccomp: 2".to_string()), "{view:?}");
    assert!(view.contains(&"NoNewPrivs: 0".to_string()), "{view:?}");
    assert_exec_filtered(&env, &id, "before any checkpoint");
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        assert!(
            img.join("seccomp.img").exists(),
            "round {round}: seccomp.img"
        );
        let stopped_at = settled_count(&b);
        restore(&env, &b, &id, &img, &[]).ok();
        assert_eq!(env.status(&id), "running", "round {round}: state");
        assert_counts_on_from(&b, stopped_at);
        let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            seccomp_view(pid),
            view,
            "round {round}: the init's seccomp view"
        );
        assert_probe_denied(&b);
        assert_exec_filtered(&env, &id, &format!("round {round}"));
    }
    env.ferry(&["kill", &id, "KILL"]).ok();
    assert!(wait_until(T, || env.status(&id) == "stopped"));
    env.ferry(&["delete", &id]).ok();
}

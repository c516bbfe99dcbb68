//! Containers with an OCI seccomp profile, with `process.noNewPrivileges` left out (podman),
//! written out as `false` (hand-written and Rust-serialized configs), and `true`: `ferry run`,
//! `create` + `start` and `exec` all start, every process the container gets (the init and
//! each exec'd one, with and without `--process`) carries the profile's filter, a syscall it
//! denies fails with the profile's own errno, no_new_privs is what the config says, and the
//! exec'd processes hold exactly the init's capabilities (ferry widens them for the filter load
//! only, when no_new_privs is off).

use std::fs;

use ferry_integration::bundle::CONTAINER_PATH;
use ferry_integration::{Bundle, TestEnv};

/// The errno the profile gives `mkdir`: EREMOTEIO, which nothing else here would produce.
const DENIED: &str = "Remote I/O error";

/// Prints the seccomp, no_new_privs and capability lines of its own status, then tries mkdir.
const PROBE: &str = "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; \
     mkdir /probe-dir && echo mkdir-made";

fn with_profile(b: &Bundle, nnp: Option<bool>) {
    b.set_seccomp(
        nnp,
        &[serde_json::json!(
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 121}
        )],
    );
}

/// `Key:\tvalue` of `text` (PROBE's output or a /proc status file).
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

/// PROBE's output shows the filter acting and no_new_privs at `nnp`.
#[track_caller]
fn assert_filtered(out: &str, stderr: &str, nnp: &str, what: &str) {
    assert_eq!(field(out, "Seccomp"), "2", "{what}: no filter:\n{out}");
    assert_eq!(
        field(out, "NoNewPrivs"),
        nnp,
        "{what}: no_new_privs:\n{out}"
    );
    assert!(!out.contains("mkdir-made"), "{what}: mkdir was allowed");
    assert!(
        stderr.contains(DENIED),
        "{what}: mkdir not refused with the profile's errno:\n{stderr}"
    );
}

fn nnp_word(nnp: Option<bool>) -> &'static str {
    if nnp == Some(true) {
        "1"
    } else {
        "0"
    }
}

#[test]
fn run_attached_loads_the_filter_whatever_no_new_privileges_says() {
    let env = TestEnv::new("seccrun");
    for (tag, nnp) in [
        ("absent", None),
        ("false", Some(false)),
        ("true", Some(true)),
    ] {
        let id = env.id(tag);
        let b = env.bundle(&id, &["sh", "-c", PROBE]);
        with_profile(&b, nnp);
        // mkdir fails, so the script (and the run) ends with status 1.
        let o = env
            .ferry(&["run", "--bundle", b.path.to_str().unwrap(), &id])
            .code_is(1);
        assert_filtered(&o.stdout, &o.stderr, nnp_word(nnp), &format!("run, {tag}"));
    }
}

#[test]
fn create_start_and_exec_carry_the_filter_and_the_init_capabilities() {
    let env = TestEnv::new("seccexec");
    for (tag, nnp) in [
        ("absent", None),
        ("false", Some(false)),
        ("true", Some(true)),
    ] {
        let id = env.id(tag);
        let b = env.bundle(&id, &["counter", "/count", "100"]);
        with_profile(&b, nnp);
        let bundle = b.path.to_str().unwrap();
        env.ferry(&["create", "--bundle", bundle, &id]).ok();
        let st = env.state(&id);
        assert_eq!(
            st["bundle"]
                .as_str()
                .map(fs::canonicalize)
                .unwrap()
                .unwrap(),
            fs::canonicalize(&b.path).unwrap(),
            "{tag}: state names the caller's bundle: {st}"
        );
        env.ferry(&["start", &id]).ok();
        env.wait_status(&id, "running", std::time::Duration::from_secs(15));
        let pid = env.state(&id)["pid"].as_i64().unwrap();
        let init = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert_eq!(field(&init, "Seccomp"), "2", "{tag}: init filter");
        assert_eq!(field(&init, "NoNewPrivs"), nnp_word(nnp), "{tag}: init nnp");

        let what = format!("exec, {tag}");
        let o = env.ferry(&["exec", &id, "sh", "-c", PROBE]).code_is(1);
        assert_filtered(&o.stdout, &o.stderr, nnp_word(nnp), &what);
        for cap in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                field(&o.stdout, cap),
                field(&init, cap),
                "{what}: {cap} differs from the init's"
            );
        }

        // As podman and containerd exec: a process.json, here saying false out loud.
        let process = serde_json::json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", PROBE],
            "env": [CONTAINER_PATH],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"]},
            "noNewPrivileges": false
        });
        let p = env.dir.join(format!("process-{tag}.json"));
        fs::write(&p, serde_json::to_vec(&process).unwrap()).unwrap();
        let what = format!("exec --process, {tag}");
        let o = env
            .ferry(&["exec", "--process", p.to_str().unwrap(), &id])
            .code_is(1);
        assert_filtered(&o.stdout, &o.stderr, "0", &what);
        // CAP_KILL alone: nothing of the load's CAP_SYS_ADMIN / CAP_SETPCAP is left.
        for cap in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(field(&o.stdout, cap), "0000000000000020", "{what}: {cap}");
        }
        env.ferry(&["delete", "--force", &id]).ok();
    }
}

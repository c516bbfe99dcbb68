//! The ways real callers invoke runc, which ferry must accept unchanged: podman's probes
//! (`checkpoint --help` exits 0, `restore --lsm-mount-context` with no value says "flag needs an
//! argument"), a boolean flag given twice (podman passes `--leave-running` twice), one-dash long
//! flags (go-runc passes `-no-subreaper`), and every runc checkpoint/restore flag — which all
//! parse; the options the engine cannot honour yet (pre-dump, lazy pages, page server, parent
//! images, dedup, empty namespaces) are then refused by name before anything is touched.

use std::process::Stdio;
use std::time::Duration;

use ferry_integration::cmd::wait_until;
use ferry_integration::{Out, TestEnv};

const T: Duration = Duration::from_secs(15);

/// Texts that betray a parse error (clap's or urfave/cli's) rather than a refusal after parsing.
const PARSE_ERRORS: &[&str] = &[
    "unexpected argument",
    "cannot be used multiple times",
    "flag provided but not defined",
    "Incorrect Usage",
    "invalid value",
    "requires a value",
    "flag needs an argument",
];

/// Parsed (no parse error), then refused with "not supported yet" naming each of `flags`.
#[track_caller]
fn assert_parsed_then_refused(o: &Out, flags: &[&str]) {
    assert!(!o.success(), "must be refused:\n{o}");
    assert_parsed(o);
    assert!(
        o.stderr.contains("not supported yet"),
        "says clearly what is not supported:\n{o}"
    );
    for f in flags {
        assert!(o.stderr.contains(f), "names {f}:\n{o}");
    }
}

/// No parse error in the output.
#[track_caller]
fn assert_parsed(o: &Out) {
    for bad in PARSE_ERRORS {
        assert!(
            !o.stderr.contains(bad),
            "a parse error ({bad:?}), not a refusal:\n{o}"
        );
    }
}

/// `run -d` with null stdio (containerd's null IO), so the container can be checkpointed.
fn run_null(env: &TestEnv, b: &ferry_integration::Bundle) {
    let mut c = env.command();
    c.args(["run", "-d", "--bundle", b.path.to_str().unwrap(), &b.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ferry_integration::cmd::run_with_stdio(&mut c, T).ok();
    let st = env.state(&b.id);
    assert_eq!(st["status"], "running", "{st}");
    env.track_pid(st["pid"].as_i64().unwrap() as i32);
}

#[test]
fn checkpoint_help_exits_zero() {
    let env = TestEnv::new("ckhelp");
    let o = env.ferry_bare(&["checkpoint", "--help"]).code_is(0);
    for flag in [
        "--image-path",
        "--leave-running",
        "--tcp-established",
        "--manage-cgroups-mode",
    ] {
        assert!(o.stdout.contains(flag), "help lists {flag}:\n{o}");
    }
    let o = env.ferry_bare(&["restore", "--help"]).code_is(0);
    assert!(o.stdout.contains("--lsm-mount-context"), "{o}");
}

#[test]
fn version_exits_zero() {
    let env = TestEnv::new("version");
    let o = env.ferry_bare(&["--version"]).code_is(0);
    assert!(o.stdout.contains("version"), "{o}");
}

#[test]
fn restore_lsm_mount_context_without_value_needs_an_argument() {
    let env = TestEnv::new("lsmctx");
    let o = env.ferry_bare(&["restore", "--lsm-mount-context"]).failed();
    assert!(
        o.stderr.contains("flag needs an argument"),
        "podman's probe text:\n{o}"
    );
}

#[test]
fn checkpoint_parses_every_runc_flag_then_refuses_the_unsupported_and_leaves_the_container_running()
{
    let env = TestEnv::new("ckflags");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "50"]);
    env.start_running(&b);
    let img = env.dir.join("ck-img");
    let work = env.dir.join("ck-work");
    let parent = env.dir.join("ck-parent");
    let o = env.ferry_in(
        &env.dir,
        &[
            "checkpoint",
            "--image-path",
            img.to_str().unwrap(),
            "--work-path",
            work.to_str().unwrap(),
            "--parent-path",
            parent.to_str().unwrap(),
            "--leave-running",
            "--leave-running", // podman passes it twice
            "--tcp-established",
            "--tcp-skip-in-flight",
            "--link-remap",
            "--ext-unix-sk",
            "--shell-job",
            "--lazy-pages",
            "--status-fd",
            "2",
            "--page-server",
            "127.0.0.1:27000",
            "--file-locks",
            "--pre-dump",
            "--manage-cgroups-mode",
            "soft",
            "--empty-ns",
            "network",
            "--auto-dedup",
            &id,
        ],
    );
    assert_parsed_then_refused(
        &o,
        &[
            "--pre-dump",
            "--parent-path",
            "--lazy-pages",
            "--page-server",
            "--status-fd",
            "--auto-dedup",
            "--empty-ns",
        ],
    );
    assert!(
        !img.exists() && !work.exists(),
        "refused before anything is made"
    );
    assert_eq!(
        env.status(&id),
        "running",
        "a refused checkpoint never harms the container"
    );
    let c = b.counter("/count").unwrap_or(0);
    assert!(
        wait_until(T, || b.counter("/count").unwrap_or(0) > c),
        "still counting"
    );
}

#[test]
fn checkpoint_flag_given_twice() {
    let env = TestEnv::new("cktwice");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    run_null(&env, &b);
    let o = env.ferry_in(
        &env.dir,
        &["checkpoint", "--leave-running", "--leave-running", &id],
    );
    assert_parsed(&o);
    assert!(o.success(), "podman's doubled flag checkpoints:\n{o}");
    assert_eq!(env.status(&id), "running", "--leave-running honoured");
    assert!(
        env.dir.join("checkpoint/inventory.img").exists(),
        "runc's default --image-path is ./checkpoint"
    );
}

#[test]
fn restore_parses_every_runc_flag_then_refuses_the_unsupported_and_creates_nothing() {
    let env = TestEnv::new("rsflags");
    let id = env.id("r");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    let img = env.dir.join("rs-img");
    std::fs::create_dir(&img).unwrap();
    let sock = env.dir.join("console.sock");
    let pid_file = env.dir.join("restore.pid");
    let o = env.ferry_in(
        &env.dir,
        &[
            "restore",
            "--console-socket",
            sock.to_str().unwrap(),
            "--image-path",
            img.to_str().unwrap(),
            "--work-path",
            env.dir.join("rs-work").to_str().unwrap(),
            "--tcp-established",
            "--tcp-close",
            "--ext-unix-sk",
            "--shell-job",
            "--file-locks",
            "--manage-cgroups-mode",
            "full",
            "--bundle",
            b.path.to_str().unwrap(),
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "-no-subreaper", // go-runc's spelling
            "--no-pivot",
            "--empty-ns",
            "network",
            "--auto-dedup",
            "--lazy-pages",
            "--lsm-profile",
            "apparmor:ferry-test",
            "--lsm-mount-context",
            "system_u:object_r:container_file_t:s0",
            &id,
        ],
    );
    assert_parsed_then_refused(&o, &["--lazy-pages", "--auto-dedup", "--empty-ns"]);
    env.ferry(&["state", &id])
        .code_is(1)
        .stderr_has("container does not exist");
    assert!(
        !pid_file.exists(),
        "no pid file for a restore that did not happen"
    );
}

#[test]
fn restore_one_dash_flags_as_go_runc_passes_them() {
    let env = TestEnv::new("rsdash");
    let id = env.id("r");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    let o = env.ferry_in(
        &env.dir,
        &[
            "restore",
            "-d",
            "-no-subreaper",
            "-bundle",
            b.path.to_str().unwrap(),
            "-image-path",
            env.dir.to_str().unwrap(),
            &id,
        ],
    );
    // Every one-dash flag was taken: the refusal is about the image directory it named.
    assert_parsed(&o);
    assert!(!o.success(), "{o}");
    assert!(
        o.stderr.contains("inventory.img is missing")
            && o.stderr.contains(env.dir.to_str().unwrap()),
        "{o}"
    );
    env.ferry(&["state", &id])
        .code_is(1)
        .stderr_has("container does not exist");
}

#[test]
fn one_dash_long_flags_on_run() {
    let env = TestEnv::new("rundash");
    let id = env.id("c");
    let b = env.bundle(&id, &["probe", "5"]);
    let pid_file = env.dir.join("run.pid");
    let o = env
        .ferry(&[
            "run",
            "-no-subreaper",
            "-bundle",
            b.path.to_str().unwrap(),
            "-pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ])
        .code_is(5);
    assert!(o.stdout.contains("pid=1\n"), "{o}");
    assert!(pid_file.exists(), "-pid-file honoured");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let env = TestEnv::new("badflag");
    let o = env.ferry_bare(&["state", "--no-such-flag", "x"]).failed();
    assert!(!o.stderr.trim().is_empty(), "{o}");
}

#[test]
fn log_file_in_json_carries_the_error_for_callers() {
    // conmon and containerd's shim pass `--log FILE --log-format json` and read the error back.
    let env = TestEnv::new("logjson");
    let log = env.dir.join("log.json");
    let o = env
        .ferry(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "no-such-container",
        ])
        .code_is(1);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let entry = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .unwrap_or_else(|| panic!("no JSON error line in {}: {text:?}\n{o}", log.display()));
    assert!(
        entry["msg"]
            .as_str()
            .is_some_and(|m| m.contains("container does not exist")),
        "{entry}"
    );
    assert!(entry["time"].is_string(), "{entry}");
}

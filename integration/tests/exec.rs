//! End-to-end `exec`: arguments, exit codes, `--env`, `--cwd`, `--user`, `-d` with
//! `--pid-file`, and `--process` JSON, in a running busybox container.

use std::fs;
use std::time::Duration;

use ferry_integration::bundle::CONTAINER_PATH;
use ferry_integration::cleanup::process_alive;
use ferry_integration::cmd::wait_until;
use ferry_integration::{Bundle, TestEnv};

const T: Duration = Duration::from_secs(15);

fn running(env: &TestEnv) -> (String, Bundle, i32) {
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    let pid = env.start_running(&b);
    (id, b, pid)
}

#[test]
fn exec_runs_args_in_the_container_and_propagates_exit_code() {
    let env = TestEnv::new("exec");
    let (id, _b, _) = running(&env);
    let o = env
        .ferry(&["exec", &id, "probe", "7", "first", "second arg"])
        .code_is(7);
    assert!(o.stdout.contains("arg[2]=first\n"), "{o}");
    assert!(o.stdout.contains("arg[3]=second arg\n"), "{o}");
    assert!(
        o.stdout.contains("hostname=ferry-it\n"),
        "joins the uts namespace:\n{o}"
    );
    assert!(
        !o.stdout.contains("pid=1\n"),
        "exec'd process is not the init:\n{o}"
    );
    assert!(
        o.stdout.contains(&format!("env={CONTAINER_PATH}\n")),
        "config env:\n{o}"
    );
    env.ferry(&["exec", &id, "true"]).code_is(0);
    env.ferry(&["exec", &id, "sh", "-c", "exit 3"]).code_is(3);
    // It sees the container's filesystem and pid namespace: the init is pid 1 running counter.
    let o = env.ferry(&["exec", &id, "cat", "/proc/1/cmdline"]).ok();
    assert!(o.stdout.starts_with("counter\0/count"), "{o}");
    // A missing binary is an error, not a hang.
    env.ferry(&["exec", &id, "/no/such/binary"]).failed();
    assert_eq!(env.status(&id), "running");
}

#[test]
fn exec_env_and_cwd() {
    let env = TestEnv::new("execenv");
    let (id, _b, _) = running(&env);
    let o = env
        .ferry(&[
            "exec",
            "--env",
            "FOO=bar",
            "--env",
            "BAZ=qux 1",
            "--cwd",
            "/tmp",
            &id,
            "probe",
        ])
        .ok();
    assert!(o.stdout.contains("env=FOO=bar\n"), "{o}");
    assert!(o.stdout.contains("env=BAZ=qux 1\n"), "{o}");
    assert!(o.stdout.contains("cwd=/tmp\n"), "{o}");
}

#[test]
fn exec_user() {
    let env = TestEnv::new("execuser");
    let (id, _b, _) = running(&env);
    let o = env
        .ferry(&["exec", "--user", "1000:1000", &id, "probe"])
        .ok();
    assert!(
        o.stdout.contains("uid=1000\n") && o.stdout.contains("gid=1000\n"),
        "{o}"
    );
    let o = env.ferry(&["exec", "-u", "65534", &id, "probe"]).ok();
    assert!(o.stdout.contains("uid=65534\n"), "{o}");
}

#[test]
fn exec_detached_with_pid_file() {
    let env = TestEnv::new("execd");
    let (id, b, _) = running(&env);
    let pid_file = env.dir.join("exec.pid");
    let out = env.dir.join("exec.out");
    let err = env.dir.join("exec.err");
    env.ferry_to_files(
        &[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "echo detached-started; touch /detached-ran; exec sleep 300",
        ],
        &out,
        &err,
    )
    .ok();
    // exec -d returned while its process (sleep 300) still runs.
    let pid: i32 = fs::read_to_string(&pid_file)
        .expect("--pid-file written")
        .trim()
        .parse()
        .expect("pid file holds a pid");
    env.track_pid(pid);
    assert!(process_alive(pid), "detached exec process {pid} is running");
    assert!(wait_until(T, || b.rootfs().join("detached-ran").exists()));
    assert!(wait_until(T, || fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("detached-started")));
    let ps = env.ferry(&["ps", "--format", "json", &id]).ok().json();
    let pids: Vec<i64> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_i64())
        .collect();
    assert!(
        pids.contains(&(pid as i64)),
        "ps lists the exec'd process {pid}: {pids:?}"
    );
}

#[test]
fn exec_process_json() {
    let env = TestEnv::new("execproc");
    let (id, _b, _) = running(&env);
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 1000, "gid": 1000},
        "args": ["probe", "3", "from-json"],
        "env": [CONTAINER_PATH, "JSONVAR=yes"],
        "cwd": "/etc",
        "noNewPrivileges": true
    });
    let p = env.dir.join("process.json");
    fs::write(&p, serde_json::to_vec(&process).unwrap()).unwrap();
    let o = env
        .ferry(&["exec", "--process", p.to_str().unwrap(), &id])
        .code_is(3);
    for want in [
        "arg[2]=from-json\n",
        "env=JSONVAR=yes\n",
        "cwd=/etc\n",
        "uid=1000\n",
    ] {
        assert!(o.stdout.contains(want), "missing {want:?}:\n{o}");
    }
}

#[test]
fn exec_in_a_stopped_container_fails() {
    let env = TestEnv::new("execstop");
    let (id, _b, _) = running(&env);
    env.ferry(&["kill", &id, "KILL"]).ok();
    env.wait_status(&id, "stopped", T);
    env.ferry(&["exec", &id, "true"]).failed();
}

/// The `Groups:` of /proc/PID/status (`self` for the reading process), trimmed.
fn groups_line(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .expect("a Groups: line")
        .trim()
        .to_string()
}

/// ferry `ARGS` run by `setpriv --groups 4,24`: ferry itself holding supplementary groups.
fn with_groups(env: &TestEnv, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--groups", "4,24", "--"])
        .arg(&env.bin)
        .arg("--root")
        .arg(&env.root)
        .current_dir(&env.dir)
        .args(args);
    c
}

/// runc's rule: the container's init and an exec'd process hold exactly the process's
/// additionalGids (none: none), never the supplementary groups of the runtime that made them.
#[test]
fn exec_and_init_hold_the_processs_groups_not_ferrys() {
    use ferry_integration::cmd;
    let env = TestEnv::new("execgrp");
    // The caller's groups are really there (else the test proves nothing).
    let o = cmd::run(
        std::process::Command::new("setpriv").args([
            "--groups",
            "4,24",
            "--",
            "cat",
            "/proc/self/status",
        ]),
        T,
    )
    .ok();
    assert_eq!(groups_line(&o.stdout), "4 24");

    let id = env.id("g");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    let bundle = b.path.to_str().unwrap();
    let mut c = with_groups(&env, &["create", "--bundle", bundle, &id]);
    let log = |p: std::path::PathBuf| fs::File::create(p).unwrap();
    c.stdin(std::process::Stdio::null())
        .stdout(log(b.stdout_path()))
        .stderr(log(b.stderr_path()));
    let o = cmd::run_with_stdio(&mut c, T);
    env.track_id(&id);
    assert!(o.success(), "create under setpriv: {o}\n{}", b.stdout());
    env.ferry(&["start", &id]).ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    env.track_pid(pid);
    let init = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(groups_line(&init), "", "the init's groups");

    let o = cmd::run(
        &mut with_groups(&env, &["exec", &id, "cat", "/proc/self/status"]),
        T,
    )
    .ok();
    assert_eq!(groups_line(&o.stdout), "", "an exec'd process's groups");
    let o = cmd::run(
        &mut with_groups(
            &env,
            &[
                "exec",
                "--additional-gids",
                "7",
                &id,
                "cat",
                "/proc/self/status",
            ],
        ),
        T,
    )
    .ok();
    assert_eq!(groups_line(&o.stdout), "7", "exec --additional-gids 7");
    env.ferry(&["delete", "-f", &id]).ok();
}

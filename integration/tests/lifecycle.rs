//! End-to-end lifecycle: create, start, state, run (detached and attached), delete, and the
//! error paths callers depend on (runc's texts and exit codes), against real containers.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use ferry_integration::cleanup::{cgroup_dirs, process_alive};
use ferry_integration::cmd::{self, wait_until};
use ferry_integration::TestEnv;

const T: Duration = Duration::from_secs(15);

/// A counter workload writing /count every 100 ms.
const COUNTER: &[&str] = &["counter", "/count", "100"];

#[test]
fn create_start_state_and_status_transitions() {
    let env = TestEnv::new("create");
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", "echo hello-from-init; sleep 1"]);
    let pid_file = env.dir.join("init.pid");

    env.create(&b, &["--pid-file", pid_file.to_str().unwrap()])
        .ok();
    let st = env.state(&id);
    assert_eq!(st["id"], id.as_str(), "{st}");
    assert_eq!(st["status"], "created", "{st}");
    assert!(
        st["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{st}"
    );
    assert_eq!(
        st["bundle"],
        b.path.to_str().unwrap(),
        "bundle is the absolute path: {st}"
    );
    let pid = st["pid"].as_i64().expect("created container has a pid") as i32;
    assert!(
        pid > 0 && process_alive(pid),
        "init {pid} must exist while created: {st}"
    );
    let written: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, pid, "--pid-file holds the init's host pid");
    let created = st["created"].as_str().expect("created timestamp");
    assert!(
        created.len() >= 20 && created.contains('T'),
        "RFC 3339 timestamp: {created}"
    );
    // The user process has not run yet: nothing printed.
    assert!(
        !b.stdout().contains("hello-from-init"),
        "ran before start: {}",
        b.stdout()
    );

    env.ferry(&["start", &id]).ok();
    assert_eq!(env.status(&id), "running");
    assert!(
        wait_until(T, || b.stdout().contains("hello-from-init")),
        "init never printed after start; stdout: {:?}",
        b.stdout()
    );
    env.wait_status(&id, "stopped", T);
    // A stopped container cannot be started again (runc's text).
    env.ferry(&["start", &id])
        .failed()
        .stderr_has("cannot start a container that has stopped");

    env.ferry(&["delete", &id]).ok();
    env.ferry(&["state", &id])
        .code_is(1)
        .stderr_has("container does not exist");
    assert!(!env.root.join(&id).exists(), "state dir left behind");
    assert!(
        cgroup_dirs(&b.cgroups_path).is_empty(),
        "cgroups left behind: {:?}",
        cgroup_dirs(&b.cgroups_path)
    );
}

#[test]
fn run_detached_counts_then_stops_on_sigterm() {
    let env = TestEnv::new("rund");
    let id = env.id("c");
    let b = env.bundle(&id, COUNTER);
    let pid = env.start_running(&b);
    assert!(process_alive(pid));
    assert!(
        wait_until(T, || b.counter("/count").unwrap_or(0) >= 3),
        "counter not counting"
    );
    assert!(
        b.stdout().contains("count 1\n"),
        "stdout is the caller's: {:?}",
        b.stdout()
    );

    env.ferry(&["kill", &id]).ok(); // default signal: SIGTERM
    env.wait_status(&id, "stopped", T);
    assert!(wait_until(T, || b
        .stdout()
        .contains("exiting on signal 15")));
    env.ferry(&["delete", &id]).ok();
    assert!(
        wait_until(T, || !process_alive(pid)),
        "init {pid} still alive after delete"
    );
}

#[test]
fn run_attached_propagates_exit_code_and_output() {
    let env = TestEnv::new("runa");
    let id = env.id("c");
    let b = env.bundle(&id, &["probe", "42", "attached"]);
    let o = env
        .ferry(&["run", "--bundle", b.path.to_str().unwrap(), &id])
        .code_is(42);
    assert!(
        o.stdout.contains("pid=1\n"),
        "init is pid 1 of its own pid namespace:\n{o}"
    );
    assert!(
        o.stdout.contains("hostname=ferry-it\n"),
        "uts namespace + hostname:\n{o}"
    );
    assert!(o.stdout.contains("arg[2]=attached\n"), "{o}");
    // An attached run deletes the container when its process exits.
    env.ferry(&["state", &id])
        .code_is(1)
        .stderr_has("container does not exist");
    assert!(
        cgroup_dirs(&b.cgroups_path).is_empty(),
        "cgroups left behind after run"
    );
}

#[test]
fn run_attached_zero_exit() {
    let env = TestEnv::new("run0");
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", "echo out; echo err >&2"]);
    let o = env
        .ferry(&["run", "--bundle", b.path.to_str().unwrap(), &id])
        .code_is(0);
    assert_eq!(o.stdout, "out\n", "{o}");
    assert!(o.stderr.contains("err\n"), "{o}");
}

#[test]
fn run_attached_reports_signal_death_as_128_plus_signal() {
    let env = TestEnv::new("runsig");
    let id = env.id("c");
    let b = env.bundle(&id, COUNTER);
    let mut run = env.command();
    run.args(["run", "--bundle", b.path.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = run.spawn().expect("spawn run");
    env.track_pid(child.id() as i32);
    assert!(
        wait_until(T, || b.counter("/count").is_some()),
        "attached container never started counting"
    );
    env.ferry(&["kill", &id, "KILL"]).ok();
    let out = wait_child(child, T);
    assert_eq!(
        out.code(),
        137,
        "run must exit 128+9 when init dies of SIGKILL:\n{out}"
    );
}

fn wait_child(child: std::process::Child, t: Duration) -> cmd::Out {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = rx
        .recv_timeout(t)
        .unwrap_or_else(|_| panic!("process {pid} did not exit in {t:?}"))
        .expect("wait");
    cmd::Out {
        cmdline: format!("pid {pid}"),
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn delete_force_kills_a_running_container() {
    let env = TestEnv::new("delf");
    let id = env.id("c");
    let b = env.bundle(&id, COUNTER);
    let pid = env.start_running(&b);
    assert!(
        !cgroup_dirs(&b.cgroups_path).is_empty(),
        "container has cgroups while running"
    );
    env.ferry(&["delete", "--force", &id]).ok();
    assert!(
        wait_until(T, || !process_alive(pid)),
        "init {pid} survived delete --force"
    );
    env.ferry(&["state", &id])
        .code_is(1)
        .stderr_has("container does not exist");
    assert!(
        wait_until(T, || cgroup_dirs(&b.cgroups_path).is_empty()),
        "cgroups left behind: {:?}",
        cgroup_dirs(&b.cgroups_path)
    );
}

#[test]
fn state_of_unknown_container_fails_like_runc() {
    let env = TestEnv::new("unk");
    let o = env.ferry(&["state", "no-such-container"]).code_is(1);
    assert!(o.stderr.contains("container does not exist"), "{o}");
    assert!(o.stdout.trim().is_empty(), "nothing on stdout:\n{o}");
    env.ferry(&["delete", "no-such-container"]).code_is(1);
    env.ferry(&["kill", "no-such-container"]).code_is(1);
}

#[test]
fn start_of_running_container_fails_like_runc() {
    let env = TestEnv::new("start2");
    let id = env.id("c");
    let b = env.bundle(&id, COUNTER);
    env.start_running(&b);
    env.ferry(&["start", &id])
        .code_is(1)
        .stderr_has("cannot start an already running container");
    assert_eq!(
        env.status(&id),
        "running",
        "a failed start must not harm it"
    );
}

#[test]
fn delete_of_running_container_without_force_fails_like_runc() {
    let env = TestEnv::new("del");
    let id = env.id("c");
    let b = env.bundle(&id, COUNTER);
    let pid = env.start_running(&b);
    env.ferry(&["delete", &id]).code_is(1).stderr_has(&format!(
        "cannot delete container {id} that is not stopped: running"
    ));
    assert_eq!(env.status(&id), "running");
    assert!(process_alive(pid));
    let before = b.counter("/count").unwrap_or(0);
    assert!(
        wait_until(T, || b.counter("/count").unwrap_or(0) > before),
        "still counting"
    );
}

#[test]
fn create_with_an_existing_id_fails() {
    let env = TestEnv::new("dup");
    let id = env.id("c");
    let b = env.bundle(&id, COUNTER);
    env.create(&b, &[]).ok();
    let o = env.create(&b, &[]).failed();
    assert!(
        o.stderr.contains("already exists") || o.stderr.contains("exists"),
        "names the conflict:\n{o}"
    );
    assert_eq!(
        env.status(&id),
        "created",
        "the first container is untouched"
    );
    env.ferry(&["delete", &id]).ok(); // a created container deletes without --force
    env.ferry(&["state", &id]).code_is(1);
}

#[test]
fn run_with_missing_bundle_fails_cleanly() {
    let env = TestEnv::new("nobundle");
    let id = env.id("c");
    let missing = env.dir.join("nope");
    let o = env
        .ferry(&["run", "-d", "--bundle", missing.to_str().unwrap(), &id])
        .failed();
    assert!(!o.stderr.trim().is_empty(), "an error message:\n{o}");
    env.ferry(&["state", &id])
        .code_is(1)
        .stderr_has("container does not exist");
}

#[test]
fn preserve_fds_hands_extra_descriptors_to_the_container() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new("pfds");
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", "cat <&3"]);
    let path = env.dir.join("fd3.txt");
    fs::write(&path, "preserved-content\n").unwrap();
    let file = fs::File::open(&path).unwrap();
    let raw = file.as_raw_fd();
    let mut c = env.command();
    c.args([
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        b.path.to_str().unwrap(),
        &id,
    ]);
    // SAFETY: the closure runs in the forked child before exec and calls only dup2 and fcntl,
    // which are async-signal-safe; `raw` stays open in the parent until the child has exec'd.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd::run(&mut c, T).code_is(0);
    assert_eq!(
        o.stdout, "preserved-content\n",
        "fd 3 reached the container:\n{o}"
    );
    drop(file);
}

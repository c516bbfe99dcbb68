//! podman (Debian's 4.3) drives ferry with `--runtime`: run -d, exec, stop, rm of a `--rootfs`
//! container, through conmon, exactly as it drives runc.
//!
//! podman's state lives in a private `--root`/`--runroot`/`--tmpdir` under the test's temp dir,
//! so the host's podman state is never touched; the container gets `--network none` (no host
//! networking changes) and a unique `--cgroup-parent` that teardown removes. This machine needs
//! `--cgroup-manager=cgroupfs --events-backend=file` and explicit ulimits (no CAP_SYS_RESOURCE).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_integration::cleanup::{cgroup_dirs, PidFd};
use ferry_integration::cmd::{self, wait_until, Out};
use ferry_integration::rootfs::copy_rootfs;
use ferry_integration::TestEnv;

const T: Duration = Duration::from_secs(20);

struct Podman<'a> {
    env: &'a TestEnv,
    state: PathBuf,
    /// Whether /run/containers existed before (podman creates its network runtime dir there).
    had_run_containers: bool,
    names: Vec<String>,
}

impl<'a> Podman<'a> {
    fn new(env: &'a TestEnv) -> Self {
        Podman {
            env,
            state: env.dir.join("podman"),
            had_run_containers: Path::new("/run/containers").exists(),
            names: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let s = &self.state;
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(s.join("root"))
            .arg("--runroot")
            .arg(s.join("runroot"))
            .arg("--tmpdir")
            .arg(s.join("tmp"))
            .arg("--volumepath")
            .arg(s.join("volumes"))
            .arg("--network-config-dir")
            .arg(s.join("networks"))
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--runtime",
            ])
            .arg(&self.env.bin);
        c
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Out {
        cmd::run(self.command().args(args), Duration::from_secs(90))
    }

    /// conmon's pid for a container, from the pid file podman keeps in its runroot.
    fn conmon_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let dir = self.state.join("runroot/overlay-containers");
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for f in ["userdata/conmon.pid", "userdata/pidfile"] {
                if let Ok(s) = std::fs::read_to_string(e.path().join(f)) {
                    if let Ok(p) = s.trim().parse() {
                        pids.push(p);
                    }
                }
            }
        }
        pids
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let pids: Vec<PidFd> = self
            .conmon_pids()
            .into_iter()
            .filter_map(PidFd::open)
            .collect();
        for n in &self.names {
            let _ = cmd::run_quiet(self.command().args(["rm", "-f", "-t", "0", n]), T);
            // If podman lost track, remove it from the runtime directly (podman's runtime root
            // is the runtime's default one).
            let _ = cmd::run_quiet(
                Command::new(&self.env.bin).args(["delete", "--force", n]),
                T,
            );
        }
        for p in &pids {
            p.signal(libc::SIGKILL);
        }
        if !self.had_run_containers {
            let _ = std::fs::remove_dir_all("/run/containers");
        }
    }
}

#[test]
fn podman_runs_execs_stops_and_removes_a_rootfs_container_with_ferry() {
    let env = TestEnv::new("podman");
    let rootfs = env.dir.join("rootfs");
    copy_rootfs(&rootfs);
    let mut pm = Podman::new(&env);
    let name = env.id("p");
    let cgroup_parent = format!("/ferry-it-{name}");
    env.track_cgroup(&cgroup_parent);
    pm.names.push(name.clone());

    let o = pm
        .run(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--cgroup-parent",
            &cgroup_parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "counter",
            "/count",
            "100",
        ])
        .ok();
    let cid = o.stdout.trim().to_string();
    assert_eq!(cid.len(), 64, "podman run -d prints the container id:\n{o}");
    // podman calls its runtime without --root: the container is in ferry's default root.
    let st = cmd::run(Command::new(&env.bin).args(["state", &cid]), T)
        .ok()
        .json();
    assert_eq!(
        st["status"], "running",
        "ferry sees podman's container: {st}"
    );
    if let Some(pid) = st["pid"].as_i64() {
        env.track_pid(pid as i32);
    }
    assert!(
        wait_until(T, || std::fs::read_to_string(rootfs.join("count"))
            .is_ok_and(|s| { s.trim().parse::<u64>().unwrap_or(0) >= 3 })),
        "the counter runs in the rootfs"
    );
    assert!(
        !cgroup_dirs(&cgroup_parent).is_empty(),
        "container placed under --cgroup-parent"
    );

    let o = pm
        .run(&["inspect", &name, "--format", "{{.State.Status}}"])
        .ok();
    assert_eq!(o.stdout.trim(), "running", "{o}");

    let o = pm
        .run(&["exec", "-e", "FROM_PODMAN=1", &name, "probe", "4", "hello"])
        .code_is(4);
    assert!(o.stdout.contains("arg[2]=hello\n"), "{o}");
    assert!(
        o.stdout.contains("env=FROM_PODMAN=1\n"),
        "exec's --env reached the process:\n{o}"
    );
    let host = format!("hostname={}\n", &cid[..12]);
    assert!(
        o.stdout.contains(&host),
        "podman's config.json hostname applied:\n{o}"
    );

    let o = pm.run(&["stop", "-t", "10", &name]).ok();
    assert!(
        !o.stderr.contains("resorting to SIGKILL"),
        "SIGTERM reached the init:\n{o}"
    );
    let o = pm
        .run(&[
            "inspect",
            &name,
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
        ])
        .ok();
    assert_eq!(o.stdout.trim(), "exited 0", "{o}");
    let o = pm.run(&["logs", &name]).ok();
    assert!(
        o.stdout.contains("count 1\n"),
        "conmon captured stdout:\n{o}"
    );
    assert!(o.stdout.contains("exiting on signal 15"), "{o}");

    pm.run(&["rm", &name]).ok();
    let o = pm.run(&["ps", "-a", "-q"]).ok();
    assert!(
        o.stdout.trim().is_empty(),
        "no container left in podman:\n{o}"
    );
    cmd::run(Command::new(&env.bin).args(["state", &cid]), T)
        .code_is(1)
        .stderr_has("container does not exist");
}

//! podman (Debian's 4.3) drives ferry with `--runtime`: run -d, exec, stop, rm of a `--rootfs`
//! container, through conmon, exactly as it drives runc; and `podman container checkpoint` /
//! `restore` (also `--leave-running`, `--export`/`--import`) of a counter container.
//!
//! Before checkpoint and restore, podman asks `criu` for its version through go-criu
//! (`criu swrk FD`, a CRIU RPC VERSION request): the C/R tests put a `criu` symlink to ferry
//! first in podman's PATH, so ferry's own `criu swrk` answers and no criu binary is needed.
//!
//! podman's state lives in a private `--root`/`--runroot`/`--tmpdir` under the test's temp dir,
//! so the host's podman state is never touched; the container gets `--network none` (no host
//! networking changes) and a unique `--cgroup-parent` that teardown removes. This machine needs
//! `--cgroup-manager=cgroupfs --events-backend=file` and explicit ulimits (no CAP_SYS_RESOURCE).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_integration::cleanup::{cgroup_dirs, staging_left, PidFd};
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
    /// A directory put first in podman's PATH (where the `criu` symlink lives).
    path_first: Option<PathBuf>,
}

impl<'a> Podman<'a> {
    fn new(env: &'a TestEnv) -> Self {
        Podman {
            env,
            state: env.dir.join("podman"),
            had_run_containers: Path::new("/run/containers").exists(),
            names: Vec::new(),
            path_first: None,
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
        if let Some(dir) = &self.path_first {
            let mut path = OsString::from(dir);
            path.push(":");
            path.push(std::env::var_os("PATH").unwrap_or_default());
            c.env("PATH", path);
        }
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
    let rootfs = rootfs_copy(&env);
    let mut pm = Podman::new(&env);
    // podman calls its runtime without --root: run_counter finds (and tracks) the container
    // in ferry's default root.
    let (name, cid) = pm.run_counter(&rootfs, "p", &[]);
    let cgroup_parent = format!("/ferry-it-{name}");
    wait_count(&rootfs, 3);
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
    // podman's default seccomp profile binds exec'd processes as it binds the init.
    let o = pm
        .run(&["exec", &name, "grep", "^Seccomp:", "/proc/self/status"])
        .ok();
    assert_eq!(
        o.stdout.trim(),
        "Seccomp:\t2",
        "exec'd process filter:\n{o}"
    );

    pm.stop_cleanly(&name);
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
    pm.assert_gone_from_ferry(&cid);
}

// ---- checkpoint/restore ----

/// ferry's restore does not install seccomp filters yet (it refuses them by name), and podman
/// gives every container its default seccomp profile: the C/R tests run without one.
const UNCONFINED: &[&str] = &["--security-opt", "seccomp=unconfined"];

/// A private copy of the test rootfs (podman's --rootfs writes into it).
fn rootfs_copy(env: &TestEnv) -> PathBuf {
    let rootfs = env.dir.join("rootfs");
    copy_rootfs(&rootfs);
    rootfs
}

/// A directory holding a `criu` symlink to `target`, for the front of podman's PATH.
fn criu_dir(env: &TestEnv, tag: &str, target: &Path) -> PathBuf {
    let dir = env.dir.join(format!("criu-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(target, dir.join("criu")).unwrap();
    dir
}

impl Podman<'_> {
    /// `podman run -d [extra]` of the counter (`/count` in `rootfs`, 100 ms tick, "count N"
    /// lines on stdout, which conmon logs); returns (name, container id).
    fn run_counter(&mut self, rootfs: &Path, tag: &str, extra: &[&str]) -> (String, String) {
        self.run_counter_from(tag, extra, &["--rootfs", rootfs.to_str().unwrap()])
    }

    /// `podman run -d [extra] SOURCE counter /count 100` (SOURCE: `--rootfs DIR` or an image)
    /// under a new name and cgroup parent, both removed at teardown; returns (name, id).
    fn run_counter_from(&mut self, tag: &str, extra: &[&str], source: &[&str]) -> (String, String) {
        let name = self.env.id(tag);
        let cgroup_parent = format!("/ferry-it-{name}");
        self.env.track_cgroup(&cgroup_parent);
        self.names.push(name.clone());
        let mut args = vec![
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
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(source);
        args.extend(["counter", "/count", "100"]);
        let o = self.run(&args).ok();
        let cid = o.stdout.trim().to_string();
        assert_eq!(cid.len(), 64, "podman run -d prints the container id:\n{o}");
        self.track_runtime_pid(&cid);
        (name, cid)
    }

    /// `podman stop` ends the counter with SIGTERM, not SIGKILL, and it exits 0.
    #[track_caller]
    fn stop_cleanly(&self, name: &str) {
        let o = self.run(&["stop", "-t", "10", name]).ok();
        assert!(
            !o.stderr.contains("resorting to SIGKILL"),
            "SIGTERM reached the init:\n{o}"
        );
        let o = self
            .run(&[
                "inspect",
                name,
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
            ])
            .ok();
        assert_eq!(o.stdout.trim(), "exited 0", "the init ends cleanly: {o}");
    }

    /// ferry (its default root) no longer knows container `cid`.
    #[track_caller]
    fn assert_gone_from_ferry(&self, cid: &str) {
        cmd::run(Command::new(&self.env.bin).args(["state", cid]), T)
            .code_is(1)
            .stderr_has("container does not exist");
    }

    /// Tracks the init pid ferry reports for `cid` (podman's containers are in ferry's
    /// default root); returns it.
    fn track_runtime_pid(&self, cid: &str) -> i64 {
        let st = cmd::run(Command::new(&self.env.bin).args(["state", cid]), T)
            .ok()
            .json();
        assert_eq!(st["status"], "running", "ferry state of {cid}: {st}");
        let pid = st["pid"].as_i64().unwrap_or(0);
        if pid > 0 {
            self.env.track_pid(pid as i32);
        }
        pid
    }

    fn status(&self, name: &str) -> String {
        self.run(&["inspect", name, "--format", "{{.State.Status}}"])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// Runs podman under `strace -f -e trace=execve`, the trace written to `trace`.
    #[track_caller]
    fn run_traced(&self, args: &[&str], trace: &Path) -> Out {
        let pm = self.command();
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-s", "512", "-e", "trace=execve", "-o"])
            .arg(trace)
            .arg(pm.get_program())
            .args(pm.get_args())
            .args(args);
        for (k, v) in pm.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        cmd::run(&mut c, Duration::from_secs(90))
    }
}

fn count(rootfs: &Path) -> Option<u64> {
    std::fs::read_to_string(rootfs.join("count"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[track_caller]
fn wait_count(rootfs: &Path, min: u64) -> u64 {
    let mut last = 0;
    assert!(
        wait_until(T, || {
            last = count(rootfs).unwrap_or(0);
            last >= min
        }),
        "the counter did not reach {min} (last {last})"
    );
    last
}

/// The count once it stopped changing (the container was checkpointed and is gone); then
/// removes /count, so the first value that reappears is written by the restored process.
#[track_caller]
fn settle_and_clear(rootfs: &Path) -> u64 {
    let first = count(rootfs).expect("a count");
    std::thread::sleep(Duration::from_millis(400));
    let again = count(rootfs).expect("a count");
    assert_eq!(
        first, again,
        "the counter still counts after the checkpoint"
    );
    std::fs::remove_file(rootfs.join("count")).unwrap();
    again
}

/// After a restore: the first value the counter writes is `stopped + 1` (a counter started
/// over would write 1), give or take a tick missed by the 5 ms polling.
#[track_caller]
fn assert_counts_on(rootfs: &Path, stopped: u64) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(v) = count(rootfs) {
            assert!(
                v > stopped && v <= stopped + 3,
                "first count {v} after a checkpoint at {stopped}: not carried on"
            );
            return v;
        }
        assert!(start.elapsed() < T, "no count after the restore");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The "count N" values of `podman logs`, in order.
fn logged_counts(pm: &Podman, name: &str) -> Vec<u64> {
    pm.run(&["logs", name])
        .ok()
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

#[test]
fn podman_checkpoints_and_restores_a_counter_container_twice_with_ferry_as_its_criu() {
    let env = TestEnv::new("pmcr");
    let rootfs = rootfs_copy(&env);
    let mut pm = Podman::new(&env);
    let (name, cid) = pm.run_counter(&rootfs, "c", UNCONFINED);
    wait_count(&rootfs, 3);

    // podman's CRIU pre-check runs whatever `criu` its PATH gives: one that cannot answer
    // makes it refuse before the runtime is called.
    pm.path_first = Some(criu_dir(&env, "false", Path::new("/bin/false")));
    let o = pm.run(&["container", "checkpoint", &name]).failed();
    assert!(o.stderr.contains("requires at least CRIU"), "{o}");
    assert_eq!(pm.status(&name), "running");

    // With ferry as `criu`, its `criu swrk` answers the VERSION request.
    let criu = criu_dir(&env, "ferry", &env.bin);
    pm.path_first = Some(criu.clone());
    let trace = env.dir.join("checkpoint.strace");
    pm.run_traced(&["container", "checkpoint", &name], &trace)
        .ok();
    let trace = std::fs::read_to_string(&trace).unwrap();
    let swrk = format!(
        "execve(\"{}\", [\"criu\", \"swrk\", \"",
        criu.join("criu").display()
    );
    assert!(
        trace
            .lines()
            .any(|l| l.contains(&swrk) && !l.contains("= -1")),
        "podman ran ferry as `criu swrk`:\n{trace}"
    );
    assert!(
        !trace.contains("execve(\"/usr/sbin/criu\""),
        "Debian's criu was not asked:\n{trace}"
    );
    let bin = env.bin.display();
    assert!(
        trace.contains(&format!(
            "execve(\"{bin}\", [\"{bin}\", \"checkpoint\", \"--image-path\""
        )),
        "podman ran `ferry checkpoint`:\n{trace}"
    );
    assert_eq!(pm.status(&name), "exited");
    pm.assert_gone_from_ferry(&cid);
    let mut stopped = settle_and_clear(&rootfs);

    for round in 1..=2 {
        pm.run(&["container", "restore", &name]).ok();
        assert_eq!(pm.status(&name), "running", "round {round}");
        pm.track_runtime_pid(&cid);
        let first = assert_counts_on(&rootfs, stopped);
        // conmon's log gets the restored process's output: the same stdout, reconnected.
        assert!(
            wait_until(T, || logged_counts(&pm, &name).contains(&first)),
            "round {round}: count {first} in podman logs"
        );
        assert_log_carries_on(&logged_counts(&pm, &name), stopped);
        wait_count(&rootfs, first + 3);
        if round == 2 {
            break;
        }
        pm.run(&["container", "checkpoint", &name]).ok();
        assert_eq!(pm.status(&name), "exited", "round {round}");
        stopped = settle_and_clear(&rootfs);
    }

    pm.stop_cleanly(&name);
    pm.run(&["rm", &name]).ok();
}

/// Waits until podman's log of `name` holds a count of at least `min`; returns the counts.
#[track_caller]
fn wait_logged(pm: &Podman, name: &str, min: u64) -> Vec<u64> {
    let mut counts = Vec::new();
    assert!(
        wait_until(T, || {
            counts = logged_counts(pm, name);
            counts.last().is_some_and(|c| *c >= min)
        }),
        "podman logs {name}: no count {min} (last {:?})",
        counts.last()
    );
    counts
}

/// The log carries on across a checkpoint at `stopped`: `stopped + 1` follows `stopped`, and
/// the counter started from 1 only once.
#[track_caller]
fn assert_log_carries_on(counts: &[u64], stopped: u64) {
    let at = counts.iter().position(|c| *c == stopped);
    assert!(
        at.is_some_and(|at| counts.get(at + 1) == Some(&(stopped + 1))),
        "count {} follows count {stopped}: {counts:?}",
        stopped + 1
    );
    assert_eq!(
        counts.iter().filter(|c| **c == 1).count(),
        1,
        "counted from 1 once: {counts:?}"
    );
}

/// `podman import` of the test rootfs as an image and `podman run -d` of the counter from it
/// (`restore --import` recreates a container from its image: podman 4.3 cannot import a
/// `--rootfs` container, "repository name must have at least one component"); returns
/// (name, id, image).
fn image_counter(pm: &mut Podman, rootfs: &Path, tag: &str) -> (String, String, &'static str) {
    let env = pm.env;
    let tarball = env.dir.join("rootfs.tar");
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
        T,
    )
    .ok();
    let image = "localhost/ferry-it/busybox:latest";
    pm.run(&["import", tarball.to_str().unwrap(), image]).ok();
    let (name, cid) = pm.run_counter_from(tag, UNCONFINED, &[image]);
    (name, cid, image)
}

#[test]
fn podman_checkpoint_leave_running_then_export_and_import_with_ferry() {
    let env = TestEnv::new("pmcx");
    let rootfs = rootfs_copy(&env);
    let mut pm = Podman::new(&env);
    pm.path_first = Some(criu_dir(&env, "ferry", &env.bin));
    let (name, cid, image) = image_counter(&mut pm, &rootfs, "x");
    wait_logged(&pm, &name, 3);

    // --leave-running: the images are written and the container counts on; podman reads
    // the engine's statistics from ferry's stats-dump.
    let o = pm
        .run(&[
            "container",
            "checkpoint",
            "--leave-running",
            "--print-stats",
            &name,
        ])
        .ok();
    let stats = o.json();
    let criu = &stats["container_statistics"][0]["criu_statistics"];
    assert!(
        criu["pages_written"].as_u64().unwrap_or(0) > 0 && criu["frozen_time"].as_u64().is_some(),
        "--print-stats shows ferry's dump statistics: {stats}"
    );
    assert_eq!(pm.status(&name), "running");
    let after = *logged_counts(&pm, &name).last().unwrap();
    wait_logged(&pm, &name, after + 3);
    let st = cmd::run(Command::new(&env.bin).args(["state", &cid]), T)
        .ok()
        .json();
    assert_eq!(st["status"], "running", "{st}");
    let images = pm
        .state
        .join("root/overlay-containers")
        .join(&cid)
        .join("userdata/checkpoint");
    cmd::run(
        Command::new(&env.bin)
            .args(["image", "verify"])
            .arg(&images),
        T,
    )
    .ok();

    // --export: one archive (images, config, log, rootfs changes); the container stops.
    let archive = env.dir.join("export.tar.zst");
    pm.run(&[
        "container",
        "checkpoint",
        "--export",
        archive.to_str().unwrap(),
        &name,
    ])
    .ok();
    assert_eq!(pm.status(&name), "exited");
    let stopped = *logged_counts(&pm, &name).last().unwrap();
    pm.run(&["rm", &name]).ok();
    assert!(
        pm.run(&["ps", "-a", "-q"]).ok().stdout.trim().is_empty(),
        "the container is gone before the import"
    );

    // --import: the container comes back from the archive (same id) and counts on in the
    // log it took along.
    let o = pm
        .run(&[
            "container",
            "restore",
            "--import",
            archive.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(o.stdout.trim(), cid, "restore --import prints the id:\n{o}");
    assert_eq!(pm.status(&name), "running");
    pm.track_runtime_pid(&cid);
    let counts = wait_logged(&pm, &name, stopped + 3);
    assert_log_carries_on(&counts, stopped);
    pm.run(&["stop", "-t", "10", &name]).ok();

    pm.run(&["rm", &name]).ok();
    pm.run(&["rmi", image]).ok();
}

#[test]
fn podman_restores_a_container_with_its_default_seccomp_profile() {
    let env = TestEnv::new("pmsc");
    let rootfs = rootfs_copy(&env);
    let mut pm = Podman::new(&env);
    pm.path_first = Some(criu_dir(&env, "ferry", &env.bin));
    let (name, cid) = pm.run_counter(&rootfs, "s", &[]);
    wait_count(&rootfs, 3);
    pm.run(&["container", "checkpoint", &name]).ok();
    let stopped = settle_and_clear(&rootfs);
    pm.run(&["container", "restore", &name]).ok();
    pm.track_runtime_pid(&cid);
    assert_counts_on(&rootfs, stopped);
    pm.run(&["stop", "-t", "10", &name]).ok();
}

#[test]
fn podman_imports_a_checkpoint_under_a_new_name() {
    let env = TestEnv::new("pmcn");
    let rootfs = rootfs_copy(&env);
    let mut pm = Podman::new(&env);
    pm.path_first = Some(criu_dir(&env, "ferry", &env.bin));
    let (name, cid, image) = image_counter(&mut pm, &rootfs, "n");
    wait_logged(&pm, &name, 3);
    let archive = env.dir.join("export.tar.zst");
    let a = archive.to_str().unwrap();
    pm.run(&["container", "checkpoint", "--export", a, &name])
        .ok();
    let stopped = *logged_counts(&pm, &name).last().unwrap();
    let other = env.id("m");
    pm.names.push(other.clone());
    let o = pm
        .run(&["container", "restore", "--import", a, "--name", &other])
        .ok();
    let other_cid = o.stdout.trim().to_string();
    assert!(other_cid.len() == 64 && other_cid != cid, "a new id:\n{o}");
    pm.track_runtime_pid(&other_cid);
    assert_log_carries_on(&wait_logged(&pm, &other, stopped + 3), stopped);
    pm.run(&["stop", "-t", "10", &other]).ok();
    pm.run(&["rm", &name, &other]).ok();
    pm.run(&["rmi", image]).ok();
}

/// `podman exec NAME ARGS...` that must succeed; its stdout with runs of blanks made one space.
#[track_caller]
fn exec_words(pm: &Podman, name: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", name];
    all.extend_from_slice(args);
    let o = pm.run(&all).ok();
    o.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// podman `--uidmap`/`--gidmap` (its own user namespace, 0 -> 100000): podman binds
/// /etc/hostname, /etc/hosts, /run/.containerenv and /dev/shm from its 0700 per-container
/// directories, which the container's root (host uid 100000) cannot enter; ferry stages them
/// (bind_stage.rs). The container runs, `podman exec` sees the mapping and podman's files, and
/// `podman container checkpoint` / `restore` bring it back twice with the mapping intact.
#[test]
fn podman_runs_execs_and_checkpoints_a_uidmap_container_with_ferry() {
    let env = TestEnv::new("pmuid");
    let rootfs = rootfs_copy(&env);
    cmd::run(
        Command::new("chown")
            .args(["-hR", "100000:100000"])
            .arg(&rootfs),
        T,
    )
    .ok();
    let mut pm = Podman::new(&env);
    let mut extra = vec!["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    extra.extend_from_slice(UNCONFINED);
    let (name, cid) = pm.run_counter(&rootfs, "u", &extra);
    wait_count(&rootfs, 3);
    let map = "0 100000 65536";
    assert_eq!(exec_words(&pm, &name, &["cat", "/proc/self/uid_map"]), map);
    assert_eq!(exec_words(&pm, &name, &["cat", "/proc/self/gid_map"]), map);
    let id = exec_words(&pm, &name, &["id"]);
    assert!(id.starts_with("uid=0(root) gid=0(root)"), "id: {id}");
    // podman's files, bound from its 0700 directories.
    assert_eq!(
        exec_words(&pm, &name, &["cat", "/etc/hostname"]),
        &cid[..12]
    );
    let hosts = exec_words(&pm, &name, &["cat", "/etc/hosts"]);
    assert!(hosts.contains("localhost"), "/etc/hosts: {hosts}");
    // Empty for an unprivileged container, but there.
    pm.run(&["exec", &name, "test", "-f", "/run/.containerenv"])
        .ok();
    assert!(staging_left(&cid).is_empty(), "{:?}", staging_left(&cid));

    pm.path_first = Some(criu_dir(&env, "ferry", &env.bin));
    for round in 1..=2 {
        pm.run(&["container", "checkpoint", &name]).ok();
        assert_eq!(pm.status(&name), "exited", "round {round}");
        let stopped = settle_and_clear(&rootfs);
        pm.run(&["container", "restore", &name]).ok();
        assert_eq!(pm.status(&name), "running", "round {round}");
        pm.track_runtime_pid(&cid);
        let first = assert_counts_on(&rootfs, stopped);
        wait_count(&rootfs, first + 2);
        for m in ["uid_map", "gid_map"] {
            assert_eq!(
                exec_words(&pm, &name, &["cat", &format!("/proc/1/{m}")]),
                map,
                "round {round}: the restored init's {m}"
            );
        }
        assert_eq!(
            exec_words(&pm, &name, &["cat", "/etc/hostname"]),
            &cid[..12],
            "round {round}"
        );
        assert!(staging_left(&cid).is_empty(), "{:?}", staging_left(&cid));
    }

    pm.stop_cleanly(&name);
    pm.run(&["rm", &name]).ok();
    pm.assert_gone_from_ferry(&cid);
    assert!(staging_left(&cid).is_empty(), "{:?}", staging_left(&cid));
}

//! One test's world: a private `--root` for the runtime, a temp directory for bundles, and the
//! guard that tears everything down when the test ends — also when it panics.
//!
//! Teardown order matters: containers are deleted through the runtime first (`delete --force`,
//! which is what a caller would do), then any process the test ever learned about is killed
//! through its pidfd, the cgroups named by the bundles are removed (thawing and killing what is
//! left), mounts below the temp directory are detached, and only then is the directory removed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::bundle::Bundle;
use crate::cleanup::{self, PidFd};
use crate::cmd::{self, Out, DEFAULT_TIMEOUT};

#[derive(Default)]
struct Tracked {
    ids: Vec<String>,
    cgroups: Vec<String>,
    procs: Vec<PidFd>,
}

/// A test's private runtime root and scratch space; cleans up on drop.
pub struct TestEnv {
    /// Short name of the test, used in container ids.
    pub name: String,
    /// The runtime binary under test.
    pub bin: PathBuf,
    /// Scratch directory (removed on drop).
    pub dir: PathBuf,
    /// The runtime's `--root`.
    pub root: PathBuf,
    tracked: Mutex<Tracked>,
    tmp: Option<tempfile::TempDir>,
}

impl TestEnv {
    /// A fresh environment; panics (fails the test) unless running as root.
    pub fn new(name: &str) -> TestEnv {
        crate::require_root();
        let tmp = tempfile::Builder::new()
            .prefix("fit-")
            .tempdir_in("/tmp")
            .expect("create temp dir under /tmp");
        let dir = tmp.path().to_path_buf();
        let root = dir.join("r");
        fs::create_dir_all(&root).unwrap();
        TestEnv {
            name: name.to_string(),
            bin: crate::ferry_bin(),
            dir,
            root,
            tracked: Mutex::new(Tracked::default()),
            tmp: Some(tmp),
        }
    }

    /// A container id unique to this test process: `<name>-<pid>-<tag>`.
    pub fn id(&self, tag: &str) -> String {
        format!("{}-{}-{}", self.name, std::process::id(), tag)
    }

    /// Creates a bundle for container `id` running `args`, and tracks it for cleanup.
    pub fn bundle(&self, id: &str, args: &[&str]) -> Bundle {
        let b = Bundle::create(&self.dir.join(id), id, args);
        let mut t = self.tracked.lock().unwrap();
        t.ids.push(id.to_string());
        t.cgroups.push(b.cgroups_path.clone());
        b
    }

    /// Tracks a container id created some other way (deleted with --force at teardown).
    pub fn track_id(&self, id: &str) {
        self.tracked.lock().unwrap().ids.push(id.to_string());
    }

    /// Tracks a cgroup path to remove at teardown.
    pub fn track_cgroup(&self, path: &str) {
        self.tracked.lock().unwrap().cgroups.push(path.to_string());
    }

    /// Tracks a process to SIGKILL at teardown (through a pidfd, so PID reuse is harmless).
    pub fn track_pid(&self, pid: i32) {
        if let Some(fd) = PidFd::open(pid) {
            self.tracked.lock().unwrap().procs.push(fd);
        }
    }

    /// A `Command` for the runtime with this test's `--root`, run from the test's temp dir (so
    /// a relative default such as checkpoint's `./checkpoint` never lands in the source tree).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).current_dir(&self.dir);
        c
    }

    /// Runs the runtime with `args`, capturing stdout/stderr, stdin from /dev/null.
    #[track_caller]
    pub fn ferry(&self, args: &[&str]) -> Out {
        cmd::run(self.command().args(args), DEFAULT_TIMEOUT)
    }

    /// Runs the runtime with `args` in directory `cwd`.
    #[track_caller]
    pub fn ferry_in(&self, cwd: &Path, args: &[&str]) -> Out {
        cmd::run(self.command().current_dir(cwd).args(args), DEFAULT_TIMEOUT)
    }

    /// Runs the runtime without the rig's `--root` (for spec, features, --help, parse checks).
    #[track_caller]
    pub fn ferry_bare(&self, args: &[&str]) -> Out {
        cmd::run(
            Command::new(&self.bin).current_dir(&self.dir).args(args),
            DEFAULT_TIMEOUT,
        )
    }

    /// Runs the runtime with stdout/stderr appended to `out`/`err` (for commands whose container
    /// inherits them: create, run -d, exec -d). The returned output is the files' content.
    #[track_caller]
    pub fn ferry_to_files(&self, args: &[&str], out: &Path, err: &Path) -> Out {
        let open = |p: &Path| {
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(open(out))
            .stderr(open(err));
        let mut o = cmd::run_with_stdio(&mut c, DEFAULT_TIMEOUT);
        o.stdout = fs::read_to_string(out).unwrap_or_default();
        o.stderr = fs::read_to_string(err).unwrap_or_default();
        o
    }

    /// `create --bundle B ID` with the container's stdio going to the bundle's log files.
    #[track_caller]
    pub fn create(&self, b: &Bundle, extra: &[&str]) -> Out {
        let bundle = b.path.to_str().unwrap();
        let mut args = vec!["create", "--bundle", bundle];
        args.extend_from_slice(extra);
        args.push(&b.id);
        let o = self.ferry_to_files(&args, &b.stdout_path(), &b.stderr_path());
        self.track_state_pid(&b.id);
        o
    }

    /// `run -d --bundle B ID` with the container's stdio going to the bundle's log files.
    #[track_caller]
    pub fn run_detached(&self, b: &Bundle) -> Out {
        let bundle = b.path.to_str().unwrap();
        let o = self.ferry_to_files(
            &["run", "-d", "--bundle", bundle, &b.id],
            &b.stdout_path(),
            &b.stderr_path(),
        );
        self.track_state_pid(&b.id);
        o
    }

    /// Starts a long-running container (detached) and asserts it is running.
    #[track_caller]
    pub fn start_running(&self, b: &Bundle) -> i32 {
        self.run_detached(b).ok();
        let st = self.state(&b.id);
        assert_eq!(st["status"], "running", "state after run -d: {st}");
        st["pid"].as_i64().expect("state has a pid") as i32
    }

    fn track_state_pid(&self, id: &str) {
        let o = self.ferry(&["state", id]);
        if o.success() {
            if let Ok(v) = serde_json::from_str::<Value>(&o.stdout) {
                if let Some(pid) = v["pid"].as_i64().filter(|p| *p > 0) {
                    self.track_pid(pid as i32);
                }
            }
        }
    }

    /// `state ID` as JSON; panics if the command fails.
    #[track_caller]
    pub fn state(&self, id: &str) -> Value {
        self.ferry(&["state", id]).ok().json()
    }

    /// The `status` field of `state ID`.
    #[track_caller]
    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap_or("").to_string()
    }

    /// Waits until `state ID` reports `status`; panics with the last state otherwise.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) {
        let mut last = Value::Null;
        let ok = cmd::wait_until(timeout, || {
            last = self.state(id);
            last["status"] == status
        });
        assert!(
            ok,
            "container {id} did not reach {status:?} in {timeout:?}; last state: {last}"
        );
    }

    /// Container ids present in the runtime's root directory.
    fn ids_in_root(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn teardown(&mut self) {
        let tracked = std::mem::take(&mut *self.tracked.lock().unwrap());
        let mut ids = tracked.ids;
        for id in self.ids_in_root() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut procs = tracked.procs;
        for id in ids.iter().rev() {
            let mut c = self.command();
            c.args(["state", id]);
            if let Some(o) = cmd::run_quiet(&mut c, Duration::from_secs(10)) {
                let pid = serde_json::from_str::<Value>(&o.stdout)
                    .ok()
                    .and_then(|v| v["pid"].as_i64());
                if let Some(fd) = pid.filter(|p| *p > 0).and_then(|p| PidFd::open(p as i32)) {
                    procs.push(fd);
                }
            }
            let mut c = self.command();
            c.args(["delete", "--force", id]);
            let _ = cmd::run_quiet(&mut c, Duration::from_secs(20));
        }
        for p in &procs {
            p.signal(libc::SIGKILL);
        }
        for p in &procs {
            if !cmd::wait_until(Duration::from_secs(5), || !p.alive()) {
                eprintln!("teardown: process {} survived SIGKILL", p.pid);
            }
        }
        for cg in &tracked.cgroups {
            for d in cleanup::remove_cgroup(cg) {
                eprintln!("teardown: cgroup {} could not be removed", d.display());
            }
        }
        for m in cleanup::unmount_under(&self.dir) {
            eprintln!("teardown: mount {} could not be detached", m.display());
        }
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.path().to_path_buf();
            if let Err(e) = tmp.close() {
                eprintln!("teardown: removing {}: {e}", path.display());
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.teardown();
    }
}

//! containerd (Debian's 1.6) drives ferry through its runc shim v2 with `BinaryName` = ferry.
//!
//! The test starts its own containerd (config, root, state and socket under the test's temp dir,
//! the CRI plugin disabled), imports an OCI image it builds by hand from the busybox rootfs, and
//! `ctr run`s containers detached and attached. `ctr run --runc-binary` sets the shim's
//! `BinaryName` runtime option (what Kubernetes users put in the CRI runtime's options) and
//! `--runc-root` keeps the runtime state under the temp dir. Teardown deletes what it created,
//! kills its shims and containerd by PID, and removes the namespace's cgroups.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_integration::cleanup::{self, PidFd};
use ferry_integration::cmd::{self, wait_until, Out};
use ferry_integration::ociimage::build_image;
use ferry_integration::rootfs::rootfs;
use ferry_integration::TestEnv;

const T: Duration = Duration::from_secs(30);
const IMAGE: &str = "docker.io/ferry-it/busybox:latest";

struct Containerd<'a> {
    env: &'a TestEnv,
    child: Option<Child>,
    sock: PathBuf,
    runtime_root: PathBuf,
    ns: String,
    log: PathBuf,
    had_run_containerd: bool,
}

impl<'a> Containerd<'a> {
    fn start(env: &'a TestEnv) -> Self {
        let dir = env.dir.join("containerd");
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("c.sock");
        let cfg = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = sock.display(),
        );
        fs::write(dir.join("config.toml"), cfg).unwrap();
        let log = dir.join("containerd.log");
        let had_run_containerd = Path::new("/run/containerd").exists();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(dir.join("containerd.err")).unwrap())
            .spawn()
            .expect("start containerd");
        env.track_pid(child.id() as i32);
        let c = Containerd {
            env,
            child: Some(child),
            sock,
            runtime_root: dir.join("runtime-root"),
            ns: env.id("ns"),
            log,
            had_run_containerd,
        };
        let up = wait_until(T, || {
            c.sock.exists()
                && cmd::run_quiet(c.ctr_cmd().arg("version"), Duration::from_secs(5))
                    .is_some_and(|o| o.success())
        });
        assert!(up, "containerd did not come up: {}", c.logs());
        env.track_cgroup(&format!("/{}", c.ns));
        c
    }

    fn logs(&self) -> String {
        let err = self.log.with_file_name("containerd.err");
        let text = fs::read_to_string(&err).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.sock).arg("-n").arg(&self.ns);
        c
    }

    #[track_caller]
    fn ctr(&self, args: &[&str]) -> Out {
        cmd::run(self.ctr_cmd().args(args), Duration::from_secs(90))
    }

    /// `ctr run` arguments that make the runc shim call ferry.
    fn runtime_args(&self) -> Vec<String> {
        vec![
            "--runc-binary".into(),
            self.env.bin.to_string_lossy().into_owned(),
            "--runc-root".into(),
            self.runtime_root.to_string_lossy().into_owned(),
        ]
    }

    /// The runtime's --root for this namespace (the shim appends the namespace).
    fn ferry_root(&self) -> PathBuf {
        self.runtime_root.join(&self.ns)
    }

    /// PIDs of the shims serving this test's namespace.
    fn shim_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args
                    .windows(2)
                    .any(|w| w[0] == "-namespace" && w[1] == self.ns)
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        let q = |args: &[&str]| cmd::run_quiet(self.ctr_cmd().args(args), T);
        if let Some(o) = q(&["task", "ls", "-q"]) {
            for id in o.stdout.split_whitespace() {
                let _ = q(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = q(&["task", "delete", "-f", id]);
            }
        }
        if let Some(o) = q(&["container", "ls", "-q"]) {
            for id in o.stdout.split_whitespace() {
                let _ = q(&["container", "delete", id]);
            }
        }
        let _ = q(&["images", "rm", IMAGE]);
        let shims: Vec<PidFd> = self
            .shim_pids()
            .into_iter()
            .filter_map(PidFd::open)
            .collect();
        for s in &shims {
            s.signal(libc::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            if let Some(p) = PidFd::open(child.id() as i32) {
                p.signal(libc::SIGTERM);
                if !wait_until(Duration::from_secs(10), || {
                    matches!(child.try_wait(), Ok(Some(_)))
                }) {
                    p.signal(libc::SIGKILL);
                }
            }
            let _ = child.wait();
        }
        for m in cleanup::unmount_under(&self.env.dir) {
            eprintln!("containerd teardown: {} still mounted", m.display());
        }
        if !self.had_run_containerd {
            let _ = fs::remove_dir_all("/run/containerd");
        }
    }
}

fn ferry_state(c: &Containerd, id: &str) -> serde_json::Value {
    cmd::run(
        Command::new(&c.env.bin)
            .arg("--root")
            .arg(c.ferry_root())
            .args(["state", id]),
        T,
    )
    .ok()
    .json()
}

#[test]
fn containerd_runs_ferry_containers_from_an_imported_oci_image() {
    let env = TestEnv::new("ctrd");
    let c = Containerd::start(&env);
    let tarball = build_image(&env.dir, &rootfs(), IMAGE, &["sh"]);
    let o = c.ctr(&["images", "import", tarball.to_str().unwrap()]).ok();
    assert!(o.stdout.contains(IMAGE) || o.stderr.contains(IMAGE), "{o}");
    c.ctr(&["images", "ls", "-q"]).ok().stdout_has(IMAGE);
    let rt = c.runtime_args();
    let rt: Vec<&str> = rt.iter().map(String::as_str).collect();

    // Detached: a counter container, exec into it, stop it with SIGTERM.
    let id = env.id("d");
    let mut args = vec!["run", "-d"];
    args.extend(&rt);
    args.extend([IMAGE, id.as_str(), "counter", "/count", "100"]);
    c.ctr(&args).ok();
    let st = ferry_state(&c, &id);
    assert_eq!(
        st["status"], "running",
        "ferry holds containerd's container: {st}"
    );
    if let Some(pid) = st["pid"].as_i64() {
        env.track_pid(pid as i32);
    }
    let o = c.ctr(&["task", "ls"]).ok();
    assert!(
        o.stdout
            .lines()
            .any(|l| l.contains(&id) && l.contains("RUNNING")),
        "{o}"
    );
    assert!(
        wait_until(T, || {
            c.ctr(&["task", "exec", "--exec-id", "cat1", &id, "cat", "/count"])
                .stdout
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                >= 3
        }),
        "counter counts inside the containerd container"
    );
    let o = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "probe1",
            &id,
            "probe",
            "3",
            "via-ctr",
        ])
        .code_is(3);
    assert!(o.stdout.contains("arg[2]=via-ctr\n"), "{o}");
    c.ctr(&["task", "kill", &id]).ok(); // SIGTERM
    assert!(
        wait_until(T, || c
            .ctr(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.contains(&id) && l.contains("STOPPED"))),
        "task did not stop on SIGTERM: {}",
        c.ctr(&["task", "ls"])
    );
    c.ctr(&["task", "delete", &id]).ok();
    c.ctr(&["container", "delete", &id]).ok();
    cmd::run(
        Command::new(&env.bin)
            .arg("--root")
            .arg(c.ferry_root())
            .args(["state", &id]),
        T,
    )
    .code_is(1)
    .stderr_has("container does not exist");

    // Attached: output and exit code come back through the shim.
    let id2 = env.id("a");
    let mut args = vec!["run", "--rm"];
    args.extend(&rt);
    args.extend([IMAGE, id2.as_str(), "probe", "7", "attached"]);
    let o = c.ctr(&args).code_is(7);
    assert!(o.stdout.contains("arg[2]=attached\n"), "{o}");
    assert!(o.stdout.contains("pid=1\n"), "{o}");
    let o = c.ctr(&["container", "ls", "-q"]).ok();
    assert!(
        o.stdout.trim().is_empty(),
        "--rm removed the container:\n{o}"
    );
}

//! containerd (Debian's 1.6) drives ferry through its runc shim v2 with `BinaryName` = ferry.
//!
//! The test starts its own containerd (config, root, state and socket under the test's temp dir,
//! the CRI plugin disabled), imports an OCI image it builds by hand from the busybox rootfs, and
//! `ctr run`s containers detached and attached. `ctr run --runc-binary` sets the shim's
//! `BinaryName` runtime option (what Kubernetes users put in the CRI runtime's options) and
//! `--runc-root` keeps the runtime state under the temp dir. Teardown deletes what it created,
//! kills its shims and containerd by PID, and removes the namespace's cgroups.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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
        // containerd unpacks checkpoints for a restore into a temp dir under $XDG_RUNTIME_DIR
        // that it never removes: keep it (and the shims' temp files) under the test's dir.
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("XDG_RUNTIME_DIR", &tmp)
            .env("TMPDIR", &tmp)
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

    /// The runtime itself on this namespace's containers (`ferry --root ROOT args`).
    #[track_caller]
    fn ferry(&self, args: &[&str]) -> Out {
        cmd::run(
            Command::new(&self.env.bin)
                .arg("--root")
                .arg(self.ferry_root())
                .args(args),
            T,
        )
    }

    /// Builds the test image from the test rootfs and imports it; returns ctr's output.
    #[track_caller]
    fn import_image(&self) -> Out {
        let tarball = build_image(&self.env.dir, &rootfs(), IMAGE, &["sh"]);
        self.ctr(&["images", "import", tarball.to_str().unwrap()])
            .ok()
    }

    /// `ctr run OPTS --runc-binary ferry ... IMAGE ID ARGS`, unchecked.
    #[track_caller]
    fn run_image(&self, opts: &[&str], id: &str, args: &[&str]) -> Out {
        let rt = self.runtime_args();
        let mut all = vec!["run"];
        all.extend(opts);
        all.extend(rt.iter().map(String::as_str));
        all.extend([IMAGE, id]);
        all.extend(args);
        self.ctr(&all)
    }

    /// Asserts the runtime no longer knows container `id`.
    #[track_caller]
    fn assert_gone(&self, id: &str) {
        self.ferry(&["state", id])
            .code_is(1)
            .stderr_has("container does not exist");
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
        if let Some(o) = q(&["images", "ls", "-q"]) {
            for image in o.stdout.split_whitespace() {
                let _ = q(&["images", "rm", image]);
            }
        }
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
    c.ferry(&["state", id]).ok().json()
}

#[test]
fn containerd_runs_ferry_containers_from_an_imported_oci_image() {
    let env = TestEnv::new("ctrd");
    let c = Containerd::start(&env);
    let o = c.import_image();
    assert!(o.stdout.contains(IMAGE) || o.stderr.contains(IMAGE), "{o}");
    c.ctr(&["images", "ls", "-q"]).ok().stdout_has(IMAGE);

    // Detached: a counter container, exec into it, stop it with SIGTERM.
    let id = env.id("d");
    c.run_image(&["-d"], &id, &["counter", "/count", "100"])
        .ok();
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
    c.assert_gone(&id);

    // Attached: output and exit code come back through the shim.
    let id2 = env.id("a");
    let o = c
        .run_image(&["--rm"], &id2, &["probe", "7", "attached"])
        .code_is(7);
    assert!(o.stdout.contains("arg[2]=attached\n"), "{o}");
    assert!(o.stdout.contains("pid=1\n"), "{o}");
    let o = c.ctr(&["container", "ls", "-q"]).ok();
    assert!(
        o.stdout.trim().is_empty(),
        "--rm removed the container:\n{o}"
    );
}

// ---- checkpoint/restore ----

/// `ctr task attach ID` in the background: the task's "count N" lines as they come (the
/// shim's fifo keeps what was written while nobody was attached).
struct Attach {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Attach {
    fn start(c: &Containerd, id: &str) -> Attach {
        let mut child = c
            .ctr_cmd()
            .args(["task", "attach", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ctr task attach");
        c.env.track_pid(child.id() as i32);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap().push(l);
            }
        });
        Attach { child, lines }
    }

    fn counts(&self) -> Vec<u64> {
        counts_in(&self.lines.lock().unwrap().join("\n"))
    }

    /// Waits until a count of at least `min` arrived; returns the last one.
    #[track_caller]
    fn wait_count(&self, min: u64) -> u64 {
        let mut last = 0;
        assert!(
            wait_until(T, || {
                last = self.counts().last().copied().unwrap_or(0);
                last >= min
            }),
            "no count {min} on the task's stdout (last {last})"
        );
        last
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counts_in(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

/// Tracks the init pid ferry reports for `id`; asserts it is running.
fn track_running(c: &Containerd, id: &str) {
    let st = ferry_state(c, id);
    assert_eq!(st["status"], "running", "ferry state of {id}: {st}");
    if let Some(pid) = st["pid"].as_i64() {
        c.env.track_pid(pid as i32);
    }
}

fn task_status(c: &Containerd, id: &str) -> String {
    let o = c.ctr(&["task", "ls"]).ok();
    o.stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap().to_string())
        })
        .next()
        .unwrap_or_default()
}

#[test]
fn containerd_checkpoints_a_ferry_task_and_restores_it_into_a_new_container_twice() {
    let env = TestEnv::new("ctcr");
    let c = Containerd::start(&env);
    c.import_image();
    let id = env.id("k");
    // The counter prints "count N" every 100 ms and writes no file: what a restore must
    // carry on is its memory, seen on its stdout through the shim.
    c.run_image(&["-d"], &id, &["counter", "", "100"]).ok();
    track_running(&c, &id);
    let mut out = Attach::start(&c, &id);
    out.wait_count(3);

    // `ctr task checkpoint --image-path`: paused, checkpointed, resumed; the images are
    // written where asked and the task counts on.
    let direct = env.dir.join("task-images");
    fs::create_dir_all(&direct).unwrap();
    c.ctr(&[
        "task",
        "checkpoint",
        "--image-path",
        direct.to_str().unwrap(),
        &id,
    ])
    .ok();
    assert_eq!(task_status(&c, &id), "RUNNING");
    cmd::run(
        Command::new(&env.bin)
            .args(["image", "verify"])
            .arg(&direct),
        T,
    )
    .ok();
    let now = out.wait_count(0);
    out.wait_count(now + 3);

    // Round 1 restores under the same id, round 2 under a new one (the migration case).
    let mut id = id;
    for round in 1..=2 {
        // The checkpoint image carries the spec, the runtime and its options (ferry as the
        // shim's BinaryName) and the task's images; the task runs on meanwhile.
        let reference = format!("ferry-it/ck-{round}:latest");
        let before = out.wait_count(0);
        c.ctr(&["containers", "checkpoint", "--task", &id, &reference])
            .ok();
        assert_eq!(task_status(&c, &id), "RUNNING", "round {round}");
        std::thread::sleep(Duration::from_millis(300));
        let after = out.wait_count(0);
        c.ctr(&["images", "ls", "-q"]).ok().stdout_has(&reference);
        // (ctr attach would delete the task when it ends: detach first.)
        drop(out);
        c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).ok();
        assert!(
            wait_until(T, || task_status(&c, &id) == "STOPPED"),
            "round {round}: the task did not die"
        );
        c.ctr(&["task", "delete", &id]).ok();
        c.ctr(&["container", "delete", &id]).ok();
        if round == 2 {
            id = env.id("k2");
        }

        // A new container from the checkpoint image; the shim hands `ferry restore` new stdio
        // pipes, and the restored counter's lines carry on from where the checkpoint caught
        // it (a counter started over would print "count 1").
        let o = c
            .ctr(&["containers", "restore", "--live", &id, &reference])
            .ok();
        assert_eq!(task_status(&c, &id), "RUNNING", "round {round}");
        track_running(&c, &id);
        out = Attach::start(&c, &id);
        out.wait_count(before + 3);
        // ctr printed what it read before it returned; attach got the rest.
        let mut counts = counts_in(&o.stdout);
        counts.extend(out.counts());
        let first = counts[0];
        assert!(
            first > before && first <= after + 1,
            "round {round}: first count {first} after a checkpoint between {before} and \
             {after}: {counts:?}"
        );
        assert!(
            counts.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: the restored task counts on one by one: {counts:?}"
        );
        // The restored task is a task like any other: exec works in it.
        let exec_id = format!("probe{round}");
        let o = c
            .ctr(&[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                &id,
                "probe",
                "5",
                "restored",
            ])
            .code_is(5);
        assert!(o.stdout.contains("arg[2]=restored\n"), "{o}");
        // Synchronously (garbage collection included), so each round starts from an empty
        // content store: a second round's restore failed once here with containerd's "media
        // type not found", which containerd#7980/#8145 trace to checkpoint blobs (this
        // round's spec and options, byte for byte the next one's) still in the store.
        c.ctr(&["images", "rm", "--sync", &reference]).ok();
    }
    drop(out);

    // `ctr task checkpoint --exit`: a checkpoint image of the task, which is stopped.
    let o = c.ctr(&["task", "checkpoint", "--exit", &id]).ok();
    let image = o.stdout.trim().to_string();
    assert!(
        image.starts_with(&format!("containerd.io/checkpoint/{id}:")),
        "ctr prints the checkpoint image: {o}"
    );
    c.ctr(&["images", "ls", "-q"]).ok().stdout_has(&image);
    assert!(
        wait_until(T, || task_status(&c, &id) == "STOPPED"),
        "checkpoint --exit stops the task"
    );
    c.assert_gone(&id);
    c.ctr(&["task", "delete", &id]).ok();
    c.ctr(&["container", "delete", &id]).ok();
    c.ctr(&["images", "rm", &image]).ok();
}

/// Every ctr checkpoint pauses the task, then runs the runtime's checkpoint on the paused
/// container: the processes must not run again before they are seized, or the memory image
/// no longer matches the rootfs changes containerd took while they were paused (a process
/// caught with a file its rootfs diff lacks cannot be restored). The counter ticks every
/// millisecond, so its timer has expired while paused and any thaw shows in /count.
#[test]
fn containerd_paused_task_does_not_run_during_its_checkpoint() {
    let env = TestEnv::new("ctpz");
    let c = Containerd::start(&env);
    c.import_image();
    let id = env.id("p");
    c.run_image(&["-d"], &id, &["counter", "/count", "1"]).ok();
    track_running(&c, &id);
    let st = ferry_state(&c, &id);
    let path = PathBuf::from(st["bundle"].as_str().unwrap()).join("rootfs/count");
    let read = || -> u64 { fs::read_to_string(&path).unwrap().trim().parse().unwrap() };
    assert!(wait_until(T, || path.exists() && read() >= 10), "counts");
    for round in 1..=5 {
        c.ctr(&["task", "pause", &id]).ok();
        std::thread::sleep(Duration::from_millis(50));
        let paused = read();
        // What the shim runs after its own pause.
        let img = env.dir.join(format!("img-{round}"));
        let img = img.to_str().unwrap();
        c.ferry(&["checkpoint", "--leave-running", "--image-path", img, &id])
            .ok();
        assert_eq!(task_status(&c, &id), "PAUSED", "round {round}");
        assert_eq!(
            read(),
            paused,
            "round {round}: the paused task ran during its checkpoint"
        );
        c.ctr(&["task", "resume", &id]).ok();
    }
    c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).ok();
}

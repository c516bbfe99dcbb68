//! OCI bundles for the tests: a private copy of the rootfs plus a config.json.
//!
//! The config is written directly with serde_json (not through `ferry spec`, which has a test of
//! its own) in the shape `runc spec` produces, with `terminal: false`, the test's args, a
//! hostname and a unique `linux.cgroupsPath` so concurrent tests never share a cgroup.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The PATH containers see.
pub const CONTAINER_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A runc-spec-like config running `args`, with cgroup `cgroups_path`.
pub fn default_config(args: &[&str], cgroups_path: &str) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [CONTAINER_PATH, "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ferry-it",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "cgroupsPath": cgroups_path,
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// A bundle directory on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The container id the bundle was made for.
    pub id: String,
    /// The bundle directory (holds config.json and rootfs/).
    pub path: PathBuf,
    /// The config's linux.cgroupsPath.
    pub cgroups_path: String,
}

impl Bundle {
    /// Creates `path` with a copy of the test rootfs and the default config for `args`.
    pub fn create(path: &Path, id: &str, args: &[&str]) -> Bundle {
        fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        crate::rootfs::copy_rootfs(&path.join("rootfs"));
        let cgroups_path = format!("/ferry-it-{id}");
        let b = Bundle {
            id: id.to_string(),
            path: path.to_path_buf(),
            cgroups_path: cgroups_path.clone(),
        };
        b.write_config(&default_config(args, &cgroups_path));
        b
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    pub fn config(&self) -> Value {
        let text = fs::read_to_string(self.config_path()).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn write_config(&self, cfg: &Value) {
        fs::write(
            self.config_path(),
            serde_json::to_vec_pretty(cfg).expect("config serializes"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", self.config_path().display()));
    }

    /// Edits config.json in place.
    pub fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let mut cfg = self.config();
        f(&mut cfg);
        self.write_config(&cfg);
    }

    /// Sets `process.noNewPrivileges` (None: the key removed) and a seccomp profile allowing
    /// everything but `rules` (libseccomp rule objects) and clone3, which fails with ENOSYS as
    /// in podman's default profile (glibc falls back to clone).
    pub fn set_seccomp(&self, nnp: Option<bool>, rules: &[Value]) {
        self.edit_config(|c| {
            let p = c["process"].as_object_mut().expect("process object");
            match nnp {
                Some(v) => p.insert("noNewPrivileges".into(), v.into()),
                None => p.remove("noNewPrivileges"),
            };
            let mut syscalls = rules.to_vec();
            syscalls.push(serde_json::json!(
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ));
            c["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": syscalls,
            });
        });
    }

    /// Path of the file the container's stdout goes to when started by the rig detached.
    pub fn stdout_path(&self) -> PathBuf {
        self.path.join("stdout.log")
    }

    /// Path of the file the container's stderr goes to when started by the rig detached.
    pub fn stderr_path(&self) -> PathBuf {
        self.path.join("stderr.log")
    }

    /// What the container printed on stdout so far (empty if nothing yet).
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    /// Reads a file of the container's root filesystem (seen from the host).
    pub fn read_rootfs_file(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.rootfs().join(rel.trim_start_matches('/'))).ok()
    }

    /// The value the `counter` workload last wrote to `/`-relative `file`, if any yet.
    pub fn counter(&self, file: &str) -> Option<u64> {
        self.read_rootfs_file(file)?.trim().parse().ok()
    }
}

//! Shared helpers of the container-resource tests (included with `#[path]`; no tests here).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `sleep` in fresh namespaces made by unshare(1); killed by PID and reaped on drop.
pub struct NsChild {
    pub pid: i32,
    child: Child,
}

impl NsChild {
    /// `unshare FLAGS sleep 600`, waiting until the exec happened (namespaces are in place).
    pub fn spawn(flags: &[&str]) -> NsChild {
        let child = Command::new("unshare")
            .args(flags)
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let pid = child.id() as i32;
        let c = NsChild { pid, child };
        let t0 = Instant::now();
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "unshare child {pid} never reached sleep"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        c
    }

    /// Runs `nsenter -t PID FLAGS -- ARGS` and returns stdout; panics on failure.
    pub fn run(&self, ns_flags: &[&str], args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .args(ns_flags)
            .arg("--")
            .args(args)
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "nsenter {ns_flags:?} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its PID; it is reaped right after.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Checks that Debian's crit decodes every protobuf image in `dir` (raw archives skipped).
pub fn crit_decodes_all(dir: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if !n.ends_with(".img") || ferry_images::magic::is_raw_file(&n) {
            continue;
        }
        let out = Command::new("/usr/bin/crit")
            .args(["decode", "-i"])
            .arg(&p)
            .output()
            .expect("run crit");
        assert!(
            out.status.success(),
            "crit decode {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.push(n);
    }
    seen
}

/// A unique name for host-side objects of one test.
pub fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "ferry-crt-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

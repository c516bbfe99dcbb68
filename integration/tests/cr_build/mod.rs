//! Workloads a checkpoint/restore test builds into its own bundle (static C from
//! integration/workloads/, compiled with `gcc -static` straight into the bundle's rootfs, so
//! the shared cached rootfs stays as it is).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_integration::cmd::{self, wait_until};
use ferry_integration::Bundle;

/// Compiles integration/workloads/NAME.c into the bundle's /bin/NAME.
#[track_caller]
pub fn build_workload(b: &Bundle, name: &str) {
    let src = ferry_integration::rootfs::workloads_dir().join(format!("{name}.c"));
    cmd::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(b.rootfs().join("bin").join(name))
            .arg(&src),
        Duration::from_secs(120),
    )
    .ok();
}

/// `rel` (absolute inside the container) as seen from the host through the bundle's rootfs.
pub fn in_rootfs(b: &Bundle, rel: &str) -> PathBuf {
    b.rootfs().join(rel.trim_start_matches('/'))
}

/// A file inside the container's own mount namespace (e.g. on its /dev/shm tmpfs), read from
/// the host through /proc/PID/root.
pub fn read_in_container(pid: i32, path: &str) -> Option<String> {
    std::fs::read_to_string(
        Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/')),
    )
    .ok()
}

/// Waits until `path` (host path) exists.
#[track_caller]
pub fn wait_file(path: &Path, timeout: Duration) {
    assert!(
        wait_until(timeout, || path.exists()),
        "{} did not appear",
        path.display()
    );
}

/// Number of entries of an image file, decoded by `ferry image decode`.
#[track_caller]
pub fn image_entries(env: &ferry_integration::TestEnv, img: &Path) -> Vec<serde_json::Value> {
    let out = env.dir.join(format!(
        "{}.json",
        img.file_name().unwrap().to_string_lossy()
    ));
    env.ferry(&[
        "image",
        "decode",
        "-i",
        img.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    v["entries"].as_array().cloned().unwrap_or_default()
}

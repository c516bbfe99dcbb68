//! Shared helpers for ferry's end-to-end tests.
//!
//! The tests drive the real `ferry` binary (built by `cargo build -p ferry` into the workspace
//! target directory, or named by `FERRY_BIN`) against real processes and containers, as root.
//!
//! - [`rootfs`]: the cached busybox-static + workloads root filesystem;
//! - [`bundle`]: OCI bundles (config.json written with serde_json);
//! - [`env`]: [`env::TestEnv`], a test's private `--root` and scratch space with RAII teardown;
//! - [`cmd`]: running programs with deadlines; [`cleanup`]: pidfds, cgroups, mounts;
//! - [`ociimage`]: an OCI image layout tarball built from the rootfs (for containerd).
//!
//! Pointing `FERRY_BIN` at another runc-compatible runtime (`/usr/sbin/runc`) runs the same
//! tests against it: that is how the tests themselves are checked against the reference.

use std::path::PathBuf;

pub mod bundle;
pub mod cleanup;
pub mod cmd;
pub mod env;
pub mod ociimage;
pub mod rootfs;

pub use bundle::Bundle;
pub use cmd::Out;
pub use env::TestEnv;

/// Fails the calling test unless it runs as root: the end-to-end tests need real namespaces,
/// cgroups and mounts, and a skipped test would hide that nothing was checked.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "ferry's end-to-end tests must run as root (euid is {euid}): run `sudo make test`"
    );
}

/// The workspace root (parent of `integration/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// Path of the ferry binary under test: `$FERRY_BIN`, else `target/debug/ferry` of this workspace
/// (or `$CARGO_TARGET_DIR/debug/ferry`).
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("ferry");
    assert!(
        bin.exists(),
        "ferry binary not found at {}: run `cargo build -p ferry` first or set FERRY_BIN",
        bin.display()
    );
    bin
}

/// The shared CRIU 4.2 fixtures (`../shared/fixtures/criu-4.2` beside the checkout), or
/// `$FERRY_FIXTURES`.
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_FIXTURES") {
        return PathBuf::from(p);
    }
    workspace_root().join("../shared/fixtures/criu-4.2")
}

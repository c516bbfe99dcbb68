//! The test rootfs: Debian's busybox-static plus the project's static C workloads.
//!
//! Built once and cached under `<target>/ferry-it/rootfs-<key>`, where the key hashes busybox
//! and the workload sources, so a changed workload rebuilds it. Parallel tests (nextest runs
//! each test in its own process) serialize on an flock(2) of `<target>/ferry-it/lock`; the
//! rootfs is assembled in a scratch directory and renamed into place, so a reader never sees a
//! half-built one. Each bundle gets its own copy (`cp -a`, a few MiB), so containers never share
//! a writable root.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd;

/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The static C workloads built into the rootfs's /bin (source: integration/workloads/NAME.c).
pub const WORKLOADS: &[&str] = &["counter", "probe"];

/// Bump when the layout below changes, to invalidate caches.
const LAYOUT_VERSION: u32 = 1;

/// Cache directory of the rig: `$CARGO_TARGET_DIR/ferry-it` or `<workspace>/target/ferry-it`.
pub fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target.join("ferry-it")
}

/// Directory of the workload sources.
pub fn workloads_dir() -> PathBuf {
    crate::workspace_root()
        .join("integration")
        .join("workloads")
}

/// Returns the path of the cached rootfs, building it first if needed.
pub fn rootfs() -> PathBuf {
    let cache = cache_dir();
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("create {}: {e}", cache.display()));
    let key = cache_key();
    let dir = cache.join(format!("rootfs-{key:016x}"));
    let _lock = FileLock::acquire(&cache.join("lock"));
    if dir.join("bin/busybox").exists() {
        return dir;
    }
    let scratch = cache.join(format!("rootfs-{key:016x}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    build(&scratch);
    fs::rename(&scratch, &dir)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", scratch.display(), dir.display()));
    dir
}

/// Copies the cached rootfs to `dest` (which must not exist).
pub fn copy_rootfs(dest: &Path) {
    let src = rootfs();
    cmd::run(
        Command::new("cp").arg("-a").arg(&src).arg(dest),
        Duration::from_secs(60),
    )
    .ok();
}

fn cache_key() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    LAYOUT_VERSION.hash(&mut h);
    let bb = fs::metadata(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX}: {e}: install Debian's busybox-static (`make setup`)")
    });
    bb.len().hash(&mut h);
    bb.modified().ok().hash(&mut h);
    for w in WORKLOADS {
        let p = workloads_dir().join(format!("{w}.c"));
        fs::read(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .hash(&mut h);
    }
    h.finish()
}

fn build(dir: &Path) {
    assert_static(Path::new(BUSYBOX));
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
        "var/tmp", "run",
    ] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    // Run busybox inside the new root so its links point at /bin/busybox, not at the host path.
    cmd::run(
        Command::new("chroot")
            .arg(dir)
            .args(["/bin/busybox", "--install", "-s", "/bin"]),
        Duration::from_secs(30),
    )
    .ok();
    for w in WORKLOADS {
        let src = workloads_dir().join(format!("{w}.c"));
        cmd::run(
            Command::new("gcc")
                .args(["-static", "-O2", "-Wall", "-o"])
                .arg(dir.join("bin").join(w))
                .arg(&src),
            Duration::from_secs(120),
        )
        .ok();
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nferry:x:1000:1000:ferry test user:/tmp:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        dir.join("etc/group"),
        "root:x:0:\nferry:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    fs::set_permissions(
        dir.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

/// Panics unless `path` is a static ELF (no PT_INTERP): the dynamic /bin/busybox of Debian's
/// `busybox` package would not run inside the rootfs.
fn assert_static(path: &Path) {
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        head.starts_with(b"\x7fELF\x02"),
        "{} is not a 64-bit ELF",
        path.display()
    );
    let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes(head[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > head.len() {
            break;
        }
        let p_type = u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
        assert!(
            p_type != 3,
            "{} is dynamically linked: install Debian's busybox-static, not busybox",
            path.display()
        );
    }
}

/// An exclusive flock(2) held until dropped.
pub struct FileLock(fs::File);

impl FileLock {
    pub fn acquire(path: &Path) -> FileLock {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open lock {}: {e}", path.display()));
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        FileLock(f)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the descriptor we own; closing it would release the lock anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

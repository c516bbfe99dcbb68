//! The CRIU 4.2 `runc-busybox` fixture (runc+CRIU images of a busybox container: pstree pids 1
//! = sh and 9 = sleep in the container's pid namespace): its process tree restored by ferry in a
//! rootfs like its bundle's (busybox-static at /bin/busybox, /dev/null), both with ferry as the
//! coordinator making the pid namespace and in place as PID 1. The shell's counter, 4 at the
//! checkpoint, goes on from there. Container-level images (mounts, cgroups, net, uts, ipc) are
//! not restored here.

mod crit;
mod pidns_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pidns_common::*;

const FIXTURE: &str = "/work/shared/fixtures/criu-4.2/runc-busybox/images";

/// A rootfs like the fixture's bundle: /bin/busybox (byte-identical to the one checkpointed),
/// /dev/null, /proc, and a copy of the images under /images.
fn rootfs() -> tempfile::TempDir {
    let r = tempfile::tempdir().unwrap();
    for d in ["bin", "dev", "proc", "images"] {
        std::fs::create_dir(r.path().join(d)).unwrap();
    }
    let bb = std::fs::read("/bin/busybox").expect("busybox-static at /bin/busybox");
    assert_eq!(
        bb.len(),
        1982256,
        "/bin/busybox is not the busybox-static 1:1.35.0-4+deb12u1+b1 the fixture ran"
    );
    std::fs::write(r.path().join("bin/busybox"), &bb).unwrap();
    std::fs::set_permissions(
        r.path().join("bin/busybox"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let null = std::ffi::CString::new(r.path().join("dev/null").to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid path for the character device 1:3.
    let rc = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod /dev/null");
    // The fixture's /dev/null is 0666 (ferry checks the mode); mknod applied our umask.
    std::fs::set_permissions(
        r.path().join("dev/null"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    for e in std::fs::read_dir(FIXTURE).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), r.path().join("images").join(e.file_name())).unwrap();
    }
    r
}

fn counter(root: &Path) -> Option<u64> {
    std::fs::read_to_string(root.join("counter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn run(root: &Path, coordinator: bool) -> i32 {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-pidns-harness"));
    c.arg("--root").arg(root);
    if coordinator {
        c.arg("--coordinator");
    }
    let out = c
        .arg("/images")
        .stdin(Stdio::null())
        .output()
        .expect("run ferry-pidns-harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restore failed: {stdout}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(root.join("images/restore.log")).unwrap_or_default()
    );
    let host: i32 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    if !coordinator {
        assert!(stdout.contains("ok 1 9"), "{stdout}");
    }
    host
}

fn check(root: &Path, host: i32) {
    assert_eq!(ns_pid(host), 1, "sh is PID 1 of its namespace");
    let comm = std::fs::read_to_string(format!("/proc/{host}/comm")).unwrap();
    assert_eq!(comm.trim(), "sh");
    // The counter was 4 at the checkpoint; the restored shell counts on from there.
    let start = Instant::now();
    loop {
        if counter(root).is_some_and(|c| c >= 6) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "counter stuck at {:?}",
            counter(root)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pidns_fixture_runc_busybox_coordinator() {
    subreaper();
    let root = rootfs();
    let host = run(root.path(), true);
    let _guard = NsGuard(host);
    check(root.path(), host);
}

#[test]
fn pidns_fixture_runc_busybox_in_place() {
    subreaper();
    let root = rootfs();
    let host = run(root.path(), false);
    let _guard = NsGuard(host);
    check(root.path(), host);
}

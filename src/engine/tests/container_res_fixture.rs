//! runc+CRIU 4.2 interchange: the container-level images of the `runc-busybox` fixture
//! (utsns-12, ipcns-var-11, mountpoints-13 with its five tmpfs archives) restored by ferry
//! into fresh namespaces and checked from inside. Runs as root; the mount tree lives in a
//! child's private mount namespace (with its own net and IPC namespaces, so sysfs and mqueue
//! get superblocks of their own) and is unmounted by undo before the child is killed.

#[path = "container_res_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::NsChild;
use ferry_engine::mounts::{self, MountRestoreOpts};
use ferry_engine::uts::enter::{in_namespaces, Ns};
use ferry_engine::{ipc, uts};
use ferry_images::ImageDir;

/// `$FERRY_FIXTURES` or `../shared/fixtures/criu-4.2` beside the checkout (as integration/).
fn fixture() -> ImageDir {
    let base = std::env::var_os("FERRY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/criu-4.2")
        });
    let p = base.join("runc-busybox/images");
    assert!(p.is_dir(), "fixture {} is missing", p.display());
    ImageDir::open(p).unwrap()
}

#[test]
fn fixture_uts_restores() {
    let dir = fixture();
    let b = NsChild::spawn(&["--uts"]);
    let st = uts::restore_uts(b.pid, &dir, 12).unwrap();
    assert_eq!(st.nodename, "runc");
    assert_eq!(b.run(&["-u"], &["hostname"]).trim(), "runc");
    assert_eq!(b.run(&["-u"], &["domainname"]).trim(), "(none)");
}

#[test]
fn fixture_ipc_vars_restore() {
    let dir = fixture();
    let b = NsChild::spawn(&["--ipc"]);
    // Make the values differ first, so the restore has something to do.
    in_namespaces(b.pid, &[Ns::Ipc], || {
        std::fs::write("/proc/sys/kernel/msgmni", "100").unwrap();
        std::fs::write("/proc/sys/fs/mqueue/queues_max", "17").unwrap();
    })
    .unwrap();
    let sum = ipc::restore_ipc(b.pid, &dir, 11).unwrap();
    assert_eq!(sum, ipc::IpcSummary::default());
    in_namespaces(b.pid, &[Ns::Ipc], || {
        let r = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(r("/proc/sys/kernel/msgmni"), "32000");
        assert_eq!(r("/proc/sys/kernel/msgmnb"), "16384");
        assert_eq!(r("/proc/sys/kernel/shmmni"), "4096");
        assert_eq!(r("/proc/sys/fs/mqueue/queues_max"), "256");
        assert_eq!(
            r("/proc/sys/kernel/sem")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["32000", "1024000000", "500", "32000"]
        );
    })
    .unwrap();
}

#[test]
fn fixture_tmpfs_archives_extract() {
    let dir = fixture();
    let t = tempfile::tempdir().unwrap();
    let data = std::fs::read(dir.path().join("tmpfs-dev-41.tar.gz.img")).unwrap();
    assert_eq!(mounts::tmpfs::extract(&data, t.path()).unwrap(), 15);
    let null = std::fs::symlink_metadata(t.path().join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o777, 0o666);
    assert_eq!(
        std::fs::read_link(t.path().join("fd")).unwrap(),
        Path::new("/proc/self/fd")
    );
    assert!(t.path().join("pts").is_dir());
    let shm = tempfile::tempdir().unwrap();
    let data = std::fs::read(dir.path().join("tmpfs-dev-43.tar.gz.img")).unwrap();
    mounts::tmpfs::extract(&data, shm.path()).unwrap();
    // The archive's "./" entry gives the mount root its mode: /dev/shm is 1777.
    assert_eq!(
        std::fs::metadata(shm.path()).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
}

#[test]
fn fixture_mount_tree_restores_under_a_new_root() {
    let dir = fixture();
    let host = std::env::temp_dir().join(common::unique("fixmnt"));
    let b = NsChild::spawn(&["--mount", "--net", "--ipc", "--propagation", "private"]);
    let root = host.join("rootfs");
    let r = root.clone();
    in_namespaces(b.pid, &[Ns::Mnt], move || {
        std::fs::create_dir_all(&r).unwrap();
        nix::mount::mount(
            Some("rootfs"),
            &r,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
    })
    .unwrap();
    let mut ext: BTreeMap<String, PathBuf> =
        BTreeMap::from([("/dev/null".to_string(), PathBuf::from("/dev/null"))]);
    for c in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
    ] {
        ext.insert(
            format!("/sys/fs/cgroup/{c}"),
            PathBuf::from(format!("/sys/fs/cgroup/{c}")),
        );
    }
    let before = std::fs::read_to_string(format!("/proc/{}/mountinfo", b.pid)).unwrap();
    let done = mounts::restore_mounts(
        b.pid,
        &dir,
        13,
        &MountRestoreOpts {
            new_root: root.clone(),
            external: ext,
        },
    )
    .unwrap();
    assert_eq!(done.mounted.len(), 24, "every mount but the root");
    let r = root.clone();
    in_namespaces(b.pid, &[Ns::Mnt], move || {
        let mi = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let line = |mp: &str| {
            let want = format!("{}{mp}", r.display());
            mi.lines()
                .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
                .unwrap_or_else(|| panic!("no mount at {want}:\n{mi}"))
                .to_string()
        };
        assert!(line("/dev").contains(" - tmpfs tmpfs "), "{}", line("/dev"));
        assert!(line("/dev/pts").contains(" - devpts "));
        assert!(line("/dev/mqueue").contains(" - mqueue "));
        assert!(line("/sys").contains(" - sysfs "), "{}", line("/sys"));
        assert!(line("/sys").contains(" ro,"), "{}", line("/sys"));
        assert!(
            line("/proc/sys").contains(" ro,") && line("/proc/sys").contains(" /sys "),
            "{}",
            line("/proc/sys")
        );
        assert!(line("/sys/firmware").contains(" ro,"));
        let null = std::fs::symlink_metadata(r.join("dev/null")).unwrap();
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        assert!(std::fs::symlink_metadata(r.join("proc/keys"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(
            r.join("sys/fs/cgroup/pids/pids.max").exists()
                || r.join("sys/fs/cgroup/pids/cgroup.procs").exists()
        );
        assert!(r.join("proc/self/status").exists());
    })
    .unwrap();
    done.undo().unwrap();
    let after = std::fs::read_to_string(format!("/proc/{}/mountinfo", b.pid)).unwrap();
    // Only the new-root tmpfs the test mounted itself stays.
    assert_eq!(before, after);
    drop(b);
    let _ = std::fs::remove_dir_all(&host);
}

//! Mount namespace: a container-like tree (tmpfs with files, device node, symlink, fifo; a
//! read-only tmpfs; an external bind mount; a read-only bind; a masked file) dumped from a
//! task in a fresh mount namespace, restored under a new root in another one, verified from
//! inside, twice in a row. Runs as root; everything lives in the children's private mount
//! namespaces and a temporary host directory, removed on drop.

#[path = "container_res_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{crit_decodes_all, NsChild};
use ferry_engine::mounts::{self, MountDumpOpts, MountRestoreOpts};
use ferry_engine::uts::enter::{in_namespaces, Ns};
use ferry_images::{pb, ImageDir};
use nix::mount::{mount, MsFlags};

fn m(src: Option<&str>, target: &Path, fs: Option<&str>, flags: MsFlags, data: Option<&str>) {
    mount(src, target, fs, flags, data).unwrap_or_else(|e| panic!("mount {target:?}: {e}"));
}

/// Builds the container tree under `root` inside the mount namespace of `pid`.
/// A bind mount of `src` on `target`.
fn bind(src: &Path, target: &Path) {
    m(
        Some(src.to_str().unwrap()),
        target,
        None,
        MsFlags::MS_BIND,
        None,
    );
}

fn build_tree(pid: i32, root: &Path, ext_src: &Path) {
    let root = root.to_path_buf();
    let ext_src = ext_src.to_path_buf();
    in_namespaces(pid, &[Ns::Mnt], move || {
        std::fs::create_dir_all(&root).unwrap();
        m(
            Some("rootfs"),
            &root,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=4m,mode=755"),
        );
        for d in ["dev", "data", "ext", "ro", "etc"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/secret"), b"do not read").unwrap();
        let dev = root.join("dev");
        m(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("size=1m,mode=755"),
        );
        std::fs::write(dev.join("hello"), b"hello from /dev").unwrap();
        std::fs::create_dir(dev.join("sub")).unwrap();
        std::fs::write(dev.join("sub/deep"), b"deep").unwrap();
        std::fs::set_permissions(dev.join("sub/deep"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::lchown(dev.join("sub/deep"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::symlink("hello", dev.join("link")).unwrap();
        nix::sys::stat::mknod(
            &dev.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        std::fs::set_permissions(dev.join("null"), std::fs::Permissions::from_mode(0o666)).unwrap();
        nix::unistd::mkfifo(
            &dev.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let data = root.join("data");
        m(
            Some("tmpfs"),
            &data,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=512k,mode=700"),
        );
        std::fs::write(data.join("payload"), vec![0xa5u8; 100_000]).unwrap();
        m(
            None,
            &data,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            Some("size=512k,mode=700"),
        );
        bind(&ext_src, &root.join("ext"));
        // A read-only path: bind of an in-tree directory, made read-only per mount.
        bind(&dev.join("sub"), &root.join("ro"));
        m(
            None,
            &root.join("ro"),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        );
        // A masked file: /dev/null bound over it.
        bind(&dev.join("null"), &root.join("etc/secret"));
    })
    .unwrap();
}

/// Checks the tree under `root` from inside the mount namespace of `pid`.
fn verify_tree(pid: i32, root: &Path) {
    let root = root.to_path_buf();
    in_namespaces(pid, &[Ns::Mnt], move || {
        let dev = root.join("dev");
        assert_eq!(
            std::fs::read(dev.join("hello")).unwrap(),
            b"hello from /dev"
        );
        assert_eq!(std::fs::read(dev.join("sub/deep")).unwrap(), b"deep");
        let md = std::fs::metadata(dev.join("sub/deep")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o600, 1234, 5678)
        );
        assert_eq!(
            std::fs::read_link(dev.join("link")).unwrap(),
            Path::new("hello")
        );
        let n = std::fs::symlink_metadata(dev.join("null")).unwrap();
        assert!(n.file_type().is_char_device());
        assert_eq!(n.rdev(), libc::makedev(1, 3));
        assert_eq!(n.mode() & 0o777, 0o666);
        assert!(std::fs::symlink_metadata(dev.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            std::fs::read(root.join("data/payload")).unwrap(),
            vec![0xa5u8; 100_000]
        );
        let e = std::fs::write(root.join("data/new"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "data is read-only");
        assert_eq!(
            std::fs::read(root.join("ext/outside.txt")).unwrap(),
            b"from the host"
        );
        assert_eq!(std::fs::read(root.join("ro/deep")).unwrap(), b"deep");
        let e = std::fs::write(root.join("ro/new"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "ro path is read-only");
        // The dev tmpfs under the read-only bind stays writable.
        std::fs::write(dev.join("sub/rw-check"), b"x").unwrap();
        std::fs::remove_file(dev.join("sub/rw-check")).unwrap();
        assert!(std::fs::symlink_metadata(root.join("etc/secret"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(std::fs::read(root.join("etc/secret")).unwrap(), b"");
        let mi = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let r = root.to_str().unwrap();
        let dev_line = mi
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(&format!("{r}/dev")[..]))
            .unwrap();
        assert!(dev_line.contains("nosuid"), "{dev_line}");
        assert!(dev_line.contains("size=1024k"), "{dev_line}");
    })
    .unwrap();
}

/// A restore of the mount images in `dir` into task `pid` under `new_root`, with the
/// external mount "k" bound from `ext_src`, that must fail; returns its error.
fn restore_err(pid: i32, dir: &ImageDir, new_root: PathBuf, ext_src: &Path) -> String {
    let opts = MountRestoreOpts {
        new_root,
        external: BTreeMap::from([("k".to_string(), ext_src.to_path_buf())]),
    };
    mounts::restore_mounts(pid, dir, 1, &opts)
        .unwrap_err()
        .to_string()
}

struct HostDir(PathBuf);
impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn mount_tree_with_tmpfs_external_ro_and_masked_survives_two_cycles() {
    let host = HostDir(std::env::temp_dir().join(common::unique("mnt")));
    let ext_src = host.0.join("extsrc");
    std::fs::create_dir_all(&ext_src).unwrap();
    std::fs::write(ext_src.join("outside.txt"), b"from the host").unwrap();
    let a = NsChild::spawn(&["--mount", "--propagation", "private"]);
    let root_a = host.0.join("root0");
    build_tree(a.pid, &root_a, &ext_src);
    verify_tree(a.pid, &root_a);
    let mut src = (a, root_a);
    let mut keep = Vec::new();
    for round in 1..=2 {
        let t = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(t.path()).unwrap();
        let opts = MountDumpOpts {
            root: src.1.clone(),
            external: BTreeMap::from([("/ext".to_string(), "ext-data".to_string())]),
            ..Default::default()
        };
        let entries = mounts::dump_mounts(src.0.pid, &dir, 13, &opts).unwrap();
        assert_eq!(
            entries.len(),
            6,
            "root, dev, data, ext, ro, masked: {entries:#?}"
        );
        assert_eq!(entries[0].mountpoint, "/");
        let by_mp: BTreeMap<&str, &pb::MntEntry> =
            entries.iter().map(|e| (e.mountpoint.as_str(), e)).collect();
        assert_eq!(by_mp["/ext"].ext_key.as_deref(), Some("ext-data"));
        assert_eq!(by_mp["/ro"].root, "/sub");
        assert_eq!(by_mp["/etc/secret"].root, "/null");
        assert_eq!(by_mp["/data"].sb_flags, Some(libc::MS_RDONLY as u32));
        let archives: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tmpfs-dev-"))
            .collect();
        assert_eq!(archives.len(), 2, "dev and data: {archives:?}");
        assert_eq!(crit_decodes_all(t.path()), ["mountpoints-13.img"]);

        let b = NsChild::spawn(&["--mount", "--propagation", "private"]);
        let root_b = host.0.join(format!("root{round}"));
        let rb = root_b.clone();
        in_namespaces(b.pid, &[Ns::Mnt], move || {
            std::fs::create_dir_all(&rb).unwrap();
            m(
                Some("newroot"),
                &rb,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=4m"),
            );
            std::fs::create_dir_all(rb.join("etc")).unwrap();
            std::fs::write(rb.join("etc/secret"), b"").unwrap();
        })
        .unwrap();
        let ropts = MountRestoreOpts {
            new_root: root_b.clone(),
            external: BTreeMap::from([("ext-data".to_string(), ext_src.clone())]),
        };
        let done = mounts::restore_mounts(b.pid, &dir, 13, &ropts).unwrap();
        assert_eq!(done.mounted.len(), 5);
        verify_tree(b.pid, &root_b);
        keep.push(std::mem::replace(&mut src, (b, root_b)));
    }
}

#[test]
fn mount_restore_without_external_source_fails_and_leaves_nothing() {
    let host = HostDir(std::env::temp_dir().join(common::unique("mnt")));
    let ext_src = host.0.join("extsrc");
    std::fs::create_dir_all(&ext_src).unwrap();
    std::fs::write(ext_src.join("outside.txt"), b"from the host").unwrap();
    let a = NsChild::spawn(&["--mount", "--propagation", "private"]);
    let root_a = host.0.join("root0");
    build_tree(a.pid, &root_a, &ext_src);
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    // Without the external map the bind of a host directory cannot be dumped.
    let err = mounts::dump_mounts(
        a.pid,
        &dir,
        1,
        &MountDumpOpts {
            root: root_a.clone(),
            external: BTreeMap::new(),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at /ext") && err.contains("external"), "{err}");
    let opts = MountDumpOpts {
        root: root_a.clone(),
        external: BTreeMap::from([("/ext".to_string(), "k".to_string())]),
        ..Default::default()
    };
    mounts::dump_mounts(a.pid, &dir, 1, &opts).unwrap();
    let b = NsChild::spawn(&["--mount", "--propagation", "private"]);
    let before = std::fs::read_to_string(format!("/proc/{}/mountinfo", b.pid)).unwrap();
    let err = mounts::restore_mounts(
        b.pid,
        &dir,
        1,
        &MountRestoreOpts {
            new_root: "/tmp".into(),
            external: BTreeMap::new(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"k\""), "{err}");
    // A new root whose dev is a symlink pointing elsewhere: refused before anything lands there.
    let evil = host.0.join("evil");
    let outside = host.0.join("outside");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, evil.join("dev")).unwrap();
    let err = restore_err(b.pid, &dir, evil, &ext_src);
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/mountinfo", b.pid)).unwrap(),
        before
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // A corrupt archive fails the restore and unmounts what was already mounted.
    for e in std::fs::read_dir(t.path()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tmpfs-dev-")
        {
            std::fs::write(&p, b"\x1f\x8b garbage").unwrap();
        }
    }
    let rb = host.0.join("rootb");
    std::fs::create_dir_all(&rb).unwrap();
    let err = restore_err(b.pid, &dir, rb, &ext_src);
    assert!(err.contains("tmpfs archive"), "{err}");
    let after = std::fs::read_to_string(format!("/proc/{}/mountinfo", b.pid)).unwrap();
    assert_eq!(before, after, "a failed restore leaves no mounts behind");
}

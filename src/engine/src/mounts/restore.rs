//! Restore half of the mount namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use ferry_images::{pb, ImageDir};

use super::{fstype_name, image_name, tmpfs, tmpfs_image_name, MountError, MountInfo};
use crate::uts::enter::{in_namespaces, Ns};

const STAGE: &str = "restore";
const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

/// Where to restore.
#[derive(Debug, Clone, Default)]
pub struct MountRestoreOpts {
    /// The new container root, a path in the target task's mount namespace (prepared by the
    /// caller, e.g. the bundle's rootfs); the dumped root mount stands for it.
    pub new_root: PathBuf,
    /// External mounts: `ext_key` -> source path in ferry's own mount namespace.
    pub external: BTreeMap<String, PathBuf>,
}

/// The mounts a restore made, for rollback.
#[derive(Debug)]
pub struct MountRestore {
    pid: i32,
    /// Targets mounted, in mount order.
    pub mounted: Vec<PathBuf>,
}

impl MountRestore {
    /// Unmounts everything this restore mounted, newest first (a failed restore's undo).
    pub fn undo(self) -> Result<(), MountError> {
        let pid = self.pid;
        in_namespaces(pid, &[Ns::Mnt], || unmount_all(pid, &self.mounted)).map_err(|source| {
            MountError::Enter {
                stage: "undo",
                source,
            }
        })?
    }
}

fn unmount_all(pid: i32, mounted: &[PathBuf]) -> Result<(), MountError> {
    let mut first = None;
    for t in mounted.iter().rev() {
        if let Err(e) = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH) {
            first.get_or_insert(MountError::Mount {
                pid,
                mnt_id: 0,
                target: t.display().to_string(),
                call: "umount2(MNT_DETACH)".into(),
                source: e.into(),
            });
        }
    }
    first.map_or(Ok(()), Err)
}

fn cstr(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("NULs removed")
}

/// `mount(2)` with optional strings; errors name the mount.
fn sys_mount(
    pid: i32,
    e: &pb::MntEntry,
    target: &Path,
    src: Option<&str>,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> Result<(), MountError> {
    let t = cstr(&target.to_string_lossy());
    let s = src.map(cstr);
    let f = fstype.map(cstr);
    let d = data.filter(|d| !d.is_empty()).map(cstr);
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string alive for the call.
    let rc = unsafe { libc::mount(p(&s), t.as_ptr(), p(&f), flags, p(&d).cast()) };
    if rc != 0 {
        return Err(MountError::Mount {
            pid,
            mnt_id: e.mnt_id,
            target: target.display().to_string(),
            call: format!("mount({src:?}, {fstype:?}, {flags:#x}, {data:?})"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates the mountpoint (a file when the source is not a directory).
fn make_mountpoint(
    pid: i32,
    e: &pb::MntEntry,
    target: &Path,
    is_dir: bool,
) -> Result<(), MountError> {
    let io = |op: &'static str| {
        move |source| MountError::Mount {
            pid,
            mnt_id: e.mnt_id,
            target: target.display().to_string(),
            call: format!("{op} mountpoint"),
            source,
        }
    };
    if target.symlink_metadata().is_ok() {
        return Ok(());
    }
    if is_dir {
        std::fs::create_dir_all(target).map_err(io("mkdir"))
    } else {
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(io("mkdir"))?;
        }
        std::fs::File::create(target)
            .map(drop)
            .map_err(io("create"))
    }
}

/// How one mount comes back.
enum How {
    /// Attach a clone of an external source.
    External(OwnedFd, bool),
    /// Bind from a path already restored.
    Bind(PathBuf),
    /// A new filesystem instance.
    Fresh(&'static str),
}

/// `new_root` + the entry's mountpoint, refusing `..` and symlinks on the way: a rootfs or an
/// image must not steer a mount outside the new root.
fn safe_target(pid: i32, new_root: &Path, e: &pb::MntEntry) -> Result<PathBuf, MountError> {
    use std::path::Component;
    let mut p = new_root.to_path_buf();
    for c in Path::new(&e.mountpoint).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(x) => {
                p.push(x);
                if p.symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Err(MountError::Unsupported {
                        stage: STAGE,
                        pid,
                        what: format!(
                            "mount {} at {}: {} is a symlink in the new root",
                            e.mnt_id,
                            e.mountpoint,
                            p.display()
                        ),
                    });
                }
            }
            _ => {
                return Err(MountError::Unsupported {
                    stage: STAGE,
                    pid,
                    what: format!(
                        "mount {} has mountpoint {:?} with '..'",
                        e.mnt_id, e.mountpoint
                    ),
                })
            }
        }
    }
    Ok(p)
}

fn is_prefix(a: &str, b: &str) -> bool {
    a == "/" || a == b || b.starts_with(&format!("{a}/"))
}

fn sub(base: &Path, root_a: &str, root_b: &str) -> PathBuf {
    let rest = if root_a == "/" {
        root_b
    } else {
        &root_b[root_a.len()..]
    };
    base.join(rest.trim_start_matches('/'))
}

/// Restores `mountpoints-NS_ID.img` (and tmpfs archives) under `opts.new_root` in the mount
/// namespace of task `pid`. All or nothing: on error, what was mounted is unmounted.
pub fn restore_mounts(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
    opts: &MountRestoreOpts,
) -> Result<MountRestore, MountError> {
    let file = image_name(ns_id);
    let entries: Vec<pb::MntEntry> =
        dir.read_entries(&file)
            .map_err(|source| MountError::Image {
                stage: STAGE,
                file: file.clone(),
                source,
            })?;
    let ids: BTreeSet<u32> = entries.iter().map(|e| e.mnt_id).collect();
    let roots: Vec<&pb::MntEntry> = entries
        .iter()
        .filter(|e| !ids.contains(&e.parent_mnt_id))
        .collect();
    let [root] = roots[..] else {
        return Err(MountError::Invalid {
            pid,
            file,
            what: format!(
                "expected one root mount (parent outside the image), found {}",
                roots.len()
            ),
        });
    };
    let root = root.clone();
    drop(roots);
    // Everything from outside the namespace is taken now, before the thread switches.
    let mut ext: BTreeMap<u32, (OwnedFd, bool)> = BTreeMap::new();
    let mut archives: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for e in &entries {
        if e.mnt_id == root.mnt_id {
            continue;
        }
        if let Some(key) = &e.ext_key {
            let src = opts.external.get(key).ok_or_else(|| MountError::Invalid {
                pid,
                file: file.clone(),
                what: format!(
                    "mount {} at {} is external with key {key:?}, and no source was given for it",
                    e.mnt_id, e.mountpoint
                ),
            })?;
            let is_dir = src.is_dir();
            let c = cstr(&src.to_string_lossy());
            // SAFETY: open_tree(2) with a NUL-terminated path; returns a new fd or -1.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
                )
            };
            if fd < 0 {
                return Err(MountError::Mount {
                    pid,
                    mnt_id: e.mnt_id,
                    target: e.mountpoint.clone(),
                    call: format!("open_tree({}, OPEN_TREE_CLONE)", src.display()),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: `fd` is a fresh descriptor this code owns from here on.
            ext.insert(
                e.mnt_id,
                (unsafe { OwnedFd::from_raw_fd(fd as i32) }, is_dir),
            );
        } else if e.fstype == 5 && e.root == "/" && !archives.contains_key(&e.root_dev) {
            let name = tmpfs_image_name(e.root_dev);
            if dir.path().join(&name).exists() {
                let data =
                    std::fs::read(dir.path().join(&name)).map_err(|source| MountError::Io {
                        stage: STAGE,
                        pid,
                        op: "read",
                        path: dir.path().join(&name).display().to_string(),
                        source,
                    })?;
                archives.insert(e.root_dev, data);
            }
        }
    }
    let new_root = opts.new_root.clone();
    let result = in_namespaces(pid, &[Ns::Ipc, Ns::Net, Ns::Mnt], move || {
        let mut mounted = Vec::new();
        match build(
            pid,
            &file,
            &entries,
            &root,
            &new_root,
            ext,
            &archives,
            &mut mounted,
        ) {
            Ok(()) => Ok(mounted),
            Err(e) => {
                // A restore is all or nothing; the first error wins over cleanup errors.
                let _ = unmount_all(pid, &mounted);
                Err(e)
            }
        }
    })
    .map_err(|source| MountError::Enter {
        stage: STAGE,
        source,
    })?;
    Ok(MountRestore {
        pid,
        mounted: result?,
    })
}

#[allow(clippy::too_many_arguments)]
fn build(
    pid: i32,
    file: &str,
    entries: &[pb::MntEntry],
    root: &pb::MntEntry,
    new_root: &Path,
    mut ext: BTreeMap<u32, (OwnedFd, bool)>,
    archives: &BTreeMap<u32, Vec<u8>>,
    mounted: &mut Vec<PathBuf>,
) -> Result<(), MountError> {
    // Restored mounts usable as bind sources: (dev, root, path).
    let mut done: BTreeMap<u32, (u32, String, PathBuf)> = BTreeMap::new();
    done.insert(
        root.mnt_id,
        (root.root_dev, root.root.clone(), new_root.to_path_buf()),
    );
    let mut shared_seen: BTreeMap<u32, u32> = BTreeMap::new();
    let mut pending: Vec<&pb::MntEntry> =
        entries.iter().filter(|e| e.mnt_id != root.mnt_id).collect();
    pending.sort_by_key(|e| e.mnt_id);
    while !pending.is_empty() {
        let mut progressed = false;
        let mut i = 0;
        while i < pending.len() {
            let e = pending[i];
            if !done.contains_key(&e.parent_mnt_id) {
                i += 1;
                continue;
            }
            // The closest restored mount of the same device whose root holds ours.
            let src = done
                .values()
                .filter(|(dev, r, _)| *dev == e.root_dev && is_prefix(r, &e.root))
                .max_by_key(|(_, r, _)| r.len())
                .map(|(_, r, p)| sub(p, r, &e.root));
            let how = if let Some((fd, is_dir)) = ext.remove(&e.mnt_id) {
                How::External(fd, is_dir)
            } else if let Some(p) = src {
                How::Bind(p)
            } else if e.root == "/" && super::can_mount_fresh(e.fstype) {
                How::Fresh(fstype_name(e.fstype).expect("fresh types have names"))
            } else {
                i += 1;
                continue;
            };
            let target = safe_target(pid, new_root, e)?;
            mount_one(pid, e, &target, how, archives, mounted)?;
            let first_of_group = e.shared_id.unwrap_or(0) != 0
                && !shared_seen.contains_key(&e.shared_id.unwrap_or(0));
            if first_of_group {
                // Binds made from this mount later join its peer group by themselves.
                sys_mount(pid, e, &target, None, None, libc::MS_SHARED, None)?;
                shared_seen.insert(e.shared_id.unwrap_or(0), e.mnt_id);
            }
            if let Some(m) = e.master_id.filter(|m| *m != 0) {
                if shared_seen.contains_key(&m) {
                    sys_mount(pid, e, &target, None, None, libc::MS_SLAVE, None)?;
                } else {
                    tracing::warn!(pid, mnt_id = e.mnt_id, master = m, "mount restore: master peer group is outside the container; mount left private");
                }
            }
            done.insert(e.mnt_id, (e.root_dev, e.root.clone(), target));
            pending.remove(i);
            progressed = true;
        }
        if !progressed {
            let stuck: Vec<String> = pending
                .iter()
                .map(|e| {
                    format!(
                        "{} at {} (fstype {}, root {})",
                        e.mnt_id, e.mountpoint, e.fstype, e.root
                    )
                })
                .collect();
            return Err(MountError::Unsupported {
                stage: STAGE,
                pid,
                what: format!(
                    "{file}: no parent or bind source for mounts {}",
                    stuck.join(", ")
                ),
            });
        }
    }
    if root.flags as u64 & libc::MS_RDONLY != 0 {
        sys_mount(
            pid,
            root,
            new_root,
            None,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | root.flags as u64,
            None,
        )?;
    }
    Ok(())
}

fn mount_one(
    pid: i32,
    e: &pb::MntEntry,
    target: &Path,
    how: How,
    archives: &BTreeMap<u32, Vec<u8>>,
    mounted: &mut Vec<PathBuf>,
) -> Result<(), MountError> {
    let sb = u64::from(e.sb_flags.unwrap_or(0));
    match how {
        How::External(fd, is_dir) => {
            make_mountpoint(pid, e, target, is_dir)?;
            let t = cstr(&target.to_string_lossy());
            let empty = cstr("");
            // SAFETY: move_mount(2) of a detached tree fd onto a NUL-terminated target path.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    fd.as_raw_fd(),
                    empty.as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            if rc != 0 {
                return Err(MountError::Mount {
                    pid,
                    mnt_id: e.mnt_id,
                    target: target.display().to_string(),
                    call: "move_mount".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            mounted.push(target.to_path_buf());
        }
        How::Bind(src) => {
            let is_dir = src.is_dir();
            make_mountpoint(pid, e, target, is_dir)?;
            sys_mount(
                pid,
                e,
                target,
                Some(&src.to_string_lossy()),
                None,
                libc::MS_BIND,
                None,
            )?;
            mounted.push(target.to_path_buf());
        }
        How::Fresh(fs) => {
            make_mountpoint(pid, e, target, true)?;
            // A tmpfs gets a superblock of its own: mount it writable, refill it, then make
            // the superblock read-only. Other filesystems (sysfs, mqueue, cgroup) may share
            // one superblock per namespace, which must never be remounted from here: they
            // get their superblock flags at mount time, as CRIU does.
            let tmpfs = e.fstype == 5;
            let first_flags = if tmpfs { sb & !libc::MS_RDONLY } else { sb };
            sys_mount(
                pid,
                e,
                target,
                Some(&e.source),
                Some(fs),
                first_flags,
                Some(&e.options),
            )?;
            mounted.push(target.to_path_buf());
            if e.fstype == 5 {
                let data = archives
                    .get(&e.root_dev)
                    .ok_or_else(|| MountError::Invalid {
                        pid,
                        file: tmpfs_image_name(e.root_dev),
                        what: format!(
                            "tmpfs mount {} at {} has no archive",
                            e.mnt_id, e.mountpoint
                        ),
                    })?;
                tmpfs::extract(data, target).map_err(|source| MountError::Io {
                    stage: STAGE,
                    pid,
                    op: "extract tmpfs archive into",
                    path: target.display().to_string(),
                    source,
                })?;
            }
            if tmpfs && sb & libc::MS_RDONLY != 0 {
                sys_mount(
                    pid,
                    e,
                    target,
                    None,
                    None,
                    libc::MS_REMOUNT | sb,
                    Some(&e.options),
                )?;
            }
        }
    }
    // Per-mount flags (ro, nosuid, nodev, noexec, atime) last, after the content is in.
    sys_mount(
        pid,
        e,
        target,
        None,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | u64::from(e.flags),
        None,
    )
}

/// The mountpoints of `image` that `present` (the target's mountinfo) lacks, in image order.
pub fn missing_mountpoints<'a>(image: &'a [pb::MntEntry], present: &[MountInfo]) -> Vec<&'a str> {
    let have: std::collections::BTreeSet<&str> =
        present.iter().map(|m| m.mountpoint.as_str()).collect();
    image
        .iter()
        .map(|m| m.mountpoint.as_str())
        .filter(|mp| !have.contains(mp))
        .collect()
}

/// For a runtime that builds the mount tree itself from its config (`ferry restore`): checks
/// that every mount of image `ns_id` is there in task `pid`'s namespace. A mount the config
/// does not make (a bind mount dropped from the new config, a mount made inside the running
/// container) would silently vanish from the restored container: it is an error naming it.
pub fn check_tree_made(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<(), MountError> {
    let file = super::image_name(ns_id);
    let image: Vec<pb::MntEntry> = dir
        .read_entries(&file)
        .map_err(|source| MountError::Image {
            stage: "restore check",
            file: file.clone(),
            source,
        })?;
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| MountError::Io {
        stage: "restore check",
        pid,
        op: "read",
        path: path.clone(),
        source,
    })?;
    let present = super::info::parse(pid, &text)?;
    let missing = missing_mountpoints(&image, &present);
    if missing.is_empty() {
        return Ok(());
    }
    Err(MountError::Unsupported {
        stage: "restore check",
        pid,
        what: format!(
            "{file} holds mount(s) at {} that the bundle's config does not make (mounts \
             made inside a running container are not restored)",
            missing.join(", ")
        ),
    })
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn entry(mp: &str) -> pb::MntEntry {
        pb::MntEntry {
            mountpoint: mp.into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_only_the_mounts_the_runtime_did_not_make() {
        let mi = "1 0 0:1 / / rw - ext4 /dev/vda rw\n\
                  2 1 0:2 / /proc rw - proc proc rw\n\
                  3 1 0:3 / /data\\040x rw - ext4 /dev/vda rw\n";
        let present = crate::mounts::info::parse(1, mi).unwrap();
        let image = [entry("/"), entry("/proc"), entry("/data x"), entry("/mnt")];
        assert_eq!(missing_mountpoints(&image, &present), ["/mnt"]);
        assert!(missing_mountpoints(&image[..3], &present).is_empty());
    }
}

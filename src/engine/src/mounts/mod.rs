//! Mount namespace: the container's mount tree, tmpfs contents and external bind mounts.
//!
//! The kernel shows a task's mounts in `/proc/PID/mountinfo`, one line per mount: mount id,
//! parent id, device, the mount's root inside its filesystem, the mountpoint (relative to the
//! task's root), per-mount flags, propagation tags (`shared:N`, `master:N`), filesystem type,
//! source and superblock options. Dump keeps the mounts at or below the container root, writes
//! one CRIU `mnt_entry` per mount to `mountpoints-ID.img` and archives each tmpfs it must
//! recreate as `tmpfs-dev-DEV.tar.gz.img` (gzip'd tar, named by the kernel-encoded device
//! number like CRIU). Files are read through `/proc/PID/root`, which walks the task's own
//! mount table, so the dump never enters the namespace.
//!
//! A mount whose mountpoint the caller names as external (the OCI config's bind mounts) gets
//! an `ext_key`; restore takes it from the caller's source for that key. Other mounts of a
//! device already in the tree are binds of it (read-only paths, masked files); the rest are
//! new filesystems (tmpfs, proc, sysfs, mqueue, devpts, cgroup) mounted fresh.
//!
//! Restore runs on a helper thread inside the target's mount namespace (plus its IPC and
//! network namespaces, which mqueue and sysfs take from the mounting thread): parents before
//! children, bind sources before binds, tmpfs refilled before a read-only remount, per-mount
//! flags last. External sources are cloned in ferry's own namespace with
//! `open_tree(OPEN_TREE_CLONE)` and attached with `move_mount`, which works across mount
//! namespaces where a plain `MS_BIND` does not.

pub mod dump;
pub mod info;
pub mod restore;
pub mod tmpfs;

pub use dump::{dump_mounts, MountDumpOpts};
pub use info::MountInfo;
pub use restore::{check_tree_made, restore_mounts, MountRestore, MountRestoreOpts};

/// Name of the mount image of mount namespace `ns_id`.
pub fn image_name(ns_id: u32) -> String {
    format!("mountpoints-{ns_id}.img")
}

/// Name of the tmpfs archive of device `kdev` (kernel encoding, major << 20 | minor).
pub fn tmpfs_image_name(kdev: u32) -> String {
    format!("tmpfs-dev-{kdev}.tar.gz.img")
}

/// CRIU's `fstype` enum value for a filesystem name (0 = UNSUPPORTED).
pub fn fstype_code(name: &str) -> u32 {
    match name {
        "proc" => 1,
        "sysfs" => 2,
        "devtmpfs" => 3,
        "binfmt_misc" => 4,
        "tmpfs" => 5,
        "devpts" => 6,
        "simfs" => 7,
        "pstore" => 8,
        "securityfs" => 9,
        "fusectl" => 10,
        "debugfs" => 11,
        "cgroup" => 12,
        "aufs" => 13,
        "mqueue" => 14,
        "fuse" => 15,
        "overlay" => 17,
        "autofs" => 18,
        "tracefs" => 19,
        "cgroup2" => 23,
        _ => 0,
    }
}

/// Filesystem name for a CRIU `fstype` code, for a fresh `mount(2)`.
pub fn fstype_name(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "proc",
        2 => "sysfs",
        3 => "devtmpfs",
        4 => "binfmt_misc",
        5 => "tmpfs",
        6 => "devpts",
        8 => "pstore",
        9 => "securityfs",
        10 => "fusectl",
        11 => "debugfs",
        12 => "cgroup",
        14 => "mqueue",
        19 => "tracefs",
        23 => "cgroup2",
        _ => return None,
    })
}

/// Filesystems restore can create from nothing (the rest must be binds or external).
pub fn can_mount_fresh(code: u32) -> bool {
    matches!(
        code,
        1 | 2 | 4 | 5 | 6 | 8 | 9 | 10 | 11 | 12 | 14 | 19 | 23
    )
}

/// Errors of the mounts module.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Entering the task's namespaces failed.
    #[error("mounts {stage}: {source}")]
    Enter {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: crate::uts::enter::EnterError,
    },
    /// File I/O on a path.
    #[error("mounts {stage} of task {pid}: {op} {path}: {source}")]
    Io {
        /// Stage.
        stage: &'static str,
        /// Task.
        pid: i32,
        /// Operation.
        op: &'static str,
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A malformed `/proc/PID/mountinfo` line.
    #[error("mounts dump of task {pid}: /proc/{pid}/mountinfo line {line}: {what}")]
    Parse {
        /// Task.
        pid: i32,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A mount system call failed.
    #[error("mounts restore of task {pid}: mount {mnt_id} at {target}: {call}: {source}")]
    Mount {
        /// Task.
        pid: i32,
        /// Dumped mount id.
        mnt_id: u32,
        /// Target path in the task's namespace.
        target: String,
        /// The call.
        call: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Image I/O.
    #[error("mounts {stage}: image {file}: {source}")]
    Image {
        /// Stage.
        stage: &'static str,
        /// File.
        file: String,
        /// Cause.
        source: ferry_images::dir::DirError,
    },
    /// A tree ferry cannot dump or restore (named precisely).
    #[error("mounts {stage} of task {pid}: unsupported: {what}")]
    Unsupported {
        /// Stage.
        stage: &'static str,
        /// Task.
        pid: i32,
        /// What.
        what: String,
    },
    /// An image that contradicts itself.
    #[error("mounts restore of task {pid}: {file}: {what}")]
    Invalid {
        /// Task.
        pid: i32,
        /// File.
        file: String,
        /// What.
        what: String,
    },
}

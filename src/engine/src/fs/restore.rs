//! Restore half of fs-PID.img: root (chroot when it is not `/`), cwd (chdir) and umask, set by
//! the task's Rust half from the paths of the files.img entries the image names.

use std::collections::BTreeMap;

use ferry_images::pb;
use thiserror::Error;

/// Errors restoring cwd/root/umask.
#[derive(Debug, Error)]
pub enum FsError {
    /// The image names a file id files.img lacks.
    #[error("task {pid}: fs image names file id {id}, which files.img does not have")]
    NoFile {
        /// Task.
        pid: u32,
        /// File id.
        id: u32,
    },
    /// chdir/chroot failed.
    #[error("task {pid}: {op} {path}: {source}")]
    Sys {
        /// Task.
        pid: u32,
        /// Operation.
        op: &'static str,
        /// Path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn path_of(pid: u32, files: &BTreeMap<u32, pb::FileEntry>, id: u32) -> Result<String, FsError> {
    files
        .get(&id)
        .and_then(|f| f.reg.as_ref())
        .map(|r| r.name.clone())
        .ok_or(FsError::NoFile { pid, id })
}

/// Checks that the paths exist (run by the coordinator before forking).
pub fn check(
    pid: u32,
    fs: &pb::FsEntry,
    files: &BTreeMap<u32, pb::FileEntry>,
) -> Result<(), FsError> {
    for id in [fs.cwd_id, fs.root_id] {
        let p = path_of(pid, files, id)?;
        if let Err(e) = std::fs::metadata(&p) {
            return Err(FsError::Sys {
                pid,
                op: "stat",
                path: p,
                source: e,
            });
        }
    }
    Ok(())
}

/// Sets root, cwd and umask of the calling task.
pub fn apply(
    pid: u32,
    fs: &pb::FsEntry,
    files: &BTreeMap<u32, pb::FileEntry>,
) -> Result<(), FsError> {
    let root = path_of(pid, files, fs.root_id)?;
    if root != "/" {
        std::os::unix::fs::chroot(&root).map_err(|e| FsError::Sys {
            pid,
            op: "chroot",
            path: root.clone(),
            source: e,
        })?;
    }
    let cwd = path_of(pid, files, fs.cwd_id)?;
    std::env::set_current_dir(&cwd).map_err(|e| FsError::Sys {
        pid,
        op: "chdir",
        path: cwd,
        source: e,
    })?;
    // SAFETY: umask only changes this process's mask.
    unsafe { libc::umask(fs.umask.unwrap_or(0o022) as libc::mode_t) };
    Ok(())
}

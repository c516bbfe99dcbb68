//! Dump half: cwd, root and umask into fs-PID.img.
//!
//! Kernel mechanism: /proc/PID/cwd and /proc/PID/root are links to the task's working and root
//! directories (readlink gives the path in ferry's view, stat the inode); the umask comes from
//! the parasite (`umask` in the task), which /proc/PID/status also shows.

use ferry_images::pb;

use std::os::unix::fs::MetadataExt;

use crate::files::dump::FileTable;
use crate::mem::dump::MappedFile;

/// Errors of the fs dump.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A /proc link could not be read.
    #[error("task {pid}: reading {path}: {source}")]
    Proc {
        pid: i32,
        path: String,
        source: std::io::Error,
    },
    /// cwd or root is a deleted directory.
    #[error("task {pid}: {what} {path:?} was deleted; not supported yet")]
    Deleted {
        pid: i32,
        what: &'static str,
        path: String,
    },
}

fn dir_entry(pid: i32, what: &'static str, files: &mut FileTable) -> Result<u32, FsError> {
    let link = format!("/proc/{pid}/{what}");
    let err = |source| FsError::Proc {
        pid,
        path: link.clone(),
        source,
    };
    let path = std::fs::read_link(&link).map_err(err)?;
    let path = path.to_string_lossy().into_owned();
    if path.ends_with(" (deleted)") {
        return Err(FsError::Deleted { pid, what, path });
    }
    let md = std::fs::metadata(&link).map_err(err)?;
    let f = MappedFile {
        path,
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode(),
        size: md.size(),
    };
    Ok(files.reg_object(&f, 0, false))
}

/// The fs entry of task `pid`.
pub fn fs_entry(pid: i32, umask: u32, files: &mut FileTable) -> Result<pb::FsEntry, FsError> {
    Ok(pb::FsEntry {
        cwd_id: dir_entry(pid, "cwd", files)?,
        root_id: dir_entry(pid, "root", files)?,
        umask: Some(umask),
    })
}

//! File locks (file-locks.img), with `--file-locks`: flock, POSIX and OFD locks.
//!
//! Kernel mechanism: /proc/PID/fdinfo/N lists, as `lock:` lines in /proc/locks format
//! (`ID: KIND ADVISORY READ|WRITE PID MAJ:MIN:INO START END|EOF`), the locks held through that
//! fd: flock and OFD locks belong to the open file description, POSIX locks to the task. The dump
//! records each lock once with the task and fd that hold it, as CRIU does (flag FL_POSIX 1,
//! FL_FLOCK 2, FL_OFD 4; type F_RDLCK/F_WRLCK; len 0 = to EOF). A restore takes each lock again
//! inside its task once its fds are in place (`flock`, `F_SETLK`, `F_OFD_SETLK`); the
//! description is the same one the other fds share, so a flock held through a shared description
//! is held once, as before. Without `--file-locks` a tree holding locks is refused at dump.

use std::collections::HashSet;

use ferry_images::{pb, ImageDir};

use super::dump::{Fd, FilesError};
use super::restore::{img, RestoreError};

const FL_POSIX: u32 = 1;
const FL_FLOCK: u32 = 2;
const FL_OFD: u32 = 4;

/// The locks the fd `fd` shows that were not recorded yet; `seen` deduplicates locks listed
/// through several fds (key: kind, owner, inode, range, and the description for flock/OFD).
pub fn dump(
    fd: &Fd,
    file_id: u32,
    seen: &mut HashSet<(u32, i64, String, i64, i64)>,
) -> Result<Vec<pb::FileLockEntry>, FilesError> {
    let mut out = Vec::new();
    for l in fd.info.lines().filter_map(|l| l.strip_prefix("lock:")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.contains(&"->") {
            continue; // a waiter, not a holder
        }
        let bad = || fd.state("file lock", format!("cannot parse lock line {l:?}"));
        if w.len() < 8 {
            return Err(bad());
        }
        let flag = match w[1] {
            "POSIX" => FL_POSIX,
            "FLOCK" => FL_FLOCK,
            "OFDLCK" => FL_OFD,
            other => return Err(fd.state("file lock", format!("{other} locks are not supported"))),
        };
        if w[2] != "ADVISORY" {
            return Err(fd.state("file lock", format!("{} locks are not supported", w[2])));
        }
        let ty = match w[3] {
            "READ" => libc::F_RDLCK,
            "WRITE" => libc::F_WRLCK,
            other => return Err(fd.state("file lock", format!("lock type {other}"))),
        };
        let start: i64 = w[6].parse().map_err(|_| bad())?;
        let len = match w[7] {
            "EOF" => 0,
            e => e.parse::<i64>().map_err(|_| bad())? - start + 1,
        };
        let owner = if flag == FL_POSIX {
            i64::from(fd.pid)
        } else {
            -i64::from(file_id)
        };
        if !seen.insert((flag, owner, w[5].to_string(), start, len)) {
            continue;
        }
        out.push(pb::FileLockEntry {
            flag,
            r#type: ty as u32,
            pid: fd.pid,
            fd: fd.fd,
            start,
            len,
        });
    }
    Ok(out)
}

/// Writes file-locks.img.
pub fn write(dir: &ImageDir, locks: &[pb::FileLockEntry]) -> Result<(), FilesError> {
    if locks.is_empty() {
        return Ok(());
    }
    dir.write_entries("file-locks.img", locks)
        .map_err(|source| FilesError::Write {
            image: "file-locks.img".into(),
            source,
        })
}

// ---- restore ----

/// file-locks.img, if the images have one.
pub fn load(dir: &ImageDir) -> Result<Vec<pb::FileLockEntry>, RestoreError> {
    if !dir.has("file-locks.img") {
        return Ok(Vec::new());
    }
    dir.read_entries("file-locks.img")
        .map_err(img("file-locks.img"))
}

/// Takes the locks task `pid` held (runs in the task, after its fds are in place).
pub fn apply(pid: u32, locks: &[pb::FileLockEntry]) -> Result<(), RestoreError> {
    for l in locks.iter().filter(|l| l.pid as u32 == pid) {
        let fd = l.fd;
        let r = match l.flag {
            FL_FLOCK => {
                let op = if l.r#type as i32 == libc::F_WRLCK {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                };
                // SAFETY: flock on an fd of this task.
                unsafe { libc::flock(fd, op | libc::LOCK_NB) }
            }
            FL_POSIX | FL_OFD => {
                // SAFETY: flock is plain data; zeroed is a valid value.
                let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                fl.l_type = l.r#type as i16;
                fl.l_whence = libc::SEEK_SET as i16;
                fl.l_start = l.start;
                fl.l_len = l.len;
                let cmd = if l.flag == FL_OFD {
                    libc::F_OFD_SETLK
                } else {
                    libc::F_SETLK
                };
                // SAFETY: fcntl on an fd of this task with a valid struct flock.
                unsafe { libc::fcntl(fd, cmd, &fl) }
            }
            other => {
                return Err(RestoreError::Unsupported {
                    pid,
                    fd: fd as u32,
                    what: format!("file lock of kind {other}"),
                })
            }
        };
        if r != 0 {
            return Err(RestoreError::State {
                pid,
                fd: fd as u32,
                kind: "file lock",
                what: format!(
                    "taking lock (kind {}, type {}, {}+{}): {}",
                    l.flag,
                    l.r#type,
                    l.start,
                    l.len,
                    std::io::Error::last_os_error()
                ),
            });
        }
    }
    Ok(())
}

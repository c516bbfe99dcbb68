//! pidfds (PIDFD entries).
//!
//! Kernel mechanism: a pidfd refers to a process; its fdinfo shows `Pid` (in ferry's pid
//! namespace, -1 once the process is gone) and `NSpid` (down to the holder's namespace). The
//! restore cannot open pidfds in the coordinator (no task of the tree exists yet), so each task
//! opens its own with `pidfd_open(nspid)` once its fds are in place: by then the task itself, its
//! ancestors and its children exist, which covers the pidfds a task can hold for its own tree
//! except ones of later siblings (an error naming the pid). Pidfds of processes that died are
//! refused at dump.

use std::os::fd::{AsRawFd, OwnedFd};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, RestoreError};

// ---- dump ----

/// The PIDFD entry of an fd.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let pid: i64 = super::field(&fd.info, "Pid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fd.state("pidfd", "fdinfo has no Pid"))?;
    if pid <= 0 {
        return Err(fd.state("pidfd", "its process has exited (not supported)"));
    }
    let nspid: i32 = super::field(&fd.info, "NSpid")
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .unwrap_or(pid as i32);
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Pidfd as i32,
        id,
        pidfd: Some(pb::PidfdEntry {
            id,
            ino: std::os::unix::fs::MetadataExt::ino(&fd.md),
            flags: fd.flags,
            nspid,
            fown: fd.fown,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// A pidfd for the entry's process, opened in the task that holds it, put at `target`.
pub fn install(
    pid: u32,
    target: u32,
    e: &pb::PidfdEntry,
    cloexec: i32,
) -> Result<(), RestoreError> {
    let flags = e.flags as i32 & libc::O_NONBLOCK;
    // SAFETY: pidfd_open with integer arguments; returns a new fd or -1.
    let n = unsafe { libc::syscall(libc::SYS_pidfd_open, e.nspid, flags) } as i32;
    let pfd: OwnedFd = owned(
        n,
        "pidfd_open",
        &format!("task {pid} fd {target} (pid {})", e.nspid),
    )
    .map_err(|err| RestoreError::State {
        pid,
        fd: target,
        kind: "pidfd",
        what: format!("process {} does not exist at this point: {err}", e.nspid),
    })?;
    if pfd.as_raw_fd() == target as i32 {
        // Already in place (the lowest free number was the wanted one).
        let raw = std::os::fd::IntoRawFd::into_raw_fd(pfd);
        let fdflags = if cloexec != 0 { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: F_SETFD on the fd we just placed; it stays open as the task's fd.
        unsafe { libc::fcntl(raw, libc::F_SETFD, fdflags) };
        return Ok(());
    }
    // SAFETY: dup3 from our fresh pidfd to the fd number the image names.
    if unsafe { libc::dup3(pfd.as_raw_fd(), target as i32, cloexec) } < 0 {
        return Err(super::restore::sys(
            "dup3 into place",
            &format!("task {pid} fd {target}"),
        ));
    }
    Ok(())
}

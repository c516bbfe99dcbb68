//! File descriptors: files.img (one entry per open file description), fdinfo-N.img (each task's
//! fd table) and the images some kinds carry beside them (pipes-data, tty-info, ghost-file,
//! remap-fpath, memfd).
//!
//! Kernel mechanism: every fd points at an open file description (`struct file`); fds made by
//! dup, fork or SCM_RIGHTS share one. /proc/PID/fd/N names the object, /proc/PID/fdinfo/N shows
//! the description's position and flags plus per-kind state (eventfd count, epoll targets,
//! signalfd mask, timerfd settings, inotify watches, locks), and `kcmp(KCMP_FILE)` says whether
//! two fds share one description. A dump writes one files.img entry per description; a restore
//! opens each description once in the coordinator and every task `dup3`s it into place, so what
//! was shared is shared again.
//!
//! Layout: [`dump`] and [`restore`] are small dispatchers by fd kind; each kind lives in one
//! module holding both halves ([`reg`], [`pipe`], [`fifo`], [`tty`], [`pty`], [`eventfd`],
//! [`epoll`], [`signalfd`], [`timerfd`], [`inotify`], [`fanotify`], [`memfd`], [`pidfd`],
//! [`locks`]); [`mapped`] gives the files behind memory mappings their entries. [`inherit`] lets
//! the caller hand in fds that stand for files of the images (CRIU's `--inherit-fd`: a
//! container's stdio pipes and terminal).
//! Sockets (`unix*`, `inet*`, `tcp`) hook in through one match arm in each dispatcher. SysV IPC
//! objects are not files and, as in CRIU, are not dumped for a tree in the host IPC namespace
//! (a container's IPC namespace is dumped whole by `crate::ipc`).

pub mod dump;
pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod inet;
pub mod inherit;
pub mod inotify;
pub mod locks;
pub mod mapped;
pub mod memfd;
pub mod pidfd;
pub mod pipe;
pub mod pty;
pub mod reg;
pub mod restore;
pub mod signalfd;
pub mod sock_diag;
pub mod timerfd;
pub mod tty;
pub mod unix;

use ferry_images::pb;

/// struct f_owner_ex (fcntl.h), which the libc crate does not define for glibc.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnerEx {
    /// F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP.
    pub type_: i32,
    /// The owner.
    pub pid: i32,
}

/// fcntl commands for the owner (asm-generic/fcntl.h).
pub const F_SETOWN_EX: i32 = 15;
/// See [`F_SETOWN_EX`].
pub const F_GETOWN_EX: i32 = 16;
/// fcntl commands for the I/O signal (asm-generic/fcntl.h).
pub const F_SETSIG: i32 = 10;
/// See [`F_SETSIG`].
pub const F_GETSIG: i32 = 11;

/// An fd of ferry's on the very description task `pid` holds as `fd` (`pidfd_getfd`; the task
/// is seized, so ferry may).
pub fn borrow(pid: i32, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pfd = pidfd::open(pid)?;
    // SAFETY: pidfd_getfd on our pidfd; returns a new fd on the same description or -1.
    let n = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pfd),
            fd,
            0,
        )
    } as i32;
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: n is a fresh fd we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(n) })
}

/// An empty fown entry, for REG objects not held by an fd (exe, mappings, cwd, root).
pub fn fown() -> pb::FownEntry {
    pb::FownEntry::default()
}

/// The F_SETOWN owner and F_SETSIG signal of fd `fd` of `pid`, read from the description itself:
/// `pidfd_getfd` gives ferry an fd on the very same description (the task is seized, so ferry
/// may). A task whose fds cannot be borrowed so yields an empty entry.
pub fn fown_of(pid: i32, fd: i32) -> pb::FownEntry {
    let Ok(borrowed) = borrow(pid, fd) else {
        return fown();
    };
    let n = std::os::fd::AsRawFd::as_raw_fd(&borrowed);
    let mut ex = OwnerEx::default();
    // SAFETY: F_GETOWN_EX fills an f_owner_ex; F_GETSIG takes no argument; `n` is ours.
    let (r, sig) = unsafe {
        (
            libc::fcntl(n, F_GETOWN_EX, &mut ex),
            libc::fcntl(n, F_GETSIG),
        )
    };
    drop(borrowed); // the description stays, held by the task
    if r != 0 || (ex.pid == 0 && sig <= 0) {
        return fown();
    }
    pb::FownEntry {
        uid: 0,
        euid: 0,
        signum: sig.max(0) as u32,
        pid_type: ex.type_ as u32,
        pid: ex.pid as u32,
    }
}

/// One `key:` field of an fdinfo text, trimmed (`None` when absent).
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

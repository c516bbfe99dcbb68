//! Entering another task's namespaces without moving ferry's main thread.
//!
//! `setns(2)` for the UTS, IPC and network namespaces changes only the calling thread, and so
//! does a mount namespace once the thread has its own `fs_struct` (`unshare(CLONE_FS)`: the
//! kernel refuses to switch a mount namespace shared with other threads). So a short-lived
//! scoped thread opens `/proc/PID/ns/*`, switches, runs the work and exits, taking its
//! namespace references with it. Children the thread spawns (`ip`, `nft`) inherit its
//! namespaces, which is how ferry runs iproute2 and nftables inside a container's netns.

use std::fs::File;
use std::os::fd::AsFd;

use nix::sched::{setns, unshare, CloneFlags};

/// A namespace kind a helper thread can enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// Hostname and domainname.
    Uts,
    /// SysV IPC and POSIX message queues.
    Ipc,
    /// Network stack.
    Net,
    /// Mount table (entered last: it changes how later paths resolve).
    Mnt,
}

impl Ns {
    /// Name under `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Ns::Uts => "uts",
            Ns::Ipc => "ipc",
            Ns::Net => "net",
            Ns::Mnt => "mnt",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Ns::Uts => CloneFlags::CLONE_NEWUTS,
            Ns::Ipc => CloneFlags::CLONE_NEWIPC,
            Ns::Net => CloneFlags::CLONE_NEWNET,
            Ns::Mnt => CloneFlags::CLONE_NEWNS,
        }
    }
}

/// Errors entering a task's namespaces.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The namespace file could not be opened (task gone, or no such namespace).
    #[error("task {pid}: open {path}: {source}")]
    Open {
        /// Task.
        pid: i32,
        /// `/proc/PID/ns/X`.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `setns(2)` refused.
    #[error("task {pid}: setns into {path}: {source}")]
    Setns {
        /// Task.
        pid: i32,
        /// `/proc/PID/ns/X`.
        path: String,
        /// Cause.
        source: nix::Error,
    },
    /// `unshare(CLONE_FS)` before a mount namespace switch failed.
    #[error("task {pid}: unshare(CLONE_FS) before entering its mount namespace: {source}")]
    UnshareFs {
        /// Task.
        pid: i32,
        /// Cause.
        source: nix::Error,
    },
    /// The helper thread panicked.
    #[error("task {pid}: the namespace helper thread panicked")]
    Panicked {
        /// Task.
        pid: i32,
    },
}

/// Runs `f` on a fresh thread that has entered `kinds` namespaces of task `pid`.
///
/// The calling thread never changes namespace; the helper thread ends when `f` returns.
pub fn in_namespaces<T, F>(pid: i32, kinds: &[Ns], f: F) -> Result<T, EnterError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    // Open every namespace file first: entering the mount namespace changes what /proc is.
    let mut order: Vec<Ns> = kinds.to_vec();
    order.sort_by_key(|k| *k == Ns::Mnt);
    let mut files = Vec::with_capacity(order.len());
    for k in &order {
        let path = format!("/proc/{pid}/ns/{}", k.proc_name());
        let f = File::open(&path).map_err(|source| EnterError::Open {
            pid,
            path: path.clone(),
            source,
        })?;
        files.push((*k, path, f));
    }
    std::thread::scope(|s| {
        let h = s.spawn(move || -> Result<T, EnterError> {
            if order.contains(&Ns::Mnt) {
                unshare(CloneFlags::CLONE_FS)
                    .map_err(|source| EnterError::UnshareFs { pid, source })?;
            }
            for (k, path, file) in &files {
                setns(file.as_fd(), k.flag()).map_err(|source| EnterError::Setns {
                    pid,
                    path: path.clone(),
                    source,
                })?;
            }
            drop(files);
            Ok(f())
        });
        h.join().map_err(|_| EnterError::Panicked { pid })?
    })
}

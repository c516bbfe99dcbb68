//! Restore half of the process tree: tasks come back with their original pids via
//! `clone3(set_tid)`, each forked by its restored parent so parent links are as they were;
//! session leaders call `setsid`, group leaders `setpgid(0, 0)` and members join their leader's
//! group; zombies are forked and exit at once with their recorded status.
//!
//! A pid still visible in /proc blocks the restore; a zombie may be waited for a bounded time
//! (PID 1 reaps orphans lazily on this kind of machine), anything else is reported by pid and
//! name before a single task is forked.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use ferry_images::pb;
use thiserror::Error;

/// `tc.task_state` values.
pub mod state {
    pub const ALIVE: u32 = 1;
    pub const DEAD: u32 = 2;
    pub const STOPPED: u32 = 3;
}

/// Errors forking the tree.
#[derive(Debug, Error)]
pub enum PstreeError {
    /// A pid the tree needs is in use.
    #[error("pid {pid} is taken by a running process ({comm}); the tree needs it free")]
    PidTaken {
        /// The pid.
        pid: u32,
        /// Who holds it.
        comm: String,
    },
    /// A pid stayed a zombie too long.
    #[error("pid {pid} is still held by a zombie after {waited:?}")]
    PidZombie {
        /// The pid.
        pid: u32,
        /// How long we waited.
        waited: Duration,
    },
    /// clone3 failed.
    #[error("clone3 with pid {pid}: {source}")]
    Clone {
        /// The pid.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// The tree is not restorable as is.
    #[error("task {pid}: {what} is not supported by ferry's restore yet")]
    Unsupported {
        /// Task.
        pid: u32,
        /// What.
        what: String,
    },
    /// The pstree image is inconsistent.
    #[error("pstree.img: {0}")]
    Bad(String),
}

/// Orders pstree entries parent-first and checks links; returns child indices per task.
pub fn children(entries: &[pb::PstreeEntry]) -> Result<Vec<Vec<usize>>, PstreeError> {
    if entries.is_empty() {
        return Err(PstreeError::Bad("no tasks".into()));
    }
    let mut kids = vec![Vec::new(); entries.len()];
    for (i, e) in entries.iter().enumerate().skip(1) {
        let p = entries[..i]
            .iter()
            .position(|p| p.pid == e.ppid)
            .ok_or_else(|| {
                PstreeError::Bad(format!(
                    "task {} names parent {}, which comes nowhere before it",
                    e.pid, e.ppid
                ))
            })?;
        kids[p].push(i);
    }
    // Group leaders first, so siblings joining a sibling's group find it.
    for k in &mut kids {
        k.sort_by_key(|&c| entries[c].pgid != entries[c].pid);
    }
    Ok(kids)
}

fn proc_state(pid: u32) -> Option<(char, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let st = s[close + 1..].trim_start().chars().next()?;
    Some((st, comm))
}

/// Waits (bounded) until `pid` is free: absent from /proc. A zombie may linger while its
/// parent (often PID 1) gets round to reaping it.
pub fn wait_free(pid: u32, limit: Duration) -> Result<(), PstreeError> {
    let start = Instant::now();
    loop {
        match proc_state(pid) {
            None => return Ok(()),
            Some(('Z', _)) | Some(('X', _)) => {
                if start.elapsed() >= limit {
                    return Err(PstreeError::PidZombie {
                        pid,
                        waited: start.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Some((_, comm)) => return Err(PstreeError::PidTaken { pid, comm }),
        }
    }
}

#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3` as a fork (SIGCHLD to the parent, no shared memory) with `flags` and, when given, the
/// pid the child gets in the innermost pid namespace: 0 in the child, its pid in the parent.
pub fn clone3_fork(flags: u64, set_tid: Option<u32>) -> std::io::Result<u32> {
    clone3_fork_args(flags, set_tid, None)
}

/// [`clone3_fork`] whose child is born in the cgroup v2 directory open as `cgroup`
/// (`CLONE_INTO_CGROUP`: no later move through `cgroup.procs`, so no wait on the kernel's cgroup
/// threadgroup lock).
pub fn clone3_fork_into_cgroup(flags: u64, cgroup: RawFd) -> std::io::Result<u32> {
    clone3_fork_args(flags | CLONE_INTO_CGROUP, None, Some(cgroup))
}

/// clone3's flag for [`CloneArgs::cgroup`] (linux/sched.h; libc does not name it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone3_fork_args(
    flags: u64,
    set_tid: Option<u32>,
    cgroup: Option<RawFd>,
) -> std::io::Result<u32> {
    let want = set_tid.map(u64::from);
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: want.as_ref().map_or(0, |w| w as *const u64 as u64),
        set_tid_size: u64::from(want.is_some()),
        cgroup: cgroup.map_or(0, |fd| fd as u64),
    };
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork(); every caller is
    // single-threaded (the restore coordinator, a task it forked, or ferry building a
    // container), so the child's copy of every lock is consistent. `want` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// Forks a child process with pid `pid` (like fork(); returns 0 in the child). EEXIST (a pid
/// just freed by a lazy reaper) is retried within `limit`.
pub fn fork_with_pid(pid: u32, limit: Duration) -> Result<u32, PstreeError> {
    let start = Instant::now();
    loop {
        let e = match clone3_fork(0, Some(pid)) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if e.raw_os_error() == Some(libc::EEXIST) && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(match proc_state(pid) {
                Some((_, comm)) => PstreeError::PidTaken { pid, comm },
                None => PstreeError::Clone { pid, source: e },
            });
        }
        return Err(PstreeError::Clone { pid, source: e });
    }
}

/// Sets session and process group of the calling (just forked) task.
pub fn set_session(e: &pb::PstreeEntry, is_root: bool, shell_job: bool) -> Result<(), PstreeError> {
    let pid = e.pid;
    let fail = |what: &str| PstreeError::Unsupported {
        pid,
        what: format!("{what}: {}", std::io::Error::last_os_error()),
    };
    // SAFETY: getsid/getpid have no memory arguments.
    let leads = unsafe { libc::getsid(0) == libc::getpid() };
    if e.sid == pid && !leads {
        // SAFETY: setsid has no memory arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(fail("setsid"));
        }
    } else if e.sid != pid && is_root && !shell_job {
        return Err(PstreeError::Unsupported {
            pid,
            what: format!(
                "a root task in session {} led from outside the tree (use --shell-job)",
                e.sid
            ),
        });
    }
    // SAFETY: getpgid/setpgid have no memory arguments.
    let cur = unsafe { libc::getpgid(0) } as u32;
    if e.pgid != cur {
        // SAFETY: as above.
        if unsafe { libc::setpgid(0, e.pgid as i32) } < 0 {
            return Err(fail(&format!("setpgid to group {}", e.pgid)));
        }
    }
    Ok(())
}

/// Ends a just-forked zombie the way it had ended: exit code or fatal signal.
pub fn become_zombie(exit_code: u32) -> ! {
    let sig = (exit_code & 0x7f) as i32;
    if sig != 0 {
        // SAFETY: resetting the disposition and raising a signal on ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let none: u64 = 0;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &none,
                0usize,
                8usize,
            );
            libc::kill(libc::getpid(), sig);
        }
    }
    // SAFETY: _exit ends the process without running any Rust destructors.
    unsafe { libc::_exit(((exit_code >> 8) & 0xff) as i32) }
}

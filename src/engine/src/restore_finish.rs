//! The last step of a restore, under ptrace: let every thread through `rt_sigreturn`, then
//! remove the restorer from the task before it runs a single instruction of its own.
//!
//! Each thread waits in the restorer (futex on its slot's go word) with its state fully built.
//! ferry seizes every thread (PTRACE_O_EXITKILL: if ferry dies now, the half-made tree dies too),
//! releases them, and follows each with PTRACE_SYSCALL until the syscall-exit stop of its
//! `rt_sigreturn`: there the registers are already the task's own. On the main thread ferry then
//! runs `munmap(restore range)` from the blob's `syscall; int3` pair — the stop at that syscall's
//! exit comes before the return to user space, so the unmapped code never runs — writes the
//! task's registers back and detaches. Signals that arrive meanwhile are held and re-sent on detach.
//!
//! [`let_go`] is that stage for a whole tree; the coordinator of a plain restore and the outside
//! half of an in-place restore (`pidns::inplace_finish`) both run it, each with its own map from
//! the images' tids to the tids its /proc shows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_blob_abi::restorer::Range;
use thiserror::Error;

use crate::pstree::restore::state;
use crate::restore::{Log, RestoreError, TaskPlan};
use crate::stage::Ctl;

/// Errors of the final stage.
#[derive(Debug, Error)]
pub enum FinishError {
    /// A ptrace request failed.
    #[error("thread {tid}: {op}: {source}")]
    Ptrace {
        /// Thread.
        tid: u32,
        /// Request.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The thread ended instead of stopping.
    #[error("thread {tid} exited during the final stage (wait status {status:#x})")]
    Died {
        /// Thread.
        tid: u32,
        /// Raw status.
        status: i32,
    },
    /// The remote munmap failed.
    #[error("thread {tid}: munmap of the restore range returned {ret}")]
    Munmap {
        /// Thread.
        tid: u32,
        /// Kernel result.
        ret: i64,
    },
    /// Too slow.
    #[error("thread {tid}: no rt_sigreturn within {0:?}", .limit)]
    Timeout {
        /// Thread.
        tid: u32,
        /// Limit.
        limit: Duration,
    },
}

const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;
const OP_ENTRY: u8 = 1;
const OP_EXIT: u8 = 2;
const NR_RT_SIGRETURN: u64 = 15;
const NR_MUNMAP: u64 = 11;

fn pt(op: &'static str, tid: u32, r: libc::c_long) -> Result<libc::c_long, FinishError> {
    if r < 0 {
        return Err(FinishError::Ptrace {
            tid,
            op,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(r)
}

/// Seizes and interrupts a thread; returns once it is in a ptrace stop.
pub fn seize(tid: u32) -> Result<(), FinishError> {
    let opts = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL;
    // SAFETY: ptrace requests on a thread of a task this process forked; no memory arguments.
    unsafe {
        pt(
            "PTRACE_SEIZE",
            tid,
            libc::ptrace(libc::PTRACE_SEIZE, tid, 0, opts),
        )?;
        pt(
            "PTRACE_INTERRUPT",
            tid,
            libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
        )?;
    }
    wait_stop(tid).map(|_| ())
}

/// Stops a thread this process already traces (seized earlier with the same options).
pub fn interrupt(tid: u32) -> Result<(), FinishError> {
    // SAFETY: ptrace request on our own tracee; no memory arguments.
    pt("PTRACE_INTERRUPT", tid, unsafe {
        libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0)
    })?;
    wait_stop(tid).map(|_| ())
}

fn wait_stop(tid: u32) -> Result<i32, FinishError> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on a traced thread writing into a local.
        let r = unsafe { libc::waitpid(tid as i32, &mut st, libc::__WALL) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        pt("waitpid", tid, r as libc::c_long)?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            return Err(FinishError::Died { tid, status: st });
        }
        return Ok(st);
    }
}

fn syscall_info(tid: u32) -> Result<(u8, u64), FinishError> {
    let mut buf = [0u8; 88];
    // SAFETY: PTRACE_GET_SYSCALL_INFO writes at most buf.len() bytes into buf.
    pt("PTRACE_GET_SYSCALL_INFO", tid, unsafe {
        libc::ptrace(
            PTRACE_GET_SYSCALL_INFO as libc::c_uint,
            tid,
            buf.len(),
            buf.as_mut_ptr(),
        )
    })?;
    let op = buf[0];
    let nr = u64::from_le_bytes(buf[24..32].try_into().unwrap_or([0; 8]));
    Ok((op, nr))
}

fn resume(tid: u32, sig: i32) -> Result<(), FinishError> {
    // SAFETY: resumes a stopped tracee to its next syscall stop; no memory arguments.
    pt("PTRACE_SYSCALL", tid, unsafe {
        libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, sig)
    })
    .map(|_| ())
}

/// Follows a released thread to the syscall-exit stop of its rt_sigreturn. Returns the signals
/// that arrived meanwhile (to re-send at detach).
pub fn to_sigreturn_exit(tid: u32, limit: Duration) -> Result<Vec<i32>, FinishError> {
    let start = Instant::now();
    let mut held = Vec::new();
    let mut in_sigreturn = false;
    resume(tid, 0)?;
    loop {
        if start.elapsed() > limit {
            return Err(FinishError::Timeout { tid, limit });
        }
        let st = wait_stop(tid)?;
        let sig = libc::WSTOPSIG(st);
        if sig == (libc::SIGTRAP | 0x80) {
            let (op, nr) = syscall_info(tid)?;
            if op == OP_ENTRY && nr == NR_RT_SIGRETURN {
                in_sigreturn = true;
            } else if op == OP_EXIT && in_sigreturn {
                return Ok(held);
            }
        } else if st >> 16 == 0 && sig != libc::SIGTRAP && sig != libc::SIGSTOP {
            held.push(sig); // a signal-delivery stop: hold it until the task is its own again
        }
        resume(tid, 0)?;
    }
}

/// At the rt_sigreturn exit stop of the main thread: runs munmap(start, len) from the blob's
/// syscall instruction at `insn`, restores the registers, and returns the signals that arrived
/// meanwhile (held for re-sending).
pub fn unmap_restorer(tid: u32, insn: u64, start: u64, len: u64) -> Result<Vec<i32>, FinishError> {
    // SAFETY: an all-zero user_regs_struct is a valid value for the kernel to overwrite.
    let mut saved: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct into `saved`.
    pt("PTRACE_GETREGS", tid, unsafe {
        libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut saved)
    })?;
    let mut r = saved;
    r.rip = insn;
    r.rax = NR_MUNMAP;
    r.orig_rax = u64::MAX;
    r.rdi = start;
    r.rsi = len;
    // SAFETY: PTRACE_SETREGS reads one user_regs_struct from `r`.
    pt("PTRACE_SETREGS", tid, unsafe {
        libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &r)
    })?;
    let mut entered = false;
    let mut held = Vec::new();
    loop {
        resume(tid, 0)?;
        let st = wait_stop(tid)?;
        let sig = libc::WSTOPSIG(st);
        if sig != (libc::SIGTRAP | 0x80) {
            if st >> 16 == 0 && sig != libc::SIGTRAP && sig != libc::SIGSTOP {
                held.push(sig);
            }
            continue;
        }
        let (op, nr) = syscall_info(tid)?;
        if op == OP_ENTRY && nr == NR_MUNMAP {
            entered = true;
        } else if op == OP_EXIT && entered {
            break;
        }
    }
    // SAFETY: as above, into a local.
    let mut after: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct into `after`.
    pt("PTRACE_GETREGS", tid, unsafe {
        libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut after)
    })?;
    if after.rax != 0 {
        return Err(FinishError::Munmap {
            tid,
            ret: after.rax as i64,
        });
    }
    // SAFETY: PTRACE_SETREGS reads one user_regs_struct from `saved`.
    pt("PTRACE_SETREGS", tid, unsafe {
        libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &saved)
    })?;
    Ok(held)
}

/// Detaches a thread, delivering `sig` (0 for none).
pub fn detach(tid: u32, sig: i32) -> Result<(), FinishError> {
    // SAFETY: detaches a stopped tracee; no memory arguments.
    pt("PTRACE_DETACH", tid, unsafe {
        libc::ptrace(libc::PTRACE_DETACH, tid, 0, sig)
    })
    .map(|_| ())
}

/// Scheduling state set from outside once the task runs: nice and policy per thread, and the
/// task's oom_score_adj (all allowed to root on another process). `host` turns the image's
/// (namespace) tids into the ones /proc shows.
pub fn apply_sched(
    t: &TaskPlan,
    host: &dyn Fn(u32) -> Result<u32, crate::restore::RestoreError>,
    log: &mut Log,
) {
    let Ok(pid) = host(t.entry.pid) else {
        return;
    };
    for (tid, core) in &t.cores {
        let Ok(tid) = host(*tid) else {
            continue;
        };
        let tid = &tid;
        let Some(tc) = core.thread_core.as_ref() else {
            continue;
        };
        if let Some(policy) = tc.sched_policy {
            let param = libc::sched_param {
                sched_priority: tc.sched_prio.unwrap_or(0) as i32,
            };
            // SAFETY: sched_setscheduler on a thread we restored, with a valid param.
            if unsafe { libc::sched_setscheduler(*tid as i32, policy as i32, &param) } != 0 {
                log.warn(&format!(
                    "thread {tid}: sched policy {policy}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        if let Some(nice) = tc.sched_nice {
            // SAFETY: setpriority on a thread we restored.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, *tid, nice) } != 0 {
                log.warn(&format!(
                    "thread {tid}: nice {nice}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    if let Some(adj) = t.cores[0].1.tc.as_ref().and_then(|c| c.oom_score_adj) {
        let p = format!("/proc/{pid}/oom_score_adj");
        if let Err(e) = std::fs::write(&p, adj.to_string()) {
            log.warn(&format!("{p}: {e}"));
        }
    }
}

/// What [`let_go`] needs of a restore whose every live thread waits before rt_sigreturn.
pub struct Release<'a> {
    /// The tasks, in pstree order (slot `i` is task `i`).
    pub tasks: &'a [TaskPlan],
    /// The stage area (the coordinator's own or an attached view of it).
    pub ctl: &'a Ctl,
    /// The restore range, unmapped from every task at the end.
    pub range: Range,
    /// Where every task's private part (the blob first) starts.
    pub priv_base: u64,
    /// Deadline per thread to reach the exit of its rt_sigreturn.
    pub limit: Duration,
}

/// The images' tid -> the tid /proc shows, from a map.
pub fn host_of(tids: &HashMap<u32, u32>) -> impl Fn(u32) -> Result<u32, RestoreError> + '_ {
    |tid: u32| {
        tids.get(&tid).copied().ok_or(RestoreError::Task {
            pid: tid,
            stage: "sigreturn",
            msg: "thread not found in /proc under its task".into(),
        })
    }
}

/// Seizes every live thread (those in `seized` are already traced by this thread and only
/// interrupted), lets each task through rt_sigreturn, unmaps the restore range from it and
/// detaches; then sets sched state and job-control stops from outside.
pub fn let_go(
    r: &Release<'_>,
    host: &dyn Fn(u32) -> Result<u32, RestoreError>,
    seized: &[u32],
    log: &mut Log,
) -> Result<(), RestoreError> {
    let ferr = |pid: u32| {
        move |e: FinishError| RestoreError::Task {
            pid,
            stage: "sigreturn",
            msg: e.to_string(),
        }
    };
    let live: Vec<(usize, &TaskPlan)> = r
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.alive)
        .collect();
    for (_, t) in &live {
        for (tid, _) in &t.cores {
            let h = host(*tid)?;
            if seized.contains(&h) {
                interrupt(h).map_err(ferr(t.entry.pid))?;
            } else {
                seize(h).map_err(ferr(t.entry.pid))?;
            }
            // The filters the blob installs last must not apply to its own last steps, the
            // rt_sigreturn and the remote munmap: suspended until the detach.
            if crate::seccomp::restore::any(&t.cores) {
                crate::seccomp::restore::suspend(h).map_err(|e| RestoreError::Task {
                    pid: t.entry.pid,
                    stage: "sigreturn",
                    msg: e.to_string(),
                })?;
            }
        }
    }
    let insn = r.priv_base + crate::restorer::RESTORER_SYSCALL_OFFSET as u64;
    for (i, t) in &live {
        let pid = host(t.entry.pid)?;
        r.ctl.release(*i);
        let mut held = Vec::new();
        for (tid, _) in &t.cores {
            let tid = host(*tid)?;
            // A thread that died after its release: the blob's own report names the step.
            let h = to_sigreturn_exit(tid, r.limit).map_err(|e| match r.ctl.message(*i) {
                Some(m) => RestoreError::Task {
                    pid: t.entry.pid,
                    stage: "sigreturn",
                    msg: format!("{e}: {m}"),
                },
                None => ferr(t.entry.pid)(e),
            })?;
            held.push((tid, h));
        }
        let h = unmap_restorer(pid, insn, r.range.start, r.range.len).map_err(ferr(pid))?;
        held[0].1.extend(h);
        for (tid, sigs) in held {
            detach(tid, sigs.first().copied().unwrap_or(0)).map_err(ferr(pid))?;
            for &s in sigs.iter().skip(1) {
                // SAFETY: tgkill to a thread of a task we restored.
                unsafe { libc::syscall(libc::SYS_tgkill, pid as i64, tid as i64, s as i64) };
            }
        }
    }
    for t in r.tasks.iter().filter(|t| t.alive) {
        apply_sched(t, host, log);
        if t.state == state::STOPPED {
            // SAFETY: kill by pid of a task we just restored.
            unsafe { libc::kill(host(t.entry.pid)? as i32, libc::SIGSTOP) };
        }
    }
    Ok(())
}

//! In-place restore: the calling process is PID 1 of a fresh pid namespace (a container
//! runtime's init, with rootfs, mounts and cgroups already set up) and becomes the tree's root.
//!
//! Kernel mechanism. PID 1 forks the tree's other tasks with `clone3(set_tid)` (namespace pids),
//! and a *finisher* process with a pid the tree does not use. The last step of a restore lets
//! each thread through `rt_sigreturn` under ptrace and unmaps the restorer from outside the
//! task (see restore_finish); PID 1 cannot do that for itself, so the finisher does it for every
//! task, PID 1 last, reports on the status fd and exits (the restored init reaps it, as inits
//! reap any child). Before PID 1 jumps into the restorer it waits until every other task is
//! ready and the image manifest is verified: up to that point any failure kills every other
//! process of the namespace (`kill(-1)` from PID 1) and returns an error to the caller. After it,
//! a failure is reported on the status fd and the finisher takes PID 1 down with it
//! (`PTRACE_O_EXITKILL`: signals from inside the namespace cannot kill its init).

use std::convert::Infallible;
use std::io::Write as _;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::restore::{self, Log, Options, Plan, RestoreError};
use crate::stage::Stage;

/// Restores the images of `opts.images` into the calling process, PID 1 of a fresh pid
/// namespace. `opts.in_place` is forced on.
///
/// Contract:
/// - the caller is single-threaded, PID 1 of its pid namespace, alone in it (apart from
///   nothing: every other process of the namespace is killed on error), with /proc mounted for
///   that namespace and the images' paths (exe, files, cwd) resolvable in its mount namespace;
/// - `Err` is returned only before the point of no return: every process this call forked is
///   killed and reaped and the error is also written to `status_fd` (`error: <message>`), so the
///   caller should exit with it (the plan's fds and the restore range reservation are left to
///   the process exit). Its fds may already have been replaced by the root's own (they are
///   installed last in its preparation): report through the returned error or `status_fd`;
/// - `opts.inherit_fds` may name the caller's own fds 0..2 (a container runtime's stdio pipes
///   or console): the plan copies every inherited fd above the images' fd numbers before it
///   opens anything, so installing the root's fds over 0..2 loses nothing;
/// - on success it never returns: the caller *is* the restored PID 1. If `status_fd` is given,
///   one line is written to it once the whole tree runs (`ok <ns pids...>`) or when a failure
///   after the point of no return tore the namespace down (`error: <message>`); the fd is then
///   closed. It must not be one of the tree's fds (any number the images use is fine: the
///   finisher holds its own copy).
pub fn restore_in_place(
    opts: &Options,
    status_fd: Option<RawFd>,
    log: &mut Log,
) -> Result<Infallible, RestoreError> {
    let mut opts = opts.clone();
    opts.in_place = true;
    above_tree_pids(&opts)?;
    let plan = restore::plan(&opts, log)?;
    let r = prepare_and_jump(&plan, &opts, status_fd, log);
    kill_namespace();
    // PID 1's preparation may have replaced fds the plan owns (by the tree's own): closing them
    // again on drop would close someone else's. The caller exits; the kernel cleans up.
    std::mem::forget(plan);
    r
}

/// Moves the namespace's pid allocator past every pid of the tree, so the helpers this restore
/// forks with ordinary fork() (manifest checker, finisher) never take a pid the tree needs.
fn above_tree_pids(opts: &Options) -> Result<(), RestoreError> {
    let err = |msg: String| RestoreError::Stage {
        stage: "read images",
        source: msg.into(),
    };
    let dir = ferry_images::ImageDir::open(&opts.images).map_err(|e| err(e.to_string()))?;
    let ps: Vec<ferry_images::pb::PstreeEntry> = dir
        .read_entries("pstree.img")
        .map_err(|e| err(e.to_string()))?;
    let max = ps
        .iter()
        .flat_map(|e| e.threads.iter().chain([&e.pid]))
        .max();
    let max = max.copied().unwrap_or(1);
    std::fs::write("/proc/sys/kernel/ns_last_pid", max.to_string()).map_err(|e| {
        task_err(1, "read images")(format!(
            "writing {max} to /proc/sys/kernel/ns_last_pid (is /proc mounted for this pid namespace?): {e}"
        ))
    })
}

fn task_err(pid: u32, stage: &'static str) -> impl FnOnce(String) -> RestoreError {
    move |msg| RestoreError::Task { pid, stage, msg }
}

fn prepare_and_jump(
    plan: &Plan,
    opts: &Options,
    status_fd: Option<RawFd>,
    log: &mut Log,
) -> Result<Infallible, RestoreError> {
    let t = Instant::now();
    plan.ctl.slot(0).pid.store(1, Ordering::Release);
    // SAFETY: fork in the single-threaded caller; ns_last_pid keeps its pid off the tree's.
    let fin = unsafe { libc::fork() };
    if fin < 0 {
        return Err(task_err(1, "fork the finisher")(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if fin == 0 {
        finisher(plan, opts, status_fd, log);
    }
    if let Some(fd) = status_fd {
        // SAFETY: closes our copy only; the finisher keeps its own.
        unsafe { libc::close(fd) };
    }
    // The manifest verdict comes first: preparing PID 1 replaces its fds by the tree's,
    // the checker's pipe among them.
    let r = plan
        .verifier
        .verdict()
        .and_then(|()| crate::restore_task::prepare(plan, 0).map_err(task_err(1, "prepare")))
        .and_then(|a| {
            wait_others(plan, opts.timeout)?;
            Ok(a)
        });
    match r {
        Ok((args, sp)) => {
            log.stage("fork and prepare (in place)", t);
            // Point of no return: from here the finisher reports.
            plan.ctl.set_stage(0, Stage::Restorer);
            crate::restore_task::jump(plan.priv_base(), sp, args)
        }
        Err(e) => {
            // The finisher reports it on the status fd and exits; give it a moment.
            plan.ctl.fail(0, &e.to_string());
            let start = Instant::now();
            let mut st = 0;
            // SAFETY: waitpid with WNOHANG on our own child, the finisher.
            while unsafe { libc::waitpid(fin as i32, &mut st, libc::WNOHANG) } == 0
                && start.elapsed() < Duration::from_secs(2)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e)
        }
    }
}

/// Waits until every task but PID 1 waits before rt_sigreturn; the first failure is returned.
fn wait_others(plan: &Plan, limit: Duration) -> Result<(), RestoreError> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for (i, t) in plan.tasks.iter().enumerate().skip(1) {
            let s = plan.ctl.slot(i);
            if let Some(msg) = plan.ctl.message(i) {
                return Err(task_err(
                    t.entry.pid,
                    Stage::name(s.stage.load(Ordering::Acquire)),
                )(msg));
            }
            if t.alive && (s.ready.load(Ordering::Acquire) as usize) < t.cores.len() {
                all = false;
                // A dead direct child shows up here; its message (if any) was read above.
                let mut st = 0;
                let pid = s.pid.load(Ordering::Acquire) as i32;
                // SAFETY: waitpid with WNOHANG on the task (our child or grandchild) into a local.
                let dead = pid > 0 && unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid;
                if dead {
                    return Err(task_err(t.entry.pid, "prepare")(
                        plan.ctl
                            .message(i)
                            .unwrap_or_else(|| "the task died".into()),
                    ));
                }
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > limit {
            let (i, t) = plan
                .tasks
                .iter()
                .enumerate()
                .skip(1)
                .find(|(i, t)| {
                    t.alive
                        && (plan.ctl.slot(*i).ready.load(Ordering::Acquire) as usize)
                            < t.cores.len()
                })
                .unwrap_or((0, &plan.tasks[0]));
            return Err(RestoreError::Timeout {
                pid: t.entry.pid,
                stage: Stage::name(plan.ctl.slot(i).stage.load(Ordering::Acquire)),
                limit,
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Kills every other process of the namespace (PID 1 only) and reaps them.
fn kill_namespace() {
    // SAFETY: kill(-1) from PID 1 reaches every other process of its namespace: all forked by
    // this restore (the contract says the namespace was fresh).
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: reaps any child; orphans of the namespace come to PID 1.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::__WALL | libc::WNOHANG) };
        if r < 0 || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn report(status_fd: Option<RawFd>, line: &str) {
    if let Some(fd) = status_fd {
        // SAFETY: the fd was handed to us for this report and is ours to close.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(line.as_bytes());
    }
}

/// The finisher: waits for every task (PID 1 included) to wait before rt_sigreturn, lets them
/// through, reports, exits. Never returns.
fn finisher(plan: &Plan, opts: &Options, status_fd: Option<RawFd>, log: &mut Log) -> ! {
    // SAFETY: prctl with integer arguments only: die with PID 1 if it fails early.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let t = Instant::now();
    let r = restore::wait_ready(plan, opts.timeout).and_then(|()| {
        log.stage("every thread waits before rt_sigreturn", t);
        let t = Instant::now();
        let r = restore::release(plan, opts.timeout, log);
        log.stage("sigreturn and restorer unmap", t);
        r
    });
    match r {
        Ok(()) => {
            let pids: Vec<String> = plan.tasks.iter().map(|t| t.entry.pid.to_string()).collect();
            log.line(
                crate::log::INFO,
                &format!("restored tree in place: {}", pids.join(" ")),
            );
            report(status_fd, &format!("ok {}\n", pids.join(" ")));
            // SAFETY: _exit without running the destructors of PID 1's objects we inherited.
            unsafe { libc::_exit(0) }
        }
        Err(e) => {
            log.error(&e.to_string());
            report(status_fd, &format!("error: {e}\n"));
            if plan.ctl.slot(0).stage.load(Ordering::Acquire) < Stage::Restorer as u32 {
                // PID 1 is still in its own code: it cleans up and returns the error.
                // SAFETY: _exit without running inherited destructors.
                unsafe { libc::_exit(1) }
            }
            // SAFETY: PTRACE_O_EXITKILL makes our exit SIGKILL PID 1 (and with it the
            // namespace); a signal sent from inside the namespace would not reach its init. The
            // seize fails harmlessly if we already trace it (with the same option).
            unsafe {
                libc::ptrace(libc::PTRACE_SEIZE, 1, 0, libc::PTRACE_O_EXITKILL);
                libc::kill(-1, libc::SIGKILL);
                libc::_exit(1)
            }
        }
    }
}

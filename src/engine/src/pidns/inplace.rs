//! In-place restore, inside half: the calling process is PID 1 of a fresh pid namespace (a
//! container runtime's init, with rootfs, mounts and cgroups already set up) and becomes the
//! tree's root. The outside half ([`super::inplace_finish`]) runs in the runtime's process,
//! outside the namespace, as CRIU does for containers.
//!
//! Kernel mechanism. The last step of a restore lets each thread through `rt_sigreturn` under
//! ptrace and unmaps the restorer from outside the task (see restore_finish); PID 1 cannot do
//! that for itself, and a helper inside the namespace would be a child of the restored init
//! (or an orphan reparented to it), which a non-reaping init keeps as a zombie. So the two
//! halves talk over a `SOCK_SEQPACKET` socket pair the runtime made:
//!
//! 1. PID 1 plans (reads the images, opens files, reserves the restore range); any error so far
//!    goes on the socket as `error: <message>`;
//! 2. it sends `plan <tasks> <range start> <range len>` with the stage area's memfd
//!    (SCM_RIGHTS); the outside maps it, seizes PID 1 by its host pid with
//!    `PTRACE_O_EXITKILL` (from now on the outside's death kills PID 1, and with it the
//!    namespace) and answers `seized`;
//! 3. PID 1 closes its end, forks the tree with `clone3(set_tid)`, prepares itself and waits
//!    until every other task waits before `rt_sigreturn`; failures go to the stage slots, which
//!    the outside polls; the namespace is killed (`kill(-1)` from PID 1) and PID 1 returns;
//! 4. point of no return: PID 1 jumps into the restorer; the outside sees every thread ready,
//!    finds the tree's host tids under PID 1 (`NSpid`), lets it go and detaches.
//!
//! Helpers that must live in the namespace (the manifest checker, the one that takes TCP
//! connections out of repair mode) are forked with `clone3(set_tid)` on pids the tree does not
//! use ([`helper_pids`]) and reaped by PID 1 before it jumps, so nothing writes ns_last_pid.

use std::convert::Infallible;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags};

use crate::restore::{self, Log, Options, Plan, RestoreError, TaskPlan};
use crate::stage::Stage;

/// The init's report of an error (the rest of the datagram is the message).
pub(crate) const MSG_ERROR: &str = "error: ";
/// The plan datagram: `plan <tasks> <range start> <range len>`, with the stage memfd.
pub(crate) const MSG_PLAN: &str = "plan ";
/// The outside's answer once it traces PID 1.
pub(crate) const MSG_SEIZED: &[u8] = b"seized";

/// Restores the images of `opts.images` into the calling process, PID 1 of a fresh pid
/// namespace, with the outside half ([`super::inplace_finish::finish_in_place`]) on the other
/// end of `chan`. `opts.in_place` is forced on.
///
/// Contract:
/// - the caller is single-threaded, PID 1 of its pid namespace and alone in it (every other
///   process of the namespace is killed on error), the images' paths (exe, files, cwd)
///   resolvable in its mount namespace; /proc needs no write access;
/// - `chan` is one end of a `SOCK_SEQPACKET` socket pair whose other end the outside half
///   reads; it must not be one of the tree's fds (any number the images use is fine) and is
///   closed by this call;
/// - `Err` is returned only before the point of no return: every process this call forked is
///   killed and reaped, and the error has reached the outside (on `chan` up to the handshake,
///   in PID 1's stage slot after it). The caller should just exit: its fds may already be the
///   tree's (installed last in its preparation), so it must not write to any of them (not
///   even `log`'s), and the plan is leaked on purpose;
/// - `opts.inherit_fds` may name the caller's own fds 0..2 (a container runtime's stdio pipes
///   or console): the plan copies every inherited fd above the images' fd numbers before it
///   opens anything, so installing the root's fds over 0..2 loses nothing;
/// - on success it never returns: the caller *is* the restored PID 1.
pub fn restore_in_place(
    opts: &Options,
    chan: OwnedFd,
    log: &mut Log,
) -> Result<Infallible, RestoreError> {
    let mut opts = opts.clone();
    opts.in_place = true;
    let plan = match restore::plan(&opts, log) {
        Ok(p) => p,
        Err(e) => {
            log.error(&e.to_string());
            send(&chan, &format!("{MSG_ERROR}{e}"), None);
            kill_namespace();
            return Err(e);
        }
    };
    if let Err(e) = handshake(&plan, &chan, opts.timeout) {
        log.error(&e.to_string());
        send(&chan, &format!("{MSG_ERROR}{e}"), None);
        kill_namespace();
        return Err(e);
    }
    log.line(crate::log::DEBUG, "handed over to the outside half");
    drop(chan);
    let r = prepare_and_jump(&plan, &opts);
    if let Err(e) = &r {
        plan.ctl.fail(0, &e.to_string());
    }
    kill_namespace();
    // PID 1's preparation may have replaced fds the plan owns (by the tree's own): closing them
    // again on drop would close someone else's. The caller exits; the kernel cleans up.
    std::mem::forget(plan);
    r
}

/// Reports an error of the caller's own, before it could call [`restore_in_place`], to the
/// outside half (which prints it as the init's report); the caller then exits.
pub fn report_error(chan: &OwnedFd, msg: &str) {
    send(chan, &format!("{MSG_ERROR}{msg}"), None);
}

/// Pids for the helpers of an in-place restore: the two lowest above 1 that no task or thread
/// of the tree uses (the namespace is fresh, so nothing else holds them).
pub fn helper_pids(tasks: &[TaskPlan]) -> [u32; 2] {
    let used: std::collections::BTreeSet<u32> = tasks
        .iter()
        .flat_map(|t| t.entry.threads.iter().chain([&t.entry.pid]))
        .copied()
        .collect();
    let mut free = (2u32..).filter(|p| !used.contains(p));
    let a = free.next().unwrap_or(u32::MAX);
    [a, free.next().unwrap_or(u32::MAX)]
}

fn chan_err(what: String) -> RestoreError {
    RestoreError::Stage {
        stage: "hand over to the runtime (in-place restore)",
        source: what.into(),
    }
}

/// Sends one datagram, with `fd` attached if given; errors are the caller's to detect (a dead
/// peer makes the next step fail).
fn send(chan: &OwnedFd, msg: &str, fd: Option<i32>) -> Option<std::io::Error> {
    let iov = [IoSlice::new(msg.as_bytes())];
    let fds = fd.map(|f| [f]);
    let cmsg: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    sendmsg::<()>(chan.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .err()
        .map(std::io::Error::from)
}

/// Step 2: the plan to the outside, and its answer once it traces us.
fn handshake(plan: &Plan, chan: &OwnedFd, limit: Duration) -> Result<(), RestoreError> {
    let msg = format!(
        "{MSG_PLAN}{} {} {}",
        plan.tasks.len(),
        plan.range.start,
        plan.range.len
    );
    if let Some(e) = send(chan, &msg, Some(plan.ctl.fd().as_raw_fd())) {
        return Err(chan_err(format!("sending the plan: {e}")));
    }
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(chan.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let ready = loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    match ready {
        Ok(0) => return Err(chan_err(format!("no answer within {ms} ms"))),
        Ok(_) => {}
        Err(e) => return Err(chan_err(format!("poll: {e}"))),
    }
    let mut buf = [0u8; 64];
    let n = recv(chan.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| chan_err(format!("reading the answer: {e}")))?;
    if &buf[..n] != MSG_SEIZED {
        return Err(chan_err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf[..n])
        )));
    }
    Ok(())
}

fn task_err(pid: u32, stage: &'static str) -> impl FnOnce(String) -> RestoreError {
    move |msg| RestoreError::Task { pid, stage, msg }
}

/// Step 3 and the jump. Writes nothing to the log: after PID 1's preparation its fd numbers
/// are the tree's.
fn prepare_and_jump(plan: &Plan, opts: &Options) -> Result<Infallible, RestoreError> {
    plan.ctl.slot(0).pid.store(1, Ordering::Release);
    let leaver = spawn_leaver(plan, opts.timeout)?;
    // The manifest verdict comes first: preparing PID 1 replaces its fds by the tree's, the
    // checker's pipe among them.
    let (args, sp) = plan
        .verifier
        .verdict()
        .and_then(|()| crate::restore_task::prepare(plan, 0).map_err(task_err(1, "prepare")))?;
    wait_others(plan, opts.timeout)?;
    if let Some(pid) = leaver {
        wait_leaver(plan, pid, opts.timeout)?;
    }
    // Point of no return: from here the outside half reports.
    plan.ctl.set_stage(0, Stage::Restorer);
    crate::restore_task::jump(plan.priv_base(), sp, args)
}

/// Whether every task but PID 1 waits before rt_sigreturn; the first reported failure is an
/// error. `reap`: PID 1 also notices its children that died without a word.
fn others_ready(plan: &Plan, reap: bool) -> Result<bool, RestoreError> {
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
            let pid = s.pid.load(Ordering::Acquire) as i32;
            let mut st = 0;
            // SAFETY: waitpid with WNOHANG on the task (our child or grandchild) into a local.
            let dead =
                reap && pid > 0 && unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid;
            if dead {
                return Err(task_err(t.entry.pid, "prepare")(
                    plan.ctl
                        .message(i)
                        .unwrap_or_else(|| "the task died".into()),
                ));
            }
        }
    }
    Ok(all)
}

/// Waits until every task but PID 1 waits before rt_sigreturn; the first failure is returned.
fn wait_others(plan: &Plan, limit: Duration) -> Result<(), RestoreError> {
    let start = Instant::now();
    while !others_ready(plan, true)? {
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
    Ok(())
}

/// Memfds take their seals back and TCP connections leave repair mode once every task waits
/// before rt_sigreturn (every mapping is in place), from the fds the plan holds. PID 1's own
/// copies are gone by then (its preparation closes every fd that is not the tree's), so a
/// helper forked before that does it: it waits for PID 1 to be prepared and every other task
/// ready, does both and exits; PID 1 reaps it before the jump.
fn spawn_leaver(plan: &Plan, limit: Duration) -> Result<Option<i32>, RestoreError> {
    if !plan.opened.inet.has_pending() && plan.opened.memfd_seals.is_empty() {
        return Ok(None);
    }
    let want = helper_pids(&plan.tasks)[1];
    let pid = crate::pstree::restore::fork_with_pid(want, Duration::ZERO)
        .map_err(|e| task_err(1, "fork the seal and TCP repair helper")(e.to_string()))?;
    if pid != 0 {
        return Ok(Some(pid as i32));
    }
    // SAFETY: prctl with integer arguments only: die with PID 1.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let start = Instant::now();
    let code = loop {
        let prepared = plan.ctl.slot(0).stage.load(Ordering::Acquire) >= Stage::Prepared as u32;
        match others_ready(plan, false) {
            Ok(true) if prepared => {
                let r = crate::files::memfd::apply_seals(&plan.opened.memfd_seals)
                    .map_err(|e| format!("memfd seals: {e}"))
                    .and_then(|()| {
                        crate::files::inet::restore::leave_repair(&plan.opened.inet)
                            .map_err(|e| format!("leave TCP repair: {e}"))
                    });
                break match r {
                    Ok(()) => 0,
                    Err(e) => {
                        plan.ctl.fail(0, &e);
                        1
                    }
                };
            }
            Err(_) => break 1, // PID 1 reports it
            _ if start.elapsed() > limit => break 1,
            _ => std::thread::sleep(Duration::from_micros(500)),
        }
    };
    // SAFETY: _exit without running the destructors of PID 1's objects we inherited.
    unsafe { libc::_exit(code) }
}

fn wait_leaver(plan: &Plan, pid: i32, limit: Duration) -> Result<(), RestoreError> {
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: waitpid with WNOHANG on our helper child into a local.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 {
                return Ok(());
            }
            return Err(task_err(1, "seals and TCP repair")(
                plan.ctl
                    .message(0)
                    .unwrap_or_else(|| format!("the helper failed (wait status {st:#x})")),
            ));
        }
        if r < 0 || start.elapsed() > limit {
            return Err(task_err(1, "seals and TCP repair")(format!(
                "the helper did not finish within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_images::pb;

    fn task(pid: u32, threads: &[u32]) -> TaskPlan {
        TaskPlan {
            entry: pb::PstreeEntry {
                pid,
                threads: threads.to_vec(),
                ..Default::default()
            },
            alive: true,
            state: 1,
            ..Default::default()
        }
    }

    #[test]
    fn helper_pids_avoid_every_pid_and_tid_of_the_tree() {
        let tasks = [task(1, &[1, 2]), task(3, &[3]), task(5, &[5, 6])];
        assert_eq!(helper_pids(&tasks), [4, 7]);
        assert_eq!(helper_pids(&[task(1, &[1])]), [2, 3]);
    }
}

//! In-place restore, outside half: run by the container runtime's own process, outside the
//! container's pid namespace, while its init runs [`super::inplace::restore_in_place`].
//!
//! Kernel mechanism. It receives the init's plan and the stage area's memfd over the socket
//! pair (SCM_RIGHTS) and maps the memfd: the slots are the tasks' own, and a `FUTEX_WAKE` on
//! a shared file mapping reaches waiters in every other mapping of that file. It then seizes
//! the init by its host pid with `PTRACE_O_EXITKILL`, so that from the handshake on its own
//! death SIGKILLs the init, and the kernel kills a pid namespace whose init dies. While the init
//! prepares, the signals it would get (SIGCHLD of the tree's zombies and helpers) stop it in
//! signal-delivery-stops, which this half passes on. Once every thread waits before
//! `rt_sigreturn`, it maps namespace tids to host tids under the init (`NSpid`) and runs
//! restore_finish's release. Nothing it starts lives in the namespace, so the restored init
//! gets no child of ferry's.
//!
//! Errors. Before the init jumps into the restorer the init itself cleans up (kills the
//! namespace, exits); this half reports the first failure any task or the init left in its
//! stage slot. After the jump every failure is this half's: it SIGKILLs the init (taking the
//! namespace down) and reports. Either way `Err` means nothing of the tree is left running.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_blob_abi::restorer::Range;
use ferry_images::{pb, ImageDir};
use nix::sys::socket::{recvmsg, send, ControlMessageOwned, MsgFlags};
use thiserror::Error;

use super::inplace::{MSG_ERROR, MSG_PLAN, MSG_SEIZED};
use crate::pstree::restore::state;
use crate::restore::{Log, RestoreError, TaskPlan};
use crate::restore_finish as fin;
use crate::stage::{Ctl, Stage};

/// Errors of an in-place restore, seen from outside.
#[derive(Debug, Error)]
pub enum InPlaceError {
    /// The container's init reported a failure (its own words).
    #[error("{0}")]
    Init(String),
    /// A stage of the outside half failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The socket to the init failed.
    #[error("in-place restore: {what}: {source}")]
    Channel {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The init's plan, as the handshake gives it.
struct Handed {
    ctl: Ctl,
    range: Range,
}

/// Finishes the in-place restore whose init has host pid `init` and the other end of `chan`:
/// `images` is the same image directory, as this process reaches it. Returns the tree's
/// (namespace) pids once it runs, detached. On `Err` the init is dead or dying, and the whole
/// namespace with it; if the init is not this process's child it is also reaped here.
pub fn finish_in_place(
    init: i32,
    chan: OwnedFd,
    images: &Path,
    limit: Duration,
    log: &mut Log,
) -> Result<Vec<u32>, InPlaceError> {
    let start = Instant::now();
    let pidfd = pidfd_of(init);
    // Planning takes the init a moment (images read, files opened); it has its own deadline.
    let handed = match receive_plan(&chan, limit + Duration::from_secs(10)) {
        Ok(h) => h,
        Err(e) => {
            give_up(init, pidfd.as_ref(), None);
            return Err(e);
        }
    };
    log.stage("the init's plan (in place)", start);
    let r = run(init, &chan, &handed, images, limit, log);
    if let Err(e) = &r {
        log.error(&e.to_string());
        give_up(init, pidfd.as_ref(), Some(&handed.ctl));
    }
    r
}

fn run(
    init: i32,
    chan: &OwnedFd,
    h: &Handed,
    images: &Path,
    limit: Duration,
    log: &mut Log,
) -> Result<Vec<u32>, InPlaceError> {
    let tasks = read_tasks(images)?;
    if tasks.len() != h.ctl.len() {
        return Err(stage_err(format!(
            "the init planned {} tasks, {} lists {}",
            h.ctl.len(),
            images.display(),
            tasks.len()
        ))
        .into());
    }
    let opts = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL;
    // SAFETY: PTRACE_SEIZE of the init by pid with options only; it keeps running.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, init, 0, opts) } != 0 {
        return Err(stage_err(format!(
            "PTRACE_SEIZE of the container init {init}: {}",
            std::io::Error::last_os_error()
        ))
        .into());
    }
    send(chan.as_raw_fd(), MSG_SEIZED, MsgFlags::MSG_NOSIGNAL).map_err(|e| {
        InPlaceError::Channel {
            what: "answering the init",
            source: e.into(),
        }
    })?;
    let t = Instant::now();
    wait_ready(init, &h.ctl, &tasks, limit)?;
    log.stage("every thread waits before rt_sigreturn (in place)", t);
    // For the all-or-nothing tests (debug builds only): the runtime dies while the tree waits
    // in the restorer; PTRACE_O_EXITKILL must take the namespace down.
    if cfg!(debug_assertions) && std::env::var_os("FERRY_TEST_OUTSIDE_DIES").is_some() {
        // SAFETY: _exit, as a crash of this process would end it.
        unsafe { libc::_exit(3) }
    }
    let t = Instant::now();
    let tids = super::restore::tids_below(init as u32).map_err(stage_err)?;
    let r = fin::Release {
        tasks: &tasks,
        ctl: &h.ctl,
        range: h.range,
        priv_base: h.range.start + Ctl::size_for(tasks.len()) as u64,
        limit,
    };
    let host = fin::host_of(&tids);
    fin::let_go(&r, &host, &[init as u32], log)?;
    log.stage("sigreturn and restorer unmap (in place)", t);
    let pids: Vec<u32> = tasks.iter().map(|t| t.entry.pid).collect();
    log.line(
        crate::log::INFO,
        &format!("restored tree in place under {init}: {pids:?}"),
    );
    Ok(pids)
}

fn stage_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> RestoreError {
    RestoreError::Stage {
        stage: "finish the in-place restore",
        source: e.into(),
    }
}

/// Step 1 of the handshake: `error: ...` from the init, or its plan with the stage memfd.
fn receive_plan(chan: &OwnedFd, limit: Duration) -> Result<Handed, InPlaceError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ch = |what| {
        move |e: nix::errno::Errno| InPlaceError::Channel {
            what,
            source: e.into(),
        }
    };
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(InPlaceError::Init(format!(
                "the container init did not report within {} s",
                limit.as_secs()
            )));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(chan.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(ch("poll the socket to the init")(e)),
        }
    }
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        chan.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(ch("read the init's report"))?;
    let mut fd = None;
    for c in msg.cmsgs().map_err(ch("read the init's report"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed this fd for us; nobody else owns it.
                let f = unsafe { OwnedFd::from_raw_fd(f) };
                fd.get_or_insert(f);
            }
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    if n == 0 {
        return Err(InPlaceError::Init(
            "the container init exited before the restore reported (see restore.log)".into(),
        ));
    }
    if let Some(m) = text.strip_prefix(MSG_ERROR) {
        return Err(InPlaceError::Init(m.trim_end().to_string()));
    }
    let bad = || {
        InPlaceError::Init(format!(
            "unexpected report from the container init: {text:?}"
        ))
    };
    let nums: Vec<u64> = text
        .strip_prefix(MSG_PLAN)
        .ok_or_else(bad)?
        .split_whitespace()
        .map(|w| w.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (&[n, start, len], Some(fd)) = (nums.as_slice(), fd) else {
        return Err(bad());
    };
    let ctl = Ctl::attach(fd, n as usize).map_err(stage_err)?;
    Ok(Handed {
        ctl,
        range: Range { start, len },
    })
}

/// The tasks as the finish stage needs them (pstree order, threads with their cores), read
/// from the images like the init's plan.
fn read_tasks(images: &Path) -> Result<Vec<TaskPlan>, RestoreError> {
    let e = |e: ferry_images::dir::DirError| stage_err(e.to_string());
    let dir = ImageDir::open(images).map_err(e)?;
    let entries: Vec<pb::PstreeEntry> = dir.read_entries("pstree.img").map_err(e)?;
    let mut tasks = Vec::new();
    for entry in entries {
        let mut cores = Vec::new();
        for &tid in &entry.threads {
            let c: pb::CoreEntry = dir.read_one(&format!("core-{tid}.img")).map_err(e)?;
            cores.push((tid, c));
        }
        let tc = cores.first().and_then(|(_, c)| c.tc.as_ref());
        let st = tc.map_or(0, |tc| tc.task_state);
        tasks.push(TaskPlan {
            alive: st == state::ALIVE || st == state::STOPPED,
            state: st,
            exit_code: tc.map_or(0, |tc| tc.exit_code),
            entry,
            cores,
            ..Default::default()
        });
    }
    Ok(tasks)
}

/// The first failure a task (then the init) left in its slot.
fn slot_error(ctl: &Ctl, tasks: &[TaskPlan]) -> Option<InPlaceError> {
    for (i, t) in tasks.iter().enumerate().skip(1) {
        if let Some(msg) = ctl.message(i) {
            let stage = Stage::name(ctl.slot(i).stage.load(Ordering::Acquire));
            return Some(
                RestoreError::Task {
                    pid: t.entry.pid,
                    stage,
                    msg,
                }
                .into(),
            );
        }
    }
    ctl.message(0).map(InPlaceError::Init)
}

/// How the init ended, if it has (left waitable: WNOWAIT).
fn init_exit(init: i32) -> Option<String> {
    // SAFETY: an all-zero siginfo_t is valid for waitid to fill.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL;
    // SAFETY: waitid on our tracee (or child) into a local.
    let r = unsafe { libc::waitid(libc::P_PID, init as libc::id_t, &mut si, flags) };
    // SAFETY: si_pid and si_status are valid for the CLD_* codes waitid reports.
    let (pid, status) = unsafe { (si.si_pid(), si.si_status()) };
    if r != 0 {
        return Some(format!("gone ({})", std::io::Error::last_os_error()));
    }
    if pid != init {
        return None;
    }
    // A tracee's ptrace stops are reported even without WSTOPPED (CLD_TRAPPED: the init
    // stopped for a SIGCHLD, say): not an end, service_stops passes them on.
    match si.si_code {
        libc::CLD_EXITED => Some(format!("exited with {status}")),
        libc::CLD_KILLED | libc::CLD_DUMPED => Some(format!("killed by signal {status}")),
        _ => None,
    }
}

/// Passes on the init's signal-delivery-stops (and ends group-stops) while it is traced.
fn service_stops(init: i32) {
    loop {
        // SAFETY: as in init_exit.
        let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WSTOPPED | libc::WNOHANG | libc::__WALL;
        // SAFETY: waitid on our tracee into a local; consumes one ptrace stop.
        let r = unsafe { libc::waitid(libc::P_PID, init as libc::id_t, &mut si, flags) };
        // SAFETY: as in init_exit.
        let (pid, status) = unsafe { (si.si_pid(), si.si_status()) };
        if r != 0 || pid != init {
            return;
        }
        // A ptrace event stop carries the event above the signal: pass no signal on.
        let sig = if status >> 8 == 0 { status & 0x7f } else { 0 };
        // SAFETY: resumes our stopped tracee, delivering the signal it stopped for.
        unsafe { libc::ptrace(libc::PTRACE_CONT, init, 0, sig) };
    }
}

/// Waits until every thread of every live task, the init's included, waits before
/// rt_sigreturn; the first failure is returned.
fn wait_ready(
    init: i32,
    ctl: &Ctl,
    tasks: &[TaskPlan],
    limit: Duration,
) -> Result<(), InPlaceError> {
    let start = Instant::now();
    let ready = |i: usize, t: &TaskPlan| {
        !t.alive || ctl.slot(i).ready.load(Ordering::Acquire) as usize >= t.cores.len()
    };
    loop {
        if let Some(e) = slot_error(ctl, tasks) {
            return Err(e);
        }
        service_stops(init);
        if let Some(how) = init_exit(init) {
            // Give its last message a moment to land.
            std::thread::sleep(Duration::from_millis(20));
            return Err(slot_error(ctl, tasks).unwrap_or_else(|| {
                InPlaceError::Init(format!(
                    "the container init {how} before the tree was restored"
                ))
            }));
        }
        if tasks.iter().enumerate().all(|(i, t)| ready(i, t)) {
            return Ok(());
        }
        if start.elapsed() > limit {
            let (i, t) = tasks
                .iter()
                .enumerate()
                .find(|(i, t)| !ready(*i, t))
                .unwrap_or((0, &tasks[0]));
            return Err(RestoreError::Timeout {
                pid: t.entry.pid,
                stage: Stage::name(ctl.slot(i).stage.load(Ordering::Acquire)),
                limit,
            }
            .into());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// After a failure: an init still in its own code cleans up and exits by itself; one past the
/// point of no return (or too slow) is SIGKILLed, which ends the namespace. Its zombie is left
/// to its parent when that is us, reaped (and so handed to its real parent) otherwise.
fn give_up(init: i32, pidfd: Option<&OwnedFd>, ctl: Option<&Ctl>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let Some(pidfd) = pidfd else {
        return; // it was gone before we started
    };
    let jumped =
        ctl.is_some_and(|c| c.slot(0).stage.load(Ordering::Acquire) >= Stage::Restorer as u32);
    let grace = if jumped {
        Duration::ZERO
    } else {
        Duration::from_secs(2)
    };
    let start = Instant::now();
    let mut killed = false;
    loop {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0) {
            break; // exited
        }
        service_stops(init);
        if !killed && start.elapsed() >= grace {
            // SAFETY: pidfd_send_signal(SIGKILL) on our pidfd of the namespace's init.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            killed = true;
        }
        if start.elapsed() > grace + Duration::from_secs(5) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let parent = std::fs::read_to_string(format!("/proc/{init}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        });
    if parent != Some(std::process::id()) {
        let mut st = 0;
        // SAFETY: reaps the exit of our tracee (not our child), releasing it to its real
        // parent; ECHILD if we never traced it.
        unsafe { libc::waitpid(init, &mut st, libc::__WALL | libc::WNOHANG) };
    }
}

fn pidfd_of(pid: i32) -> Option<OwnedFd> {
    crate::files::pidfd::open(pid).ok()
}

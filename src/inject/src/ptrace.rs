//! Typed ptrace handles: [`seize`] gives a [`Running`] tracee, [`Running::interrupt`] a
//! [`Stopped`] one, and every resume consumes the [`Stopped`] handle, so registers can only be
//! touched while the kernel guarantees the task is in a ptrace-stop.
//!
//! Kernel mechanism: PTRACE_SEIZE attaches without stopping or signalling the task (unlike
//! PTRACE_ATTACH, it sends no SIGSTOP), and PTRACE_INTERRUPT then traps it in a PTRACE_EVENT_STOP
//! the next time it would return to user space. Waiting for that stop has to cope with what the
//! task was doing (as CRIU's compel does): a signal-delivery-stop for a signal that was already on
//! its way is passed back to the task and we wait again; a task in job-control stop (or with
//! SIGSTOP pending) reports a group-stop, is resumed once per pending SIGSTOP so the parasite can
//! run, and is put back into stop with SIGSTOP right before we detach. A task that vanishes
//! (ESRCH, or wait reporting exit) is the typed [`PtraceError::TaskDied`].

use std::io;

/// PTRACE_EVENT_STOP: the `status >> 16` of an interrupt- or group-stop under PTRACE_SEIZE.
const PTRACE_EVENT_STOP: i32 = 128;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const NT_X86_XSTATE: usize = 0x202;
/// Largest XSAVE area we accept (AMX-capable CPUs reach ~11 KiB).
const XSTATE_MAX: usize = 16 * 1024;

/// Errors of the ptrace layer; each names the task and the operation.
#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// The task exited or was killed while we were working on it.
    #[error("task {pid} died during {op}{}", how.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    TaskDied {
        pid: i32,
        op: &'static str,
        how: Option<String>,
    },
    /// The task is a zombie: it has no address space to inject into.
    #[error("task {pid} is a zombie")]
    Zombie { pid: i32 },
    /// A ptrace request failed for a reason other than the task vanishing.
    #[error("ptrace {op} on task {pid}: {source}")]
    Request {
        pid: i32,
        op: &'static str,
        source: io::Error,
    },
    /// The task stopped for a reason the caller did not expect.
    #[error("task {pid} stopped unexpectedly during {op}: {stop:?}")]
    UnexpectedStop {
        pid: i32,
        op: &'static str,
        stop: StopKind,
    },
    /// Reading the task's /proc entries failed.
    #[error("reading /proc/{pid}/status: {source}")]
    Proc { pid: i32, source: io::Error },
}

type Result<T> = std::result::Result<T, PtraceError>;

/// Why a tracee is in ptrace-stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// PTRACE_EVENT_STOP with SIGTRAP: the stop PTRACE_INTERRUPT asked for.
    Interrupt,
    /// PTRACE_EVENT_STOP with a stop signal: job-control (group) stop.
    GroupStop(i32),
    /// Syscall-entry or syscall-exit stop (PTRACE_SYSCALL with TRACESYSGOOD).
    Syscall,
    /// Signal-delivery-stop: the task is about to receive this signal.
    Signal(i32),
    /// Any other PTRACE_EVENT_* stop.
    Event(i32, i32),
}

/// Job-control state of the task when it was seized; restored at detach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeizedState {
    /// The task was running (or sleeping).
    Alive,
    /// The task was stopped (or had SIGSTOP pending): it is stopped again at detach.
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Task {
    pid: i32,
    state: SeizedState,
}

/// A seized task that may be running.
#[derive(Debug)]
pub struct Running {
    t: Task,
}

/// A seized task in ptrace-stop. Dropping it detaches (best effort) and lets it run on.
#[derive(Debug)]
pub struct Stopped {
    t: Task,
    kind: StopKind,
}

/// Outcome of [`Running::poll`].
#[derive(Debug)]
pub enum Polled {
    /// Still running.
    Running(Running),
    /// Stopped since the last look.
    Stopped(Stopped),
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Raw ptrace, mapping ESRCH to `TaskDied`.
fn ptrace(req: libc::c_uint, pid: i32, addr: usize, data: usize, op: &'static str) -> Result<i64> {
    // SAFETY: every caller passes `addr`/`data` that are either integers or pointers to buffers
    // sized for the request; the kernel validates the rest.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        let e = errno();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Err(PtraceError::TaskDied { pid, op, how: None });
        }
        return Err(PtraceError::Request { pid, op, source: e });
    }
    Ok(r)
}

/// A parsed `/proc/PID/status` subset.
struct ProcStatus {
    state: char,
    sigpnd: u64,
    shdpnd: u64,
    seccomp: u32,
}

fn proc_status(pid: i32) -> Result<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
            PtraceError::TaskDied {
                pid,
                op: "read status",
                how: None,
            }
        } else {
            PtraceError::Proc { pid, source: e }
        }
    })?;
    let mut s = ProcStatus {
        state: '?',
        sigpnd: 0,
        shdpnd: 0,
        seccomp: 0,
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "State" => s.state = v.chars().next().unwrap_or('?'),
            "SigPnd" => s.sigpnd = u64::from_str_radix(v, 16).unwrap_or(0),
            "ShdPnd" => s.shdpnd = u64::from_str_radix(v, 16).unwrap_or(0),
            "Seccomp" => s.seccomp = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(s)
}

/// waitpid(pid, __WALL) (blocking, or WNOHANG); `None` if WNOHANG found nothing.
fn wait(pid: i32, nohang: bool, op: &'static str) -> Result<Option<StopKind>> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    let r = loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == -1 && errno().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break r;
    };
    if r == 0 {
        return Ok(None);
    }
    if r == -1 {
        let e = errno();
        if e.raw_os_error() == Some(libc::ECHILD) {
            return Err(PtraceError::TaskDied {
                pid,
                op,
                how: Some("no longer a tracee".into()),
            });
        }
        return Err(PtraceError::Request { pid, op, source: e });
    }
    if libc::WIFEXITED(status) {
        let how = format!("exited with status {}", libc::WEXITSTATUS(status));
        return Err(PtraceError::TaskDied {
            pid,
            op,
            how: Some(how),
        });
    }
    if libc::WIFSIGNALED(status) {
        let how = format!("killed by signal {}", libc::WTERMSIG(status));
        return Err(PtraceError::TaskDied {
            pid,
            op,
            how: Some(how),
        });
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    Ok(Some(match event {
        0 if sig == libc::SIGTRAP | 0x80 => StopKind::Syscall,
        0 => StopKind::Signal(sig),
        PTRACE_EVENT_STOP if sig == libc::SIGTRAP => StopKind::Interrupt,
        PTRACE_EVENT_STOP => StopKind::GroupStop(sig),
        e => StopKind::Event(e, sig),
    }))
}

/// Best effort after a failed interrupt; if the task is not in a stop this fails and the kernel
/// detaches it when ferry exits.
fn detach_after_error(pid: i32, e: &PtraceError) {
    if !matches!(e, PtraceError::TaskDied { .. }) {
        let _ = ptrace(
            libc::PTRACE_DETACH,
            pid,
            0,
            0,
            "detach after failed interrupt",
        );
    }
}

/// Attaches to `pid` with PTRACE_SEIZE (TRACESYSGOOD, so syscall stops are told apart from
/// SIGTRAP). The task keeps running until [`Running::interrupt`].
pub fn seize(pid: i32) -> Result<Running> {
    if proc_status(pid)?.state == 'Z' {
        return Err(PtraceError::Zombie { pid });
    }
    let opts = libc::PTRACE_O_TRACESYSGOOD as usize;
    match ptrace(libc::PTRACE_SEIZE, pid, 0, opts, "seize") {
        // Seizing a zombie fails with EPERM: tell that apart from other refusals.
        Err(e @ PtraceError::Request { .. }) => match proc_status(pid) {
            Ok(s) if s.state == 'Z' => Err(PtraceError::Zombie { pid }),
            _ => Err(e),
        },
        r => r.map(|_| Running {
            t: Task {
                pid,
                state: SeizedState::Alive,
            },
        }),
    }
}

impl Running {
    /// The task's pid (in ferry's pid namespace).
    pub fn pid(&self) -> i32 {
        self.t.pid
    }

    /// Traps the task with PTRACE_INTERRUPT and waits for the stop, passing back signals that
    /// were already being delivered and remembering whether the task was job-control stopped.
    /// On any error but the task's death, the task is detached again before returning.
    pub fn interrupt(self) -> Result<Stopped> {
        match self.queue_interrupt() {
            Ok(()) => self.interrupt_queued(),
            Err(e) => {
                detach_after_error(self.t.pid, &e);
                Err(e)
            }
        }
    }

    /// Queues PTRACE_INTERRUPT without waiting for the stop. The trap is taken the next time
    /// the task would return to user space, so a task held by the cgroup freezer can be
    /// interrupted while frozen and collected with [`Running::interrupt_queued`] once thawed,
    /// without running a single user instruction in between (CRIU's freeze-then-seize).
    pub fn queue_interrupt(&self) -> Result<()> {
        ptrace(libc::PTRACE_INTERRUPT, self.t.pid, 0, 0, "interrupt").map(drop)
    }

    /// Waits for the stop an earlier [`Running::queue_interrupt`] asked for, as
    /// [`Running::interrupt`] does (signals passed back, job-control stop remembered). On any
    /// error but the task's death, the task is detached again before returning.
    pub fn interrupt_queued(self) -> Result<Stopped> {
        let pid = self.t.pid;
        let r = self.interrupt_inner();
        if let Err(e) = &r {
            detach_after_error(pid, e);
        }
        r
    }

    fn interrupt_inner(self) -> Result<Stopped> {
        let pid = self.t.pid;
        let kind = loop {
            let kind = wait(pid, false, "wait for interrupt")?.expect("blocking wait");
            match kind {
                // A signal was on its way: let the task have it, the interrupt is still pending.
                StopKind::Signal(sig) => {
                    ptrace(libc::PTRACE_CONT, pid, 0, sig as usize, "re-deliver signal")?;
                }
                StopKind::Interrupt | StopKind::GroupStop(_) => break kind,
                other => {
                    return Err(PtraceError::UnexpectedStop {
                        pid,
                        op: "interrupt",
                        stop: other,
                    })
                }
            }
        };
        let status = proc_status(pid)?;
        if status.seccomp != 0 {
            // Remote syscalls must not be filtered by the task's own seccomp policy.
            let opts = (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_SUSPEND_SECCOMP) as usize;
            ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts, "suspend seccomp")?;
        }
        let stop_bit = 1u64 << (libc::SIGSTOP - 1);
        let mut nr_sigstop = 0;
        nr_sigstop += usize::from(status.sigpnd & stop_bit != 0);
        nr_sigstop += usize::from(status.shdpnd & stop_bit != 0);
        nr_sigstop += usize::from(matches!(kind, StopKind::GroupStop(_)));
        let mut t = self.t;
        let mut kind = kind;
        // A stopped task (or one with SIGSTOP queued) would not run the parasite: resume it once
        // per pending stop; the interrupt traps it again. It is stopped again at detach.
        for _ in 0..nr_sigstop {
            ptrace(libc::PTRACE_CONT, pid, 0, 0, "skip SIGSTOP")?;
            kind = wait(pid, false, "skip SIGSTOP")?.expect("blocking wait");
            t.state = SeizedState::Stopped;
        }
        Ok(Stopped { t, kind })
    }

    /// Traps the task with PTRACE_INTERRUPT and takes whatever stop comes first (used to regain
    /// control of injected code; a signal-delivery-stop there is suppressed by the next resume).
    pub fn stop_now(self) -> Result<Stopped> {
        ptrace(libc::PTRACE_INTERRUPT, self.t.pid, 0, 0, "interrupt")?;
        self.wait("wait for interrupt")
    }

    /// Blocks until the task stops, or fails with `TaskDied`.
    pub fn wait(self, op: &'static str) -> Result<Stopped> {
        let kind = wait(self.t.pid, false, op)?.expect("blocking wait");
        Ok(Stopped { t: self.t, kind })
    }

    /// Like [`Running::poll`] for a task running injected code with all signals blocked: a
    /// SIGSTOP delivery (the one signal the mask cannot hold) is deferred to the detach and the
    /// task resumed, so only real stops (traps, faults) are reported.
    pub fn poll_in_session(self, op: &'static str) -> Result<Polled> {
        match self.poll(op)? {
            Polled::Stopped(mut s) if s.kind == StopKind::Signal(libc::SIGSTOP) => {
                s.absorb_sigstop();
                Ok(Polled::Running(s.cont(0)?))
            }
            other => Ok(other),
        }
    }

    /// Checks without blocking whether the task stopped (or died).
    pub fn poll(self, op: &'static str) -> Result<Polled> {
        Ok(match wait(self.t.pid, true, op)? {
            None => Polled::Running(self),
            Some(kind) => Polled::Stopped(Stopped { t: self.t, kind }),
        })
    }
}

/// General-purpose registers (`struct user_regs_struct`).
pub type Regs = libc::user_regs_struct;

impl Stopped {
    /// The task's pid (in ferry's pid namespace).
    pub fn pid(&self) -> i32 {
        self.t.pid
    }

    /// Why the task is stopped.
    pub fn kind(&self) -> StopKind {
        self.kind
    }

    /// The job-control state found at seize time.
    pub fn seized_state(&self) -> SeizedState {
        self.t.state
    }

    /// If this is the delivery of a SIGSTOP (which the session's all-blocked mask cannot hold
    /// back), records that the task must be stopped again at detach and returns true; the
    /// caller then resumes with signal 0, so the stop does not happen inside injected code.
    pub fn absorb_sigstop(&mut self) -> bool {
        if self.kind == StopKind::Signal(libc::SIGSTOP) {
            self.t.state = SeizedState::Stopped;
            return true;
        }
        false
    }

    /// PTRACE_GETREGS.
    pub fn regs(&self) -> Result<Regs> {
        // SAFETY: user_regs_struct is plain integers; all-zero is valid.
        let mut regs: Regs = unsafe { std::mem::zeroed() };
        ptrace(
            libc::PTRACE_GETREGS,
            self.t.pid,
            0,
            &mut regs as *mut Regs as usize,
            "GETREGS",
        )?;
        Ok(regs)
    }

    /// PTRACE_SETREGS.
    pub fn set_regs(&self, regs: &Regs) -> Result<()> {
        ptrace(
            libc::PTRACE_SETREGS,
            self.t.pid,
            0,
            regs as *const Regs as usize,
            "SETREGS",
        )?;
        Ok(())
    }

    /// The XSAVE area (x87, SSE, AVX, ... state) via PTRACE_GETREGSET NT_X86_XSTATE.
    pub fn xstate(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; XSTATE_MAX];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let iov_ptr = &mut iov as *mut libc::iovec as usize;
        ptrace(
            libc::PTRACE_GETREGSET,
            self.t.pid,
            NT_X86_XSTATE,
            iov_ptr,
            "GETREGSET xstate",
        )?;
        let len = iov.iov_len;
        buf.truncate(len);
        Ok(buf)
    }

    /// Writes back an XSAVE area read by [`Stopped::xstate`].
    pub fn set_xstate(&self, xstate: &[u8]) -> Result<()> {
        let mut iov = libc::iovec {
            iov_base: xstate.as_ptr() as *mut _,
            iov_len: xstate.len(),
        };
        let iov_ptr = &mut iov as *mut libc::iovec as usize;
        ptrace(
            libc::PTRACE_SETREGSET,
            self.t.pid,
            NT_X86_XSTATE,
            iov_ptr,
            "SETREGSET xstate",
        )?;
        Ok(())
    }

    /// The blocked-signal mask (bit n-1 = signal n).
    pub fn sigmask(&self) -> Result<u64> {
        let mut mask = 0u64;
        ptrace(
            PTRACE_GETSIGMASK,
            self.t.pid,
            8,
            &mut mask as *mut u64 as usize,
            "GETSIGMASK",
        )?;
        Ok(mask)
    }

    /// Sets the blocked-signal mask (the kernel silently keeps SIGKILL/SIGSTOP unblocked).
    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        ptrace(
            PTRACE_SETSIGMASK,
            self.t.pid,
            8,
            &mask as *const u64 as usize,
            "SETSIGMASK",
        )?;
        Ok(())
    }

    fn into_task(self) -> Task {
        let t = self.t;
        std::mem::forget(self);
        t
    }

    /// PTRACE_CONT with `sig` (0 = suppress the pending signal of a signal-delivery-stop).
    pub fn cont(self, sig: i32) -> Result<Running> {
        let t = self.into_task();
        ptrace(libc::PTRACE_CONT, t.pid, 0, sig as usize, "cont")?;
        Ok(Running { t })
    }

    /// PTRACE_SYSCALL: resume until the next syscall entry or exit.
    pub fn cont_syscall(self) -> Result<Running> {
        let t = self.into_task();
        ptrace(libc::PTRACE_SYSCALL, t.pid, 0, 0, "syscall")?;
        Ok(Running { t })
    }

    /// Moves the task into an interrupt-stop (PTRACE_EVENT_STOP) without running user code.
    ///
    /// Registers set in a syscall-exit-stop are not followed by the kernel's syscall-restart
    /// logic, which runs only after get_signal(); in an interrupt-stop they are. So the original
    /// registers of a task interrupted inside a restartable syscall are written back here.
    pub fn park(self) -> Result<Stopped> {
        if matches!(self.kind, StopKind::Interrupt | StopKind::GroupStop(_)) {
            return Ok(self);
        }
        ptrace(
            libc::PTRACE_INTERRUPT,
            self.t.pid,
            0,
            0,
            "interrupt to park",
        )?;
        let mut r = self.cont(0)?;
        loop {
            let mut s = r.wait("park")?;
            match s.kind {
                StopKind::Interrupt | StopKind::GroupStop(_) => return Ok(s),
                // Signals are blocked during a session; a SIGSTOP is deferred to the detach,
                // anything else is swallowed: the interrupt is still pending and traps next.
                _ => {
                    s.absorb_sigstop();
                    r = s.cont(0)?;
                }
            }
        }
    }

    /// Detaches; a task that was stopped at seize time is stopped again first.
    pub fn detach(self) -> Result<()> {
        let t = self.into_task();
        if t.state == SeizedState::Stopped {
            // SAFETY: kill(2) with a valid signal number has no memory effects.
            unsafe { libc::kill(t.pid, libc::SIGSTOP) };
        }
        ptrace(libc::PTRACE_DETACH, t.pid, 0, 0, "detach")?;
        Ok(())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.t.state == SeizedState::Stopped {
            // SAFETY: as in `detach`.
            unsafe { libc::kill(self.t.pid, libc::SIGSTOP) };
        }
        // Best effort: an error path must not leave the task traced and stopped.
        let _ = ptrace(libc::PTRACE_DETACH, self.t.pid, 0, 0, "detach");
    }
}

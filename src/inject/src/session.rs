//! A session on a stopped task: saved state, remote syscalls, and the restore that ends it.
//!
//! Kernel mechanism: a remote syscall points the task's rip at an existing `syscall` instruction
//! (found in the vDSO, so no code page is patched), loads rax and the argument registers, and
//! resumes with PTRACE_SYSCALL twice: the task stops at syscall entry, runs the call, and stops at
//! syscall exit, where rax holds the result. orig_rax is set to -1 first so the kernel's
//! syscall-restart logic never rewinds rip for a task that was interrupted inside a syscall. All
//! signals are blocked (PTRACE_SETSIGMASK) for the session so none is delivered into injected
//! code; SIGKILL still ends the task, which surfaces as `TaskDied`. [`Session::end`] parks the
//! task in an interrupt-stop and writes back registers, XSAVE state and signal mask exactly as
//! they were, so a restartable syscall the task was in restarts as if nothing happened.

use crate::mem::{self, MemError};
use crate::ptrace::{PtraceError, Regs, StopKind, Stopped};

/// Errors of a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A ptrace operation failed (including the task dying).
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// Remote memory or maps access failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// The session already lost its task (an earlier step failed).
    #[error("task {pid}: session has no stopped task any more (an earlier step failed)")]
    Lost { pid: i32 },
    /// The task is in a state ferry cannot inject into yet.
    #[error("task {pid}: unsupported: {what}")]
    Unsupported { pid: i32, what: &'static str },
    /// A remote syscall did not enter as the syscall we asked for.
    #[error("task {pid}: remote syscall {nr} entered as {got}")]
    WrongSyscall { pid: i32, nr: u64, got: u64 },
}

type Result<T> = std::result::Result<T, SessionError>;

/// `__USER_CS` of 64-bit user mode on x86_64.
const USER64_CS: u64 = 0x33;

/// What a session restores at its end.
#[derive(Debug, Clone)]
pub struct SavedState {
    /// General-purpose registers at session start.
    pub regs: Regs,
    /// XSAVE area at session start.
    pub xstate: Vec<u8>,
    /// Blocked signals at session start.
    pub sigmask: u64,
}

/// A stopped task whose registers, FPU state and signal mask are saved for restore.
#[derive(Debug)]
pub struct Session {
    pid: i32,
    task: Option<Stopped>,
    saved: SavedState,
    syscall_ip: u64,
}

impl Session {
    /// Saves the task's state, blocks all its signals, and finds a syscall instruction.
    pub fn begin(task: Stopped) -> Result<Session> {
        let pid = task.pid();
        let regs = task.regs()?;
        // The blob and the remote-syscall ABI are x86_64; a task running 32-bit code (ia32
        // compat, cs 0x23) would need both for i386.
        if regs.cs != USER64_CS {
            return Err(SessionError::Unsupported {
                pid,
                what: "task runs 32-bit (compat) code",
            });
        }
        let saved = SavedState {
            regs,
            xstate: task.xstate()?,
            sigmask: task.sigmask()?,
        };
        let syscall_ip = mem::find_syscall_insn(pid)?;
        task.set_sigmask(!0)?;
        Ok(Session {
            pid,
            task: Some(task),
            saved,
            syscall_ip,
        })
    }

    /// The task's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The state saved at [`Session::begin`].
    pub fn saved(&self) -> &SavedState {
        &self.saved
    }

    /// Takes the stopped task out (for running injected code); put it back with [`Session::put`].
    pub(crate) fn take(&mut self) -> Result<Stopped> {
        self.task.take().ok_or(SessionError::Lost { pid: self.pid })
    }

    /// Returns a stopped task taken with [`Session::take`].
    pub(crate) fn put(&mut self, task: Stopped) {
        self.task = Some(task);
    }

    /// Executes syscall `nr` with `args` in the task and returns its raw result (-errno on error).
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let task = self.take()?;
        let mut regs = self.saved.regs;
        regs.rip = self.syscall_ip;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        let slots = [
            &mut regs.rdi,
            &mut regs.rsi,
            &mut regs.rdx,
            &mut regs.r10,
            &mut regs.r8,
            &mut regs.r9,
        ];
        for (slot, a) in slots
            .into_iter()
            .zip(args.iter().chain(std::iter::repeat(&0)))
        {
            *slot = *a;
        }
        task.set_regs(&regs)?;
        let mut task = task.cont_syscall()?.wait("remote syscall entry")?;
        // A PTRACE_INTERRUPT still pending from an earlier stop traps first, and a SIGSTOP
        // sent meanwhile is deferred to the detach: step past both.
        while task.kind() == StopKind::Interrupt || task.absorb_sigstop() {
            task = task.cont_syscall()?.wait("remote syscall entry")?;
        }
        let task = self.check(task, StopKind::Syscall, "remote syscall entry")?;
        let entered = task.regs()?.orig_rax;
        if entered != nr as u64 {
            self.task = Some(task);
            return Err(SessionError::WrongSyscall {
                pid: self.pid,
                nr: nr as u64,
                got: entered,
            });
        }
        let task = task.cont_syscall()?.wait("remote syscall exit")?;
        let task = self.check(task, StopKind::Syscall, "remote syscall exit")?;
        let ret = task.regs()?.rax as i64;
        self.task = Some(task);
        Ok(ret)
    }

    /// Keeps `task` in the session (so it is still restored) unless it stopped as `want`.
    pub(crate) fn check(
        &mut self,
        task: Stopped,
        want: StopKind,
        op: &'static str,
    ) -> Result<Stopped> {
        if task.kind() == want {
            return Ok(task);
        }
        let stop = task.kind();
        self.task = Some(task);
        Err(PtraceError::UnexpectedStop {
            pid: self.pid,
            op,
            stop,
        }
        .into())
    }

    /// Restores registers, XSAVE state and signal mask from an interrupt-stop and hands the task
    /// back, still stopped.
    pub fn end(mut self) -> Result<Stopped> {
        self.restore()
    }

    fn restore(&mut self) -> Result<Stopped> {
        let task = self.take()?.park()?;
        task.set_regs(&self.saved.regs)?;
        task.set_xstate(&self.saved.xstate)?;
        task.set_sigmask(self.saved.sigmask)?;
        Ok(task)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // An abandoned session still puts the task back as it was; the Stopped handle then
        // detaches on drop.
        if self.task.is_some() {
            let _ = self.restore();
        }
    }
}

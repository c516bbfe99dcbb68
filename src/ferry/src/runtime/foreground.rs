//! Waiting for a foreground process (init of `run`, or an `exec`) the way runc does: every
//! signal ferry receives is forwarded to it, children are reaped, and ferry's exit code is the
//! process's (128 + signal number if a signal killed it).
//!
//! All signals are blocked and taken synchronously with sigwait(2). The block happens after the
//! process exists (children inherit the mask), so a zombie is reaped before the first wait.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::RawFd;

use super::{Error, Result};

/// Exit code for a wait status of `pid`, if it is the end of `pid`.
pub fn exit_code(status: WaitStatus, pid: Pid) -> Option<i32> {
    match status {
        WaitStatus::Exited(p, code) if p == pid => Some(code),
        WaitStatus::Signaled(p, sig, _) if p == pid => Some(128 + sig as i32),
        _ => None,
    }
}

/// Reaps every exited child; returns `pid`'s exit code if it was among them.
fn reap(pid: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return Ok(None),
            Ok(status) => {
                if let Some(code) = exit_code(status, pid) {
                    return Ok(Some(code));
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(Error::sys(format!("wait for process {pid}"))(e)),
        }
    }
}

/// Waits for `pid` (a child of ferry) forwarding signals; returns its exit code. With a pty
/// master, SIGWINCH resizes it to the host terminal instead of being forwarded.
pub fn wait(pid: Pid, tty_master: Option<RawFd>) -> Result<i32> {
    let all = SigSet::all();
    all.thread_block()
        .map_err(Error::sys("block signals to forward them"))?;
    if let Some(code) = reap(pid)? {
        return Ok(code);
    }
    loop {
        let sig = all.wait().map_err(Error::sys(format!(
            "wait for a signal while process {pid} runs"
        )))?;
        match sig {
            Signal::SIGCHLD => {
                if let Some(code) = reap(pid)? {
                    return Ok(code);
                }
            }
            Signal::SIGWINCH => {
                if let Some(master) = tty_master {
                    super::console::resize(master);
                }
            }
            other => {
                if let Err(e) = kill(pid, other) {
                    tracing::warn!("forward {other} to process {pid}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_runc() {
        let p = Pid::from_raw(7);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3), p), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false), p),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::Exited(Pid::from_raw(8), 0), p), None);
    }
}

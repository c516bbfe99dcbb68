//! Per-thread state: running the parasite once in another thread of an infected task.
//!
//! Kernel mechanism: ptrace works per thread, so every thread is seized and interrupted on its
//! own (its tid is a valid ptrace target). The blob is already mapped (threads share the address
//! space), so a thread other than the one running the daemon only needs its own control area
//! and stack: ferry points its rip at the blob's entry with `mode = MODE_ONESHOT`, the thread runs
//! the posted command and stops on the entry's `int3`, and its session restores its registers,
//! XSAVE state and signal mask exactly, as for the main thread.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_blob_abi::{
    Command, Control, ThreadResult, ABI_VERSION, MODE_ONESHOT, PARASITE_MAGIC, PAYLOAD_OFFSET,
};

use crate::blob::PARASITE_BLOB;
use crate::parasite::{Parasite, ParasiteError};
use crate::ptrace::{Polled, StopKind, Stopped};
use crate::session::Session;

type Result<T> = std::result::Result<T, ParasiteError>;

impl Parasite {
    /// Reads the per-thread state of `thread`, a seized and stopped thread of this task other
    /// than the one the parasite daemon runs on, and hands it back restored and still stopped.
    /// On error the thread is restored and detached.
    pub fn thread_state(&mut self, thread: Stopped) -> Result<(ThreadResult, Stopped)> {
        let mut session = Session::begin(thread)?;
        let r = self.run_oneshot(&mut session, Command::DumpThread)?;
        Ok((r, session.end()?))
    }

    fn run_oneshot<T: Copy>(&mut self, session: &mut Session, cmd: Command) -> Result<T> {
        let tid = session.pid();
        let (base, layout, timeout) = (self.base(), self.layout, self.timeout());
        let ctl_off = layout.thread_control;
        {
            let area = &mut self.shared_mut()[ctl_off..ctl_off + PAYLOAD_OFFSET];
            area.fill(0);
            area[0..4].copy_from_slice(&PARASITE_MAGIC.to_le_bytes());
            area[4..8].copy_from_slice(&ABI_VERSION.to_le_bytes());
            area[8..12].copy_from_slice(&1u32.to_le_bytes()); // cmd_seq: one command posted
            area[16..20].copy_from_slice(&(cmd as u32).to_le_bytes());
            area[32..36].copy_from_slice(&MODE_ONESHOT.to_le_bytes());
        }
        let mut regs = session.saved().regs;
        regs.rip = base;
        regs.rsp = base + layout.thread_stack_top as u64;
        regs.rdi = base + ctl_off as u64;
        regs.orig_rax = u64::MAX;
        let task = session.take()?;
        if let Err(e) = task.set_regs(&regs) {
            session.put(task);
            return Err(e.into());
        }
        let mut running = task.cont(0)?;
        let deadline = Instant::now() + timeout;
        loop {
            match running.poll_in_session("parasite one-shot")? {
                Polled::Running(r) => running = r,
                Polled::Stopped(s) => {
                    let (stop, rip) = (s.kind(), s.regs()?.rip);
                    session.put(s);
                    let in_blob = rip > base && rip <= base + PARASITE_BLOB.len() as u64;
                    if stop == StopKind::Signal(libc::SIGTRAP) && in_blob {
                        break;
                    }
                    return Err(ParasiteError::Stopped {
                        pid: tid,
                        cmd,
                        stop,
                        rip,
                        base,
                    });
                }
            }
            if Instant::now() > deadline {
                session.put(running.stop_now()?);
                return Err(ParasiteError::Timeout {
                    pid: tid,
                    cmd,
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let ctl = &self.shared_mut()[ctl_off..ctl_off + PAYLOAD_OFFSET];
        // SAFETY: the control area is 4096-aligned inside the mapping and the thread has
        // stopped, so nothing writes it concurrently.
        let ctl = unsafe { &*(ctl.as_ptr() as *const Control) };
        let (acked, status, size) = (
            ctl.ack_seq.load(Ordering::Acquire),
            ctl.status,
            ctl.result_size,
        );
        if acked != 1 {
            let source = std::io::Error::other("thread trapped without answering");
            return Err(ParasiteError::Local {
                pid: tid,
                what: "one-shot parasite run",
                source,
            });
        }
        if status != 0 {
            let source = std::io::Error::from_raw_os_error(-status);
            return Err(ParasiteError::Command {
                pid: tid,
                cmd,
                source,
            });
        }
        self.read_payload(ctl_off, cmd, size)
    }
}

//! Dump half: signal dispositions, blocked masks and queued signals.
//!
//! Kernel mechanism: dispositions are per process and only `rt_sigaction` in the task itself
//! reads them (the parasite's DumpSigactions). Blocked masks come from PTRACE_GETSIGMASK per
//! thread. Queued signals are read without dequeuing them with PTRACE_PEEKSIGINFO: the thread's
//! private queue, and with PTRACE_PEEKSIGINFO_SHARED the process-wide queue; each is a raw
//! 128-byte `siginfo_t`, stored as is (CRIU's `siginfo_entry`).

use ferry_images::pb;
use ferry_inject::abi::SigactionsResult;

/// Errors of the signal dump.
#[derive(Debug, thiserror::Error)]
pub enum SigactError {
    /// PTRACE_PEEKSIGINFO failed.
    #[error("thread {tid}: PTRACE_PEEKSIGINFO ({queue} queue): {source}")]
    Peek {
        tid: i32,
        queue: &'static str,
        source: std::io::Error,
    },
}

const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const SIGINFO_SIZE: usize = 128;

/// CRIU's 62 `sa_entry`s (signals 1..=64 without SIGKILL and SIGSTOP).
pub fn sigactions(r: &SigactionsResult) -> Vec<pb::SaEntry> {
    (1..=64usize)
        .filter(|&s| s != libc::SIGKILL as usize && s != libc::SIGSTOP as usize)
        .map(|s| {
            let a = r.actions[s - 1];
            pb::SaEntry {
                sigaction: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
                compat_sigaction: Some(false),
                mask_extended: None,
            }
        })
        .collect()
}

/// The queued signals of thread `tid` (`shared`: the process-wide queue), oldest first.
pub fn pending(tid: i32, shared: bool) -> Result<Vec<pb::SiginfoEntry>, SigactError> {
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let queue = if shared { "shared" } else { "private" };
    let mut out = Vec::new();
    let mut buf = vec![0u8; SIGINFO_SIZE * 32];
    loop {
        let args = Args {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: 32,
        };
        // SAFETY: `args` is the kernel's ptrace_peeksiginfo_args; `buf` holds `nr` siginfos.
        let n = unsafe {
            libc::ptrace(
                PTRACE_PEEKSIGINFO,
                tid,
                &args as *const Args as *mut libc::c_void,
                buf.as_mut_ptr() as *mut libc::c_void,
            )
        };
        if n < 0 {
            let source = std::io::Error::last_os_error();
            return Err(SigactError::Peek { tid, queue, source });
        }
        if n == 0 {
            return Ok(out);
        }
        for c in buf.chunks_exact(SIGINFO_SIZE).take(n as usize) {
            out.push(pb::SiginfoEntry {
                siginfo: c.to_vec(),
            });
        }
    }
}

/// `Some(queue)` when there is anything queued, as CRIU leaves the field out otherwise.
pub fn queue(v: Vec<pb::SiginfoEntry>) -> Option<pb::SignalQueueEntry> {
    (!v.is_empty()).then_some(pb::SignalQueueEntry { signals: v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_inject::abi::KSigaction;

    #[test]
    fn skips_kill_and_stop() {
        let mut r = SigactionsResult {
            actions: [KSigaction::default(); 64],
        };
        r.actions[9].handler = 0x1234; // SIGUSR1
        r.actions[13].flags = 7; // SIGALRM
        let v = sigactions(&r);
        assert_eq!(v.len(), 62);
        assert_eq!(v[8].sigaction, 0x1234); // entry 9 = SIGUSR1
        assert_eq!(v[12].flags, 7); // entry 13 = SIGALRM (fixture README)
    }
}

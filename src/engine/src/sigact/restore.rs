//! Restore half of signal state, applied by the task's Rust half before the restorer runs (with
//! every signal blocked, so nothing is delivered until `rt_sigreturn` installs the real mask):
//! dispositions with `rt_sigaction` (handler, flags, restorer, mask exactly as dumped), then the
//! pending signals with their full siginfo, shared ones with `rt_sigqueueinfo` and the thread's
//! own with `rt_tgsigqueueinfo`. Dispositions go first because queueing a signal that is ignored
//! at that moment would drop it. The blocked mask and sigaltstack travel in the sigreturn frame.

use ferry_images::pb;
use thiserror::Error;

/// Errors restoring signal state.
#[derive(Debug, Error)]
pub enum SigError {
    /// A syscall failed.
    #[error("task {pid}: {op} of signal {sig}: {source}")]
    Sys {
        /// Task.
        pid: u32,
        /// Operation.
        op: &'static str,
        /// Signal.
        sig: u32,
        /// Why.
        source: std::io::Error,
    },
    /// Malformed image data.
    #[error("task {pid}: {what}")]
    Bad {
        /// Task.
        pid: u32,
        /// What.
        what: String,
    },
}

/// Maps the image's sigaction list to signal numbers: CRIU stores 62 entries (SIGKILL and
/// SIGSTOP skipped); a 64-entry list is indexed by signal - 1.
pub fn numbered(sa: &[pb::SaEntry]) -> Vec<(u32, pb::SaEntry)> {
    let sigs: Vec<u32> = if sa.len() >= 64 {
        (1..=64).collect()
    } else {
        (1..=64).filter(|&s| s != 9 && s != 19).collect()
    };
    sigs.into_iter()
        .zip(sa.iter().copied())
        .filter(|(s, _)| *s != 9 && *s != 19)
        .collect()
}

/// Blocks every signal in the calling thread.
pub fn block_all() {
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask with a valid 8-byte set and no old-set pointer.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all,
            0usize,
            8usize,
        );
    }
}

/// Installs every disposition of the image.
pub fn set_actions(pid: u32, tc: &pb::TaskCoreEntry) -> Result<(), SigError> {
    for (sig, sa) in numbered(&tc.sigactions) {
        if sa.compat_sigaction == Some(true) {
            return Err(SigError::Bad {
                pid,
                what: format!(
                    "signal {sig}: compat sigaction is not supported by ferry's restore yet"
                ),
            });
        }
        let k: [u64; 4] = [sa.sigaction, sa.flags, sa.restorer, sa.mask];
        // SAFETY: rt_sigaction with a valid kernel-layout sigaction and sigsetsize 8.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig as i64,
                k.as_ptr(),
                0usize,
                8usize,
            )
        };
        if r != 0 {
            return Err(SigError::Sys {
                pid,
                op: "rt_sigaction",
                sig,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn queue(pid: u32, tid: Option<u32>, q: &pb::SignalQueueEntry) -> Result<(), SigError> {
    for s in &q.signals {
        if s.siginfo.len() != 128 {
            return Err(SigError::Bad {
                pid,
                what: format!("siginfo of {} bytes (expected 128)", s.siginfo.len()),
            });
        }
        let mut info = [0u8; 128];
        info.copy_from_slice(&s.siginfo);
        let sig = u32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        // SAFETY: queueing a signal to this very process with a 128-byte siginfo buffer.
        let r = unsafe {
            match tid {
                None => libc::syscall(
                    libc::SYS_rt_sigqueueinfo,
                    pid as i64,
                    sig as i64,
                    info.as_ptr(),
                ),
                Some(t) => libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    pid as i64,
                    t as i64,
                    sig as i64,
                    info.as_ptr(),
                ),
            }
        };
        if r != 0 {
            return Err(SigError::Sys {
                pid,
                op: if tid.is_some() {
                    "rt_tgsigqueueinfo"
                } else {
                    "rt_sigqueueinfo"
                },
                sig,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Queues the task's shared pending signals and the main thread's own.
pub fn queue_pending(pid: u32, cores: &[(u32, pb::CoreEntry)]) -> Result<(), SigError> {
    if let Some(q) = cores
        .first()
        .and_then(|(_, c)| c.tc.as_ref()?.signals_s.as_ref())
    {
        queue(pid, None, q)?;
    }
    for (tid, c) in cores {
        let Some(q) = c.thread_core.as_ref().and_then(|t| t.signals_p.as_ref()) else {
            continue;
        };
        if q.signals.is_empty() {
            continue;
        }
        if *tid != pid {
            continue; // queued by the thread itself in the restorer (see `thread_siginfos`)
        }
        queue(pid, Some(*tid), q)?;
    }
    Ok(())
}

/// The raw siginfos of a secondary thread's own pending signals, checked, for the restorer.
pub fn thread_siginfos(pid: u32, core: &pb::CoreEntry) -> Result<Vec<u8>, SigError> {
    let mut out = Vec::new();
    let Some(q) = core.thread_core.as_ref().and_then(|t| t.signals_p.as_ref()) else {
        return Ok(out);
    };
    for s in &q.signals {
        if s.siginfo.len() != 128 {
            return Err(SigError::Bad {
                pid,
                what: format!("siginfo of {} bytes (expected 128)", s.siginfo.len()),
            });
        }
        out.extend_from_slice(&s.siginfo);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_numbering_skips_kill_and_stop() {
        let sa: Vec<pb::SaEntry> = (0..62)
            .map(|i| pb::SaEntry {
                sigaction: i,
                ..Default::default()
            })
            .collect();
        let n = numbered(&sa);
        assert_eq!(n.len(), 62);
        assert_eq!(n[8].0, 10); // entry 9 = SIGUSR1
        assert_eq!(n[8].1.sigaction, 8);
        assert_eq!(n[12].0, 14); // entry 13 = SIGALRM
        assert_eq!(n.last().unwrap().0, 64);
    }
}

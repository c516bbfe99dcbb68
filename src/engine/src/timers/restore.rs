//! Restore half of timers, armed by the task's Rust half just before the restorer runs: the
//! three interval timers with `setitimer` (remaining value and interval), and POSIX timers with
//! their original ids. Since Linux 6.15 `prctl(PR_TIMER_CREATE_RESTORE_IDS)` makes `timer_create`
//! take the id from `*timerid` instead of allocating one, which is how a timer gets its old id
//! back; then `timer_settime` arms it with the dumped remaining time and interval.

use ferry_images::pb;
use thiserror::Error;

const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const SIGEV_THREAD_ID: u32 = 4;

/// Errors restoring timers.
#[derive(Debug, Error)]
pub enum TimerError {
    /// A syscall failed.
    #[error("task {pid}: {op} (timer {id}): {source}")]
    Sys {
        /// Task.
        pid: u32,
        /// Operation.
        op: &'static str,
        /// Timer id (itimer: 0 real, 1 virtual, 2 prof).
        id: u32,
        /// Why.
        source: std::io::Error,
    },
}

fn err(pid: u32, op: &'static str, id: u32) -> TimerError {
    TimerError::Sys {
        pid,
        op,
        id,
        source: std::io::Error::last_os_error(),
    }
}

/// Arms the interval timers and POSIX timers of `t`.
pub fn arm(pid: u32, t: &pb::TaskTimersEntry) -> Result<(), TimerError> {
    for (which, it) in [(0, &t.real), (1, &t.virt), (2, &t.prof)] {
        if it.vsec == 0 && it.vusec == 0 && it.isec == 0 && it.iusec == 0 {
            continue;
        }
        // A periodic timer caught between expiry and reload (its signal pending) reads as value
        // 0, which setitimer would take as "disarm": let it fire right away instead.
        let vusec = if it.vsec == 0 && it.vusec == 0 {
            1
        } else {
            it.vusec
        };
        let v = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: it.isec as i64,
                tv_usec: it.iusec as i64,
            },
            it_value: libc::timeval {
                tv_sec: it.vsec as i64,
                tv_usec: vusec as i64,
            },
        };
        // SAFETY: setitimer with a valid itimerval and no old-value pointer.
        if unsafe { libc::syscall(libc::SYS_setitimer, which, &v, 0usize) } != 0 {
            return Err(err(pid, "setitimer", which as u32));
        }
    }
    if t.posix.is_empty() {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) } != 0 {
        return Err(err(
            pid,
            "prctl(PR_TIMER_CREATE_RESTORE_IDS) (needs Linux 6.15+)",
            0,
        ));
    }
    for p in &t.posix {
        // struct sigevent: value, signo, notify, then the thread id (union), padded to 64.
        let mut ev = [0u8; 64];
        ev[0..8].copy_from_slice(&p.sival_ptr.to_le_bytes());
        ev[8..12].copy_from_slice(&p.si_signo.to_le_bytes());
        ev[12..16].copy_from_slice(&p.it_sigev_notify.to_le_bytes());
        if p.it_sigev_notify & SIGEV_THREAD_ID != 0 {
            let tid = p.notify_thread_id.unwrap_or(pid as i32);
            ev[16..20].copy_from_slice(&tid.to_le_bytes());
        }
        let mut id: i32 = p.it_id as i32;
        // SAFETY: timer_create with a valid sigevent and a timer-id out-pointer (which, with
        // the restore-ids mode on, also carries the wanted id in).
        let r = unsafe {
            libc::syscall(
                libc::SYS_timer_create,
                p.clock_id as i64,
                ev.as_ptr(),
                &mut id as *mut i32,
            )
        };
        if r != 0 || id != p.it_id as i32 {
            return Err(err(pid, "timer_create", p.it_id));
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: p.isec as i64,
                tv_nsec: p.insec as i64,
            },
            // As for itimers: a periodic timer read as 0 between expiry and reload fires now.
            it_value: libc::timespec {
                tv_sec: p.vsec as i64,
                tv_nsec: if p.vsec == 0 && p.vnsec == 0 && (p.isec != 0 || p.insec != 0) {
                    1
                } else {
                    p.vnsec as i64
                },
            },
        };
        // SAFETY: timer_settime on the timer just created, with a valid itimerspec.
        let r = unsafe { libc::syscall(libc::SYS_timer_settime, id as i64, 0, &spec, 0usize) };
        if r != 0 {
            return Err(err(pid, "timer_settime", p.it_id));
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
    Ok(())
}

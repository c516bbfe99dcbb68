//! Dump half: interval timers and POSIX timers into `task_timers_entry`.
//!
//! Kernel mechanism: `getitimer` and `timer_gettime`/`timer_getoverrun` only work inside the
//! owning process, so the parasite calls them; /proc/PID/timers lists the POSIX timers' ids,
//! signal, sigev value, notification kind and clock, which the parasite cannot see.

use ferry_images::pb;
use ferry_inject::abi::{ItimersResult, Itimerval, PosixTimer};

/// Errors of the timer dump.
#[derive(Debug, thiserror::Error)]
pub enum TimersError {
    /// /proc/PID/timers could not be read.
    #[error("task {pid}: reading /proc/{pid}/timers: {source}")]
    Proc { pid: i32, source: std::io::Error },
    /// A /proc/PID/timers record did not parse.
    #[error("task {pid}: /proc/{pid}/timers: bad record for timer {id}: {what}")]
    Parse { pid: i32, id: i32, what: String },
}

/// One record of /proc/PID/timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTimer {
    /// Timer id.
    pub id: i32,
    /// Signal number.
    pub signo: u32,
    /// sigev_value.
    pub sival: u64,
    /// SIGEV_* notification.
    pub notify: u32,
    /// Target thread for SIGEV_THREAD_ID.
    pub notify_tid: Option<i32>,
    /// Clock id.
    pub clock: u32,
}

const SIGEV_SIGNAL: u32 = 0;
const SIGEV_NONE: u32 = 1;
const SIGEV_THREAD_ID: u32 = 4;

/// Parses /proc/PID/timers.
pub fn parse_proc_timers(pid: i32, text: &str) -> Result<Vec<ProcTimer>, TimersError> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k == "ID" {
            let id = v.parse().map_err(|_| TimersError::Parse {
                pid,
                id: -1,
                what: format!("ID {v:?}"),
            })?;
            out.push(ProcTimer {
                id,
                signo: 0,
                sival: 0,
                notify: SIGEV_NONE,
                notify_tid: None,
                clock: 0,
            });
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        let id = t.id;
        let bad = |what: &str| TimersError::Parse {
            pid,
            id,
            what: what.to_string(),
        };
        match k {
            "signal" => {
                let (s, val) = v.split_once('/').ok_or_else(|| bad(line))?;
                t.signo = s.parse().map_err(|_| bad(line))?;
                t.sival = u64::from_str_radix(val, 16).map_err(|_| bad(line))?;
            }
            "notify" => {
                let (kind, target) = v.split_once('/').unwrap_or((v, ""));
                let thread = target.starts_with("tid.");
                t.notify = match kind {
                    "none" => SIGEV_NONE,
                    "signal" if thread => SIGEV_THREAD_ID | SIGEV_SIGNAL,
                    "signal" => SIGEV_SIGNAL,
                    "thread" => SIGEV_THREAD_ID,
                    _ => return Err(bad(line)),
                };
                if thread {
                    let tid = target.trim_start_matches("tid.");
                    t.notify_tid = Some(tid.parse().map_err(|_| bad(line))?);
                }
            }
            "ClockID" => t.clock = v.parse().map_err(|_| bad(line))?,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads /proc/PID/timers.
pub fn proc_timers(pid: i32) -> Result<Vec<ProcTimer>, TimersError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .map_err(|source| TimersError::Proc { pid, source })?;
    parse_proc_timers(pid, &text)
}

fn itimer(v: &Itimerval) -> pb::ItimerEntry {
    pb::ItimerEntry {
        isec: v.interval.sec as u64,
        iusec: v.interval.usec as u64,
        vsec: v.value.sec as u64,
        vusec: v.value.usec as u64,
    }
}

/// `task_timers_entry` from the parasite's answers and /proc's records (same order).
pub fn timers(
    it: &ItimersResult,
    procs: &[ProcTimer],
    posix: &[PosixTimer],
) -> pb::TaskTimersEntry {
    pb::TaskTimersEntry {
        real: itimer(&it.real),
        virt: itimer(&it.virt),
        prof: itimer(&it.prof),
        posix: procs
            .iter()
            .zip(posix)
            .map(|(p, t)| pb::PosixTimerEntry {
                it_id: p.id as u32,
                clock_id: p.clock,
                si_signo: p.signo,
                it_sigev_notify: p.notify,
                sival_ptr: p.sival,
                overrun: t.overrun as u32,
                isec: t.interval.sec as u64,
                insec: t.interval.nsec as u64,
                vsec: t.value.sec as u64,
                vnsec: t.value.nsec as u64,
                notify_thread_id: p.notify_tid,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timer_records() {
        let text = "ID: 0\nsignal: 10/0000000000005157\nnotify: signal/pid.8612\nClockID: 1\n\
                    ID: 2\nsignal: 0/0000000000000000\nnotify: none/pid.8612\nClockID: 0\n\
                    ID: 3\nsignal: 12/0000000000000001\nnotify: signal/tid.8613\nClockID: 1\n";
        let v = parse_proc_timers(1, text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            (v[0].signo, v[0].sival, v[0].notify, v[0].clock),
            (10, 0x5157, 0, 1)
        );
        assert_eq!(v[1].notify, SIGEV_NONE);
        assert_eq!((v[2].notify, v[2].notify_tid), (4, Some(8613)));
        assert!(parse_proc_timers(1, "ID: x\n").is_err());
    }
}

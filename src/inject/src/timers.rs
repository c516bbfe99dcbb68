//! POSIX timers: ids from /proc/PID/timers, state from inside the task.
//!
//! Kernel mechanism: /proc/PID/timers lists a process's POSIX timers (id, signal, notify, clock)
//! but not their remaining time or overrun count, which only `timer_gettime` and
//! `timer_getoverrun` in the owning process return; the parasite calls them for the listed ids.

use std::io;

use ferry_blob_abi::{Command, PosixTimer, PosixTimersArgs, PosixTimersResult, MAX_POSIX_TIMERS};

use crate::parasite::{Parasite, ParasiteError};

type Result<T> = std::result::Result<T, ParasiteError>;

/// Parses the `ID:` lines of /proc/PID/timers text.
pub fn parse_timer_ids(text: &str) -> Vec<i32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("ID:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// The ids of task `pid`'s POSIX timers.
pub fn posix_timer_ids(pid: i32) -> Result<Vec<i32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).map_err(|source| {
        ParasiteError::Local {
            pid,
            what: "read /proc/PID/timers",
            source,
        }
    })?;
    Ok(parse_timer_ids(&text))
}

impl Parasite {
    /// Interval, remaining time and overrun count of each timer in `ids`, in that order.
    pub fn posix_timers(&mut self, ids: &[i32]) -> Result<Vec<PosixTimer>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_POSIX_TIMERS) {
            let mut args = PosixTimersArgs {
                nr: chunk.len() as u32,
                pad: 0,
                ids: [0; MAX_POSIX_TIMERS],
            };
            args.ids[..chunk.len()].copy_from_slice(chunk);
            self.write_args(&args);
            let r: PosixTimersResult = self.result(Command::DumpPosixTimers)?;
            if r.nr as usize != chunk.len() {
                let source =
                    io::Error::other(format!("{} of {} timers answered", r.nr, chunk.len()));
                return Err(ParasiteError::Local {
                    pid: self.pid(),
                    what: "posix timers",
                    source,
                });
            }
            out.extend_from_slice(&r.timers[..chunk.len()]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let text = "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.1234\nClockID: 1\n\
                    ID: 3\nsignal: 0/0000000000000000\nnotify: none/pid.1234\nClockID: 0\n";
        assert_eq!(parse_timer_ids(text), vec![0, 3]);
        assert!(parse_timer_ids("").is_empty());
    }
}

//! timerfd (TIMERFD entries).
//!
//! Kernel mechanism: fdinfo of a timerfd shows `clockid`, `ticks` (expirations not yet read),
//! `settime flags` (octal) and `it_value`/`it_interval` as `(sec, nsec)`, the value being the
//! time left. A restore creates `timerfd_create(clockid)`, arms it with the time left and the
//! interval (relative, so the time the tree spent checkpointed does not count, as CRIU does) and
//! puts unread expirations back with TFD_IOC_SET_TICKS.

use std::os::fd::{AsRawFd, OwnedFd};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, RestoreError};

/// _IOW('T', 0, u64).
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

fn pair(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

// ---- dump ----

/// The TIMERFD entry of an fd.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let get = |k: &str| {
        super::field(&fd.info, k).ok_or_else(|| fd.state("timerfd", format!("fdinfo has no {k}")))
    };
    let bad = |k: &str| fd.state("timerfd", format!("cannot parse {k} in fdinfo"));
    let clockid = get("clockid")?.parse().map_err(|_| bad("clockid"))?;
    let ticks = get("ticks")?.parse().map_err(|_| bad("ticks"))?;
    let settime_flags =
        u32::from_str_radix(get("settime flags")?, 8).map_err(|_| bad("settime flags"))?;
    let (vsec, vnsec) = pair(get("it_value")?).ok_or_else(|| bad("it_value"))?;
    let (isec, insec) = pair(get("it_interval")?).ok_or_else(|| bad("it_interval"))?;
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Timerfd as i32,
        id,
        tfd: Some(pb::TimerfdEntry {
            id,
            flags: fd.flags,
            fown: fd.fown,
            clockid,
            ticks,
            settime_flags,
            vsec,
            vnsec,
            isec,
            insec,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// A new timerfd armed with the time left and the interval, with its unread ticks.
pub fn open(pid: u32, fd: u32, e: &pb::TimerfdEntry) -> Result<OwnedFd, RestoreError> {
    let what = format!("task {pid} fd {fd}");
    let state = |w: String| RestoreError::State {
        pid,
        fd,
        kind: "timerfd",
        what: w,
    };
    let flags = libc::TFD_CLOEXEC | (e.flags as i32 & libc::O_NONBLOCK);
    // SAFETY: timerfd_create with integer arguments; returns a new fd.
    let n = unsafe { libc::timerfd_create(e.clockid as i32, flags) };
    let tfd = owned(n, "timerfd_create", &what)?;
    let ts = |s: u64, ns: u64| libc::timespec {
        tv_sec: s as i64,
        tv_nsec: ns as i64,
    };
    let mut value = ts(e.vsec, e.vnsec);
    let interval = ts(e.isec, e.insec);
    if value.tv_sec == 0 && value.tv_nsec == 0 && (interval.tv_sec, interval.tv_nsec) != (0, 0) {
        value.tv_nsec = 1; // due right now: arm it rather than disarm it
    }
    let spec = libc::itimerspec {
        it_interval: interval,
        it_value: value,
    };
    // SAFETY: timerfd_settime on our fd with a valid itimerspec; no old value wanted.
    if unsafe { libc::timerfd_settime(tfd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(state(format!(
            "timerfd_settime: {}",
            std::io::Error::last_os_error()
        )));
    }
    if e.ticks > 0 {
        let ticks = e.ticks;
        // SAFETY: TFD_IOC_SET_TICKS reads one u64 from a valid pointer.
        if unsafe { libc::ioctl(tfd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) } != 0 {
            return Err(state(format!(
                "TFD_IOC_SET_TICKS {ticks}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(tfd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_time_pairs() {
        assert_eq!(super::pair("(1, 500)"), Some((1, 500)));
        assert_eq!(super::pair(" (0, 0)"), Some((0, 0)));
        assert_eq!(super::pair("1, 2"), None);
    }
}

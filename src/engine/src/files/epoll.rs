//! epoll instances (EVENTPOLL entries).
//!
//! Kernel mechanism: an epoll instance watches (file, fd number) pairs; fdinfo lists each as
//! `tfd: N events: HEX data: HEX pos: ino: sdev:`. A restore creates the instance in the
//! coordinator, and the targets are added inside each task holding it once the task's fds are
//! in place (the watch names the target by the task's own fd number, as it did before); an
//! instance shared by several tasks gets each target once (EEXIST from the others is expected).
//! Readiness is the kernel's business again: what was ready is still ready.

use std::os::fd::OwnedFd;

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, Opened, RestoreError};

fn hex_after<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    let i = words.iter().position(|w| *w == key)?;
    words.get(i + 1).copied()
}

/// The targets listed in an epoll fdinfo text.
fn targets(info: &str) -> Option<Vec<pb::EventpollTfdEntry>> {
    let mut out = Vec::new();
    for l in info.lines().filter(|l| l.starts_with("tfd:")) {
        let words: Vec<&str> = l.split_whitespace().collect();
        let kv = |k: &str| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(k))
                .filter(|v| !v.is_empty())
        };
        out.push(pb::EventpollTfdEntry {
            id: 0,
            tfd: hex_after(&words, "tfd:")?.parse().ok()?,
            events: u32::from_str_radix(hex_after(&words, "events:")?, 16).ok()?,
            data: u64::from_str_radix(hex_after(&words, "data:")?, 16).ok()?,
            dev: kv("sdev:").and_then(|v| u32::from_str_radix(v, 16).ok()),
            inode: kv("ino:").and_then(|v| u64::from_str_radix(v, 16).ok()),
            pos: kv("pos:").and_then(|v| v.parse().ok()),
        });
    }
    Some(out)
}

// ---- dump ----

/// The EVENTPOLL entry of an fd, with its targets.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let tfd = targets(&fd.info).ok_or_else(|| fd.state("epoll", "cannot parse its targets"))?;
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Eventpoll as i32,
        id,
        epfd: Some(pb::EventpollFileEntry {
            id,
            flags: fd.flags,
            fown: fd.fown,
            tfd,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// A new, empty epoll instance (targets come in [`add_targets`]).
pub fn open(pid: u32, fd: u32, _e: &pb::EventpollFileEntry) -> Result<OwnedFd, RestoreError> {
    // SAFETY: epoll_create1 with a flag; returns a new fd.
    let n = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    owned(n, "epoll_create1", &format!("task {pid} fd {fd}"))
}

/// Adds the targets of the epoll at `ep` (runs in the task, after all its fds are in place).
pub fn add_targets(
    pid: u32,
    ep: &pb::FdinfoEntry,
    tfds: &[pb::EventpollTfdEntry],
    fds: &[pb::FdinfoEntry],
    _opened: &Opened,
) -> Result<(), RestoreError> {
    let state = |what: String| RestoreError::State {
        pid,
        fd: ep.fd,
        kind: "epoll",
        what,
    };
    for t in tfds {
        if !fds.iter().any(|f| f.fd == t.tfd) {
            return Err(state(format!(
                "target fd {} is not open in the task",
                t.tfd
            )));
        }
        let mut ev = libc::epoll_event {
            events: t.events,
            u64: t.data,
        };
        // SAFETY: epoll_ctl on fds of this task with a valid event struct.
        let r =
            unsafe { libc::epoll_ctl(ep.fd as i32, libc::EPOLL_CTL_ADD, t.tfd as i32, &mut ev) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(state(format!("adding target fd {}: {e}", t.tfd)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fdinfo_targets() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
                    tfd:        6 events:       19 data:         feed0006  pos:0 ino:40e sdev:10\n";
        let t = super::targets(info).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].tfd, t[0].events, t[0].data), (6, 0x19, 0xfeed0006));
        assert_eq!(
            (t[0].inode, t[0].dev, t[0].pos),
            (Some(0x40e), Some(0x10), Some(0))
        );
    }
}

//! fanotify groups (FANOTIFY entries with their marks).
//!
//! Kernel mechanism: fdinfo of a fanotify fd shows the group's init flags and event-fd flags
//! (`fanotify flags:HEX event-flags:HEX`), then one line per mark: inode marks name the inode
//! by file handle (`ino: sdev: mflags: mask: ignored_mask: fhandle-bytes: fhandle-type:
//! f_handle:`), mount marks by mount id (`mnt_id: mflags: mask: ignored_mask:`). A restore calls
//! `fanotify_init` with the same flags and adds each mark again with `fanotify_mark` on the inode
//! (opened by handle, as for inotify) or on the mount's path (from /proc/self/mountinfo); the
//! ignored mask is added with FAN_MARK_IGNORED_MASK. Filesystem (sb) marks and queued events are
//! not carried: the first is a dump error.

use std::os::fd::{AsRawFd, OwnedFd};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::inotify::{handle_of, hex, open_handle};
use super::restore::{owned, RestoreError};

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;

/// (faflags, evflags, marks) of a fanotify fdinfo text; `Err(line)` for a mark ferry cannot carry.
fn parse(info: &str) -> Result<(u32, u32, Vec<pb::FanotifyMarkEntry>), String> {
    let (mut fa, mut ev, mut marks) = (None, None, Vec::new());
    for l in info.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let n = |k: &str| hex(l, k).map(|v| v as u32).ok_or_else(|| l.to_string());
        if l.starts_with("flags:") {
            fa = Some(n("flags")?);
            ev = Some(n("event-flags")?);
        } else if l.starts_with("ino:") {
            marks.push(pb::FanotifyMarkEntry {
                id: 0,
                r#type: pb::MarkType::Inode as i32,
                mflags: n("mflags")?,
                mask: n("mask")?,
                ignored_mask: n("ignored_mask")?,
                s_dev: n("sdev")?,
                ie: Some(pb::FanotifyInodeMarkEntry {
                    i_ino: hex(l, "ino").ok_or_else(|| l.to_string())?,
                    f_handle: handle_of(l).ok_or_else(|| l.to_string())?,
                }),
                me: None,
            });
        } else if l.starts_with("mnt_id:") {
            marks.push(pb::FanotifyMarkEntry {
                id: 0,
                r#type: pb::MarkType::Mount as i32,
                mflags: n("mflags")?,
                mask: n("mask")?,
                ignored_mask: n("ignored_mask")?,
                s_dev: 0,
                ie: None,
                me: Some(pb::FanotifyMountMarkEntry {
                    mnt_id: n("mnt_id")?,
                    path: None,
                }),
            });
        } else {
            return Err(l.to_string());
        }
    }
    Ok((fa.unwrap_or(0), ev.unwrap_or(0), marks))
}

/// The path of mount `mnt_id` in ferry's own mount namespace.
fn mount_path(mnt_id: u32) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first()?.parse::<u32>().ok()? == mnt_id).then(|| f.get(4).map(|s| s.to_string()))?
    })
}

// ---- dump ----

/// The FANOTIFY entry of an fd, with its marks.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let (faflags, evflags, mut mark) =
        parse(&fd.info).map_err(|l| fd.state("fanotify", format!("cannot carry mark {l:?}")))?;
    let id = t.next_id();
    for m in &mut mark {
        m.id = id;
        if let Some(me) = &mut m.me {
            me.path = mount_path(me.mnt_id);
        }
    }
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Fanotify as i32,
        id,
        ffy: Some(pb::FanotifyFileEntry {
            id,
            flags: fd.flags,
            fown: fd.fown,
            faflags,
            evflags,
            mark,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// A new fanotify group with every mark.
pub fn open(pid: u32, fd: u32, e: &pb::FanotifyFileEntry) -> Result<OwnedFd, RestoreError> {
    let state = |what: String| RestoreError::State {
        pid,
        fd,
        kind: "fanotify",
        what,
    };
    // The group's init flags exactly as fdinfo showed them (FAN_NONBLOCK and FAN_CLOEXEC are
    // among them and show again after a dump); the task's fd gets FD_CLOEXEC from dup3.
    let flags = e.faflags;
    // SAFETY: fanotify_init with integer arguments; returns a new fd.
    let n = unsafe { libc::fanotify_init(flags, e.evflags) };
    let ffd = owned(n, "fanotify_init", &format!("task {pid} fd {fd}"))?;
    for m in &e.mark {
        let (path, kind, _hold) = if let Some(ie) = &m.ie {
            let h = open_handle(m.s_dev, &ie.f_handle)
                .map_err(|w| state(format!("inode mark {:#x}: {w}", ie.i_ino)))?;
            (format!("/proc/self/fd/{}", h.as_raw_fd()), 0, Some(h))
        } else if let Some(me) = &m.me {
            let p = me
                .path
                .clone()
                .or_else(|| mount_path(me.mnt_id))
                .ok_or_else(|| state(format!("no mount with id {}", me.mnt_id)))?;
            (p, FAN_MARK_MOUNT, None)
        } else {
            return Err(state("a mark of neither inode nor mount".into()));
        };
        let cpath = std::ffi::CString::new(path.clone())
            .map_err(|_| state(format!("path {path:?} has a NUL")))?;
        for (mask, extra) in [(m.mask, 0), (m.ignored_mask, FAN_MARK_IGNORED_MASK)] {
            if mask == 0 {
                continue;
            }
            let how = FAN_MARK_ADD | kind | extra | m.mflags;
            // SAFETY: fanotify_mark on our group with a valid C path.
            let r = unsafe {
                libc::fanotify_mark(
                    ffd.as_raw_fd(),
                    how,
                    u64::from(mask),
                    libc::AT_FDCWD,
                    cpath.as_ptr(),
                )
            };
            if r != 0 {
                return Err(state(format!(
                    "mark on {path} (mask {mask:#x}, flags {how:#x}): {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
    }
    Ok(ffd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fdinfo_marks() {
        let info = "pos:\t0\nflags:\t04002\n\
            fanotify flags:2 event-flags:8000\n\
            fanotify mnt_id:1b mflags:0 mask:20 ignored_mask:0\n\
            fanotify ino:98c2ee sdev:fe00000 mflags:40 mask:2 ignored_mask:20 fhandle-bytes:8 fhandle-type:1 f_handle:eec2980043650838\n";
        let (fa, ev, m) = super::parse(info).unwrap();
        assert_eq!((fa, ev, m.len()), (2, 0x8000, 2));
        assert_eq!(m[0].me.as_ref().unwrap().mnt_id, 0x1b);
        assert_eq!((m[1].mflags, m[1].mask, m[1].ignored_mask), (0x40, 2, 0x20));
        assert_eq!(m[1].ie.as_ref().unwrap().i_ino, 0x98c2ee);
        assert!(super::parse("fanotify sdev:fe00000 mflags:0 mask:2 ignored_mask:0\n").is_err());
    }
}

//! inotify instances (INOTIFY entries with their watches).
//!
//! Kernel mechanism: fdinfo of an inotify fd lists each watch as `inotify wd:HEX ino:HEX
//! sdev:HEX mask:HEX ignored_mask:HEX fhandle-bytes:HEX fhandle-type:HEX f_handle:HEX`: the
//! watched inode is named by a file handle (name_to_handle_at's), valid without any path. A
//! restore finds the mount of `sdev` in /proc/self/mountinfo, opens the inode with
//! `open_by_handle_at`, and adds the watch through `/proc/self/fd/N` with its mask. Watch
//! descriptors are handed out in increasing order, so watches are added in wd order and a gap
//! is skipped by adding and removing a watch until the kernel's counter reaches the wanted wd.
//! Events queued but unread at dump time are not carried (as in CRIU).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, RestoreError};

/// `key:HEX` of one fdinfo line.
pub(crate) fn kv<'a>(l: &'a str, k: &str) -> Option<&'a str> {
    l.split_whitespace()
        .find_map(|w| w.strip_prefix(k)?.strip_prefix(':'))
}

/// `key:HEX` of one fdinfo line, as a number.
pub(crate) fn hex(l: &str, k: &str) -> Option<u64> {
    u64::from_str_radix(kv(l, k)?, 16).ok()
}

/// The file handle of an fsnotify fdinfo line (`fhandle-bytes`, `fhandle-type`, `f_handle`),
/// as CRIU's fh_entry: the bytes as little-endian u64 words, at least 16 of them.
pub(crate) fn handle_of(l: &str) -> Option<pb::FhEntry> {
    let bytes = hex(l, "fhandle-bytes")? as usize;
    let raw = kv(l, "f_handle")?;
    let mut h: Vec<u8> = (0..raw.len() / 2)
        .map(|i| u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    h.truncate(bytes);
    h.resize(h.len().next_multiple_of(8).max(16 * 8), 0);
    Some(pb::FhEntry {
        bytes: bytes as u32,
        r#type: hex(l, "fhandle-type")? as u32,
        handle: h
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        path: None,
        mnt_id: None,
    })
}

/// The watches listed in an inotify fdinfo text.
fn watches(info: &str) -> Option<Vec<pb::InotifyWdEntry>> {
    let mut out = Vec::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("inotify ")) {
        out.push(pb::InotifyWdEntry {
            id: 0,
            i_ino: hex(l, "ino")?,
            mask: hex(l, "mask")? as u32,
            ignored_mask: hex(l, "ignored_mask")? as u32,
            s_dev: hex(l, "sdev")? as u32,
            wd: hex(l, "wd")? as u32,
            f_handle: handle_of(l)?,
        });
    }
    out.sort_by_key(|w| w.wd);
    Some(out)
}

// ---- dump ----

/// The INOTIFY entry of an fd, with its watches.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let mut wd =
        watches(&fd.info).ok_or_else(|| fd.state("inotify", "cannot parse its watches"))?;
    let id = t.next_id();
    for w in &mut wd {
        w.id = id;
    }
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Inotify as i32,
        id,
        ify: Some(pb::InotifyFileEntry {
            id,
            flags: fd.flags,
            fown: fd.fown,
            wd,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// The mount point of the filesystem whose kernel dev is `sdev` (20-bit minor encoding).
fn mount_of(sdev: u32) -> Option<String> {
    let want = format!("{}:{}", sdev >> 20, sdev & 0xfffff);
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&want.as_str())).then(|| f.get(4).map(|s| s.to_string()))?
    })
}

/// Opens an inode by its handle (O_PATH), through a mount of its filesystem `s_dev`.
pub(crate) fn open_handle(s_dev: u32, fh: &pb::FhEntry) -> Result<OwnedFd, String> {
    let mnt = mount_of(s_dev).ok_or_else(|| format!("no mount of device {s_dev:#x}"))?;
    let m = std::fs::File::open(&mnt).map_err(|e| format!("open {mnt}: {e}"))?;
    let bytes: Vec<u8> = fh.handle.iter().flat_map(|v| v.to_le_bytes()).collect();
    let n = fh.bytes as usize;
    if n > bytes.len() || n > 128 {
        return Err(format!("file handle of {n} bytes"));
    }
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let fh_type = fh.r#type;
    let mut fh = [0u8; 8 + 128];
    fh[0..4].copy_from_slice(&(n as u32).to_ne_bytes());
    fh[4..8].copy_from_slice(&(fh_type as i32).to_ne_bytes());
    fh[8..8 + n].copy_from_slice(&bytes[..n]);
    // SAFETY: open_by_handle_at reads a struct file_handle of handle_bytes bytes from `fh`,
    // which holds 8 + 128 bytes; returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            fh.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    } as i32;
    if r < 0 {
        return Err(format!(
            "open_by_handle_at on {mnt}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: r is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A new inotify instance with every watch at its old wd.
pub fn open(pid: u32, fd: u32, e: &pb::InotifyFileEntry) -> Result<OwnedFd, RestoreError> {
    let state = |what: String| RestoreError::State {
        pid,
        fd,
        kind: "inotify",
        what,
    };
    let flags = libc::IN_CLOEXEC | (e.flags as i32 & libc::O_NONBLOCK);
    // SAFETY: inotify_init1 with flags; returns a new fd.
    let ifd = owned(
        unsafe { libc::inotify_init1(flags) },
        "inotify_init1",
        &format!("task {pid} fd {fd}"),
    )?;
    let mut wds: Vec<&pb::InotifyWdEntry> = e.wd.iter().collect();
    wds.sort_by_key(|w| w.wd);
    for w in wds {
        let target =
            open_handle(w.s_dev, &w.f_handle).map_err(|m| state(format!("watch {}: {m}", w.wd)))?;
        let p = std::ffi::CString::new(format!("/proc/self/fd/{}", target.as_raw_fd()))
            .expect("no NUL in a /proc path");
        for _ in 0..=w.wd {
            // SAFETY: inotify_add_watch on our instance with a valid C path.
            let got = unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), p.as_ptr(), w.mask) };
            if got < 0 {
                return Err(state(format!(
                    "adding watch {} (mask {:#x}): {}",
                    w.wd,
                    w.mask,
                    std::io::Error::last_os_error()
                )));
            }
            if got as u32 == w.wd {
                break;
            }
            if got as u32 > w.wd {
                return Err(state(format!("watch {} came back as {got}", w.wd)));
            }
            // Below the wanted wd: drop it, the next add takes the next number.
            // SAFETY: removing a watch we just added.
            unsafe { libc::inotify_rm_watch(ifd.as_raw_fd(), got) };
        }
    }
    Ok(ifd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fdinfo_watches() {
        let info = "pos:\t0\nflags:\t00\n\
            inotify wd:3 ino:99a1ea sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:eaa1990049d1b4c2\n\
            inotify wd:1 ino:2 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000\n";
        let w = super::watches(info).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].wd, w[0].mask, w[0].i_ino), (1, 0x100, 2));
        assert_eq!(
            (w[1].wd, w[1].s_dev, w[1].f_handle.bytes),
            (3, 0xfe00000, 8)
        );
        assert_eq!(w[1].f_handle.handle[0], 0xc2b4_d149_0099_a1ea);
        assert_eq!(w[1].f_handle.handle.len(), 16);
    }
}

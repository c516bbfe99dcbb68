//! Terminals (TTY entries + tty-info.img): the caller's terminal with `--shell-job`.
//!
//! Kernel mechanism: a tty fd names a character device (majors 4/5 for vt and console, 136-143
//! for pty slaves); termios (tcgetattr), window size (TIOCGWINSZ), session and foreground group
//! (TIOCGSID, TIOCGPGRP) come from ioctls on a fresh O_NOCTTY open of the device. CRIU links each
//! TTY entry to a REG entry naming the device path, and one tty-info entry per device. With
//! `--shell-job` the restore hands the tree ferry's own stdin terminal; pty pairs inside the tree
//! are [`super::pty`]'s.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{sys, RestoreError};
use crate::mem::dump::MappedFile;

// ---- dump ----

/// The TTY entry of a terminal fd (and its REG and tty-info entries).
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let info = tty_info(t, fd)?;
    Ok(entry(t, fd, info))
}

/// The TTY entry of `fd` with tty-info `info`; the tty's path becomes a REG entry of its own,
/// as CRIU links them.
pub(crate) fn entry(t: &mut FileTable, fd: &Fd, info: u32) -> pb::FileEntry {
    let regf = MappedFile {
        path: fd.target.clone(),
        dev: fd.md.dev(),
        ino: fd.md.ino(),
        mode: fd.md.mode(),
        size: 0,
    };
    let regf_id = t.reg_object(&regf, fd.flags, false);
    let id = t.next_id();
    pb::FileEntry {
        r#type: pb::FdTypes::Tty as i32,
        id,
        tty: Some(pb::TtyFileEntry {
            id,
            tty_info_id: info,
            flags: fd.flags,
            fown: fd.fown,
            regf_id: Some(regf_id),
        }),
        ..Default::default()
    }
}

/// The tty-info.img entry of the terminal of `fd` (one per device); returns its id.
fn tty_info(t: &mut FileTable, fd: &Fd) -> Result<u32, FilesError> {
    info_of(t, fd, &fd.link, fd.md.rdev())
}

/// The tty-info.img entry of terminal device `rdev`, read through a fresh O_NOCTTY open of
/// `path` (one entry per device); returns its id.
pub(crate) fn info_of(
    t: &mut FileTable,
    fd: &Fd,
    path: &str,
    rdev: u64,
) -> Result<u32, FilesError> {
    if let Some(i) = t.ttys.iter().find(|i| u64::from(i.rdev) == rdev) {
        return Ok(i.id);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(fd.proc_err(path))?;
    let raw = f.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is an open tty fd; `tio` is a valid out-pointer.
    if unsafe { libc::tcgetattr(raw, &mut tio) } != 0 {
        return Err(fd.proc_err(path)(std::io::Error::last_os_error()));
    }
    // SAFETY: as above, for the window size.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize.
    unsafe { libc::ioctl(raw, libc::TIOCGWINSZ, &mut ws) };
    let (mut sid, mut pgrp, mut excl) = (0i32, 0i32, 0i32);
    // SAFETY: these ioctls fill one int each; a tty that is nobody's controlling terminal
    // answers ENOTTY and the zero stays.
    unsafe {
        libc::ioctl(raw, libc::TIOCGSID, &mut sid);
        libc::ioctl(raw, libc::TIOCGPGRP, &mut pgrp);
        libc::ioctl(raw, libc::TIOCGEXCL, &mut excl);
    }
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let (ty, pty) = match major {
        136..=143 => (pb::TtyType::Pty, Some((major - 136) * 256 + minor)),
        5 if minor == 1 => (pb::TtyType::Console, None),
        5 => (pb::TtyType::Ctty, None),
        4 if minor < 64 => (pb::TtyType::Vt, None),
        _ => (pb::TtyType::Serial, None),
    };
    // SAFETY: reading the speeds of a termios we own.
    let (ispeed, ospeed) = unsafe { (libc::cfgetispeed(&tio), libc::cfgetospeed(&tio)) };
    let id = t.ttys.len() as u32 + 1;
    t.ttys.push(pb::TtyInfoEntry {
        id,
        r#type: ty as i32,
        locked: false,
        exclusive: excl != 0,
        packet_mode: false,
        sid: sid.max(0) as u32,
        pgrp: pgrp.max(0) as u32,
        rdev: rdev as u32,
        termios: Some(pb::TermiosEntry {
            c_iflag: tio.c_iflag,
            c_oflag: tio.c_oflag,
            c_cflag: tio.c_cflag,
            c_lflag: tio.c_lflag,
            c_line: tio.c_line as u32,
            c_ispeed: ispeed,
            c_ospeed: ospeed,
            c_cc: tio.c_cc.iter().take(19).map(|c| *c as u32).collect(),
        }),
        termios_locked: None,
        winsize: Some(pb::WinsizeEntry {
            ws_row: ws.ws_row.into(),
            ws_col: ws.ws_col.into(),
            ws_xpixel: ws.ws_xpixel.into(),
            ws_ypixel: ws.ws_ypixel.into(),
        }),
        pty: pty.map(|index| pb::TtyPtyEntry { index }),
        // The device's filesystem (devpts instance): with rdev, CRIU's key for inheriting it.
        dev: Some(fd.md.dev() as u32),
        uid: Some(fd.md.uid()),
        gid: Some(fd.md.gid()),
    });
    Ok(id)
}

// ---- restore ----

/// The key a caller names this terminal by to inherit it: CRIU's `tty[RDEV:DEV]`, in hex.
pub fn inherit_key(info: &pb::TtyInfoEntry) -> String {
    format!("tty[{:x}:{:x}]", info.rdev, info.dev.unwrap_or(0))
}

/// The caller's terminal (ferry's stdin) for a TTY entry, with `--shell-job` only.
pub fn open(pid: u32, fd: u32, shell_job: bool) -> Result<OwnedFd, RestoreError> {
    let unsupported = |what: &str| RestoreError::Unsupported {
        pid,
        fd,
        what: what.into(),
    };
    if !shell_job {
        return Err(unsupported("a terminal without --shell-job"));
    }
    // SAFETY: isatty on fd 0 of this process.
    if unsafe { libc::isatty(0) } != 1 {
        return Err(unsupported(
            "a terminal with --shell-job, but ferry's stdin is not a terminal",
        ));
    }
    // SAFETY: dup of our own stdin; the result is a new fd we own.
    let n = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        return Err(sys("dup", "stdin"));
    }
    // SAFETY: n is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

//! Pseudo-terminal pairs inside the tree (TTY entries of type PTY).
//!
//! Kernel mechanism: opening /dev/ptmx makes a new pair and gives the master; the slave is
//! /dev/pts/N, N read with TIOCGPTN. Termios and window size belong to the pair and are read
//! through a fresh O_NOCTTY open of the slave; the session (TIOCGSID) and foreground group
//! (TIOCGPGRP) say whose controlling terminal it is. ptmx hands out the lowest free index, so a
//! restore reaches index N by opening /dev/ptmx until TIOCGPTN says N (holding the lower ones
//! meanwhile); it unlocks the pair, sets termios and window size, opens the slave descriptions
//! with O_NOCTTY, and a session leader whose terminal it was takes it again with TIOCSCTTY (and
//! its foreground group with TIOCSPGRP) once its fds are in place. Bytes queued in either
//! direction are not carried: a pair holding any is a dump error, as is a slave whose master is
//! outside the tree (use `--shell-job` for the caller's terminal), and a master with two
//! descriptions (a /proc reopen of ptmx would make a new pair).

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::RestoreError;
use crate::mem::dump::MappedFile;

/// A pty index from a slave's rdev (majors 136-143).
fn index_of(rdev: u64) -> u32 {
    (libc::major(rdev) - 136) * 256 + libc::minor(rdev)
}

fn slave_rdev(index: u32) -> u64 {
    libc::makedev(136 + index / 256, index % 256)
}

/// Bytes waiting to be read on `fd`.
fn queued(fd: i32) -> i32 {
    let mut n = 0i32;
    // SAFETY: FIONREAD fills one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

/// Pairs seen by the dump: masters by index, slaves with where they were seen.
#[derive(Debug, Default)]
pub struct PtyDump {
    masters: HashSet<u32>,
    slaves: Vec<(i32, i32, u32, String)>,
}

// ---- dump ----

fn entry(t: &mut FileTable, fd: &Fd, info: u32) -> pb::FileEntry {
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

/// The TTY entry of a pty master (its index read from the description itself).
pub fn dump_master(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let m = super::borrow(fd.pid, fd.fd).map_err(fd.proc_err(&fd.link))?;
    let mut index = 0u32;
    // SAFETY: TIOCGPTN fills one unsigned int; `m` is the task's master description.
    if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut index) } != 0 {
        return Err(fd.proc_err(&fd.link)(std::io::Error::last_os_error()));
    }
    let n = queued(m.as_raw_fd());
    if n > 0 {
        return Err(fd.state("pty master", format!("pty {index} has {n} unread bytes")));
    }
    if !t.ptys.masters.insert(index) {
        return Err(fd.state(
            "pty master",
            format!("pty {index} has two master descriptions"),
        ));
    }
    let info = pair_info(t, fd, index)?;
    // Session and foreground group: asked on the master, as the kernel answers TIOCGSID and
    // TIOCGPGRP on a slave only to the session it controls.
    let (mut sid, mut pgrp) = (0i32, 0i32);
    // SAFETY: each ioctl fills one int; a pair that is nobody's terminal answers ENOTTY.
    unsafe {
        libc::ioctl(m.as_raw_fd(), libc::TIOCGSID, &mut sid);
        libc::ioctl(m.as_raw_fd(), libc::TIOCGPGRP, &mut pgrp);
    }
    if let Some(i) = t.ttys.iter_mut().find(|i| i.id == info) {
        i.sid = sid.max(0) as u32;
        i.pgrp = pgrp.max(0) as u32;
    }
    Ok(entry(t, fd, info))
}

/// The TTY entry of a pty slave of a pair inside the tree.
pub fn dump_slave(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let index = index_of(fd.md.rdev());
    t.ptys
        .slaves
        .push((fd.pid, fd.fd, index, fd.target.clone()));
    let info = pair_info(t, fd, index)?;
    Ok(entry(t, fd, info))
}

fn pair_info(t: &mut FileTable, fd: &Fd, index: u32) -> Result<u32, FilesError> {
    let path = format!("/dev/pts/{index}");
    if let Ok(s) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&path)
    {
        let n = queued(s.as_raw_fd());
        if n > 0 {
            return Err(fd.state("pty", format!("pty {index} has {n} unread bytes")));
        }
    }
    super::tty::info_of(t, fd, &path, slave_rdev(index))
}

/// Every slave's master must be in the tree; a slave whose master is outside is a terminal from
/// outside (the caller's, which `--shell-job` carries).
pub fn check(d: &PtyDump) -> Result<(), FilesError> {
    for (pid, fd, index, target) in &d.slaves {
        if !d.masters.contains(index) {
            return Err(FilesError::Unsupported {
                pid: *pid,
                fd: *fd,
                kind: "tty (use --shell-job for the caller's terminal; the pty master is \
                       outside the tree)",
                target: target.clone(),
            });
        }
    }
    Ok(())
}

/// The indexes of the pty pairs whose master the images hold (a slave of any other pty is a
/// terminal from outside the tree: the caller's, with `--shell-job`).
pub fn masters_in(
    files: &BTreeMap<u32, pb::FileEntry>,
    infos: &BTreeMap<u32, pb::TtyInfoEntry>,
) -> HashSet<u32> {
    files
        .values()
        .filter_map(|f| {
            let t = f.tty.as_ref()?;
            let regf = files.get(&t.regf_id?)?.reg.as_ref()?;
            if !regf.name.ends_with("ptmx") {
                return None;
            }
            Some(infos.get(&t.tty_info_id)?.pty.as_ref()?.index)
        })
        .collect()
}

// ---- restore ----

/// The pty pairs of a restore, by index.
#[derive(Debug, Default)]
pub struct Ptys {
    masters: BTreeMap<u32, (OwnedFd, bool)>,
    locked: Vec<u32>,
}

impl Ptys {
    fn pair(&mut self, info: &pb::TtyInfoEntry) -> Result<u32, RestoreError> {
        let index = info.pty.as_ref().map(|p| p.index).unwrap_or(0);
        if self.masters.contains_key(&index) {
            return Ok(index);
        }
        let err = |what: String| RestoreError::State {
            pid: 0,
            fd: 0,
            kind: "pty",
            what: format!("pty {index}: {what}"),
        };
        // The index of a pair closed a moment ago (the dumped tree's) is freed by a kernel
        // work item after the last close: wait for it, within a bound.
        let start = std::time::Instant::now();
        let master = loop {
            match take_index(index).map_err(|e| err(e.to_string()))? {
                Some(m) => break m,
                None if start.elapsed() < std::time::Duration::from_secs(2) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                None => return Err(err("the index is taken".into())),
            }
        };
        let raw = master.as_raw_fd();
        let unlock = 0i32;
        // SAFETY: TIOCSPTLCK reads one int; TIOCSWINSZ reads a winsize.
        unsafe { libc::ioctl(raw, libc::TIOCSPTLCK, &unlock) };
        if let Some(w) = &info.winsize {
            let ws = libc::winsize {
                ws_row: w.ws_row as u16,
                ws_col: w.ws_col as u16,
                ws_xpixel: w.ws_xpixel as u16,
                ws_ypixel: w.ws_ypixel as u16,
            };
            // SAFETY: TIOCSWINSZ reads a valid winsize.
            unsafe { libc::ioctl(raw, libc::TIOCSWINSZ, &ws) };
        }
        if let Some(tio) = &info.termios {
            let s = self_slave(index).map_err(|e| err(format!("open slave: {e}")))?;
            // SAFETY: termios is plain data; tcgetattr fills it before we change fields.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: tcgetattr/tcsetattr on our slave fd with a valid termios.
            unsafe { libc::tcgetattr(s.as_raw_fd(), &mut t) };
            t.c_iflag = tio.c_iflag;
            t.c_oflag = tio.c_oflag;
            t.c_cflag = tio.c_cflag;
            t.c_lflag = tio.c_lflag;
            t.c_line = tio.c_line as u8;
            for (d, s) in t.c_cc.iter_mut().zip(&tio.c_cc) {
                *d = *s as u8;
            }
            // SAFETY: as above.
            if unsafe { libc::tcsetattr(s.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
                return Err(err(format!(
                    "tcsetattr: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        if info.locked {
            self.locked.push(index);
        }
        self.masters.insert(index, (master.into(), false));
        Ok(index)
    }

    /// The description of a pty TTY entry: the master (once) or a new slave open.
    pub fn open(
        &mut self,
        pid: u32,
        fd: u32,
        e: &pb::TtyFileEntry,
        info: &pb::TtyInfoEntry,
        master: bool,
    ) -> Result<OwnedFd, RestoreError> {
        let index = self.pair(info)?;
        let flags = e.flags as i32;
        let fdr = if master {
            let (m, used) = self.masters.get_mut(&index).expect("made above");
            if std::mem::replace(used, true) {
                return Err(RestoreError::Unsupported {
                    pid,
                    fd,
                    what: format!("a second description of the master of pty {index}"),
                });
            }
            m.try_clone().map_err(|e| RestoreError::Sys {
                op: "dup",
                path: "/dev/ptmx".into(),
                source: e,
            })?
        } else {
            let acc = flags & libc::O_ACCMODE;
            std::fs::OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(format!("/dev/pts/{index}"))
                .map_err(|e| RestoreError::Sys {
                    op: "open",
                    path: format!("/dev/pts/{index}"),
                    source: e,
                })?
                .into()
        };
        // SAFETY: F_SETFL on an fd we own: the entry's O_NONBLOCK.
        unsafe { libc::fcntl(fdr.as_raw_fd(), libc::F_SETFL, flags & libc::O_NONBLOCK) };
        Ok(fdr)
    }

    /// Locks again the pairs that were locked (after every slave is open).
    pub fn finish(&self) {
        for i in &self.locked {
            if let Some((m, _)) = self.masters.get(i) {
                let one = 1i32;
                // SAFETY: TIOCSPTLCK reads one int.
                unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &one) };
            }
        }
    }
}

/// Opens /dev/ptmx until it hands out `index` (holding the lower ones meanwhile); `None` when
/// the index is in use.
fn take_index(index: u32) -> std::io::Result<Option<std::fs::File>> {
    let mut lower = Vec::new();
    loop {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/ptmx")?;
        let mut got = 0u32;
        // SAFETY: TIOCGPTN fills one unsigned int.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCGPTN, &mut got) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if got == index {
            return Ok(Some(f));
        }
        if got > index || lower.len() > 4096 {
            return Ok(None);
        }
        lower.push(f); // held so ptmx hands out the next one
    }
}

fn self_slave(index: u32) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/dev/pts/{index}"))?;
    Ok(f.into())
}

/// Makes `fd` the controlling terminal of the calling session leader and sets its foreground
/// group (runs in the task after its fds are in place).
pub fn take_ctty(pid: u32, fd: u32, sid: u32, pgrp: u32) -> Result<(), RestoreError> {
    // SAFETY: getsid(0) has no memory arguments.
    if sid != pid || unsafe { libc::getsid(0) } as u32 != pid {
        return Ok(());
    }
    // SAFETY: TIOCSCTTY with an integer argument on an fd of this task.
    if unsafe { libc::ioctl(fd as i32, libc::TIOCSCTTY, 0) } != 0 {
        return Err(RestoreError::State {
            pid,
            fd,
            kind: "pty",
            what: format!(
                "taking it as controlling terminal: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    if pgrp != 0 {
        let g = pgrp as libc::pid_t;
        // SAFETY: TIOCSPGRP reads one pid_t. A foreground group whose leader is not forked yet
        // stays the session's own group (ESRCH/EPERM), the kernel's default.
        unsafe { libc::ioctl(fd as i32, libc::TIOCSPGRP, &g) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn index_round_trip() {
        for i in [0u32, 5, 255, 256, 1000] {
            assert_eq!(super::index_of(super::slave_rdev(i)), i);
        }
    }
}

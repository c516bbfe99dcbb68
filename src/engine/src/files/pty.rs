//! Pseudo-terminal pairs inside the tree (TTY entries of type PTY).
//!
//! Kernel mechanism: opening /dev/ptmx makes a new pair and gives the master; the slave is
//! /dev/pts/N, N read with TIOCGPTN. Termios and window size belong to the pair and are read
//! through a fresh O_NOCTTY open of the slave; the session (TIOCGSID) and foreground group
//! (TIOCGPGRP) say whose controlling terminal it is. ptmx hands out the lowest free index, so a
//! restore reaches index N by opening /dev/ptmx until TIOCGPTN says N (holding the lower ones
//! meanwhile); it unlocks the pair, sets termios and window size, opens the slave descriptions
//! with O_NOCTTY, and a session leader whose terminal it was takes it again with TIOCSCTTY (and
//! its foreground group with TIOCSPGRP) once its fds are in place. A slave whose master is
//! outside the tree (use `--shell-job` for the caller's terminal) and a master with two
//! descriptions (a /proc reopen of ptmx would make a new pair) are dump errors. Packet mode
//! (TIOCPKT, the master's) and exclusive mode (TIOCEXCL, the slave's) are carried in tty-info.
//!
//! Bytes queued in the pair go to tty-data.img as CRIU writes it (`tty_id` = the TTY entry of
//! the end that will read them), once every fd of the tree is known: the master's queue holds
//! what the slave wrote, already through output processing, and the master's line discipline
//! is always raw, so the bytes read from it are exactly what the master will read; they are
//! put back by writing them to the slave with OPOST off for the moment. The slave's queue holds
//! input already through input processing (and echoed): in non-canonical mode it is a plain
//! byte queue, read from a fresh slave open and put back through the master with input
//! processing, echo and signals off for the moment, so nothing is translated or echoed twice.
//! In canonical mode the queue is a line editor's state (line ends only the kernel marks,
//! partial lines TIOCINQ does not count), which no interface reads back or rebuilds: complete
//! lines queued there are a dump error; a partial line is not visible to any interface and is
//! lost, as CRIU loses all tty data. A master in packet mode with data queued is refused too.
//! The dump reads destructively and writes back at once, so the tree keeps its bytes whatever
//! follows; the restore requeues them the same way before the tasks run.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use ferry_images::{pb, ImageDir};

use super::dump::{Fd, FileTable, FilesError};
use super::restore::RestoreError;

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

/// Pairs seen by the dump: masters by index (holder pid, fd, TTY entry id), slaves with where
/// they were seen and their TTY entry id.
#[derive(Debug, Default)]
pub struct PtyDump {
    masters: BTreeMap<u32, (i32, i32, u32)>,
    slaves: Vec<Slave>,
}

#[derive(Debug)]
struct Slave {
    pid: i32,
    fd: i32,
    index: u32,
    target: String,
    id: u32,
}

// ---- dump ----

/// The TTY entry of a pty master (its index read from the description itself).
pub fn dump_master(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let m = super::borrow(fd.pid, fd.fd).map_err(fd.proc_err(&fd.link))?;
    let mut index = 0u32;
    // SAFETY: TIOCGPTN fills one unsigned int; `m` is the task's master description.
    if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut index) } != 0 {
        return Err(fd.proc_err(&fd.link)(std::io::Error::last_os_error()));
    }
    if t.ptys.masters.contains_key(&index) {
        return Err(fd.state(
            "pty master",
            format!("pty {index} has two master descriptions"),
        ));
    }
    let info = pair_info(t, fd, index)?;
    // Session and foreground group: asked on the master, as the kernel answers TIOCGSID and
    // TIOCGPGRP on a slave only to the session it controls.
    // Packet mode belongs to the master.
    let (mut sid, mut pgrp, mut pkt) = (0i32, 0i32, 0i32);
    // SAFETY: each ioctl fills one int; a pair that is nobody's terminal answers ENOTTY.
    unsafe {
        libc::ioctl(m.as_raw_fd(), libc::TIOCGSID, &mut sid);
        libc::ioctl(m.as_raw_fd(), libc::TIOCGPGRP, &mut pgrp);
        libc::ioctl(m.as_raw_fd(), libc::TIOCGPKT, &mut pkt);
    }
    if let Some(i) = t.ttys.iter_mut().find(|i| i.id == info) {
        i.sid = sid.max(0) as u32;
        i.pgrp = pgrp.max(0) as u32;
        i.packet_mode = pkt != 0;
    }
    let e = super::tty::entry(t, fd, info);
    t.ptys.masters.insert(index, (fd.pid, fd.fd, e.id));
    Ok(e)
}

/// The TTY entry of a pty slave of a pair inside the tree.
pub fn dump_slave(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let index = index_of(fd.md.rdev());
    let info = pair_info(t, fd, index)?;
    let e = super::tty::entry(t, fd, info);
    t.ptys.slaves.push(Slave {
        pid: fd.pid,
        fd: fd.fd,
        index,
        target: fd.target.clone(),
        id: e.id,
    });
    Ok(e)
}

fn pair_info(t: &mut FileTable, fd: &Fd, index: u32) -> Result<u32, FilesError> {
    let path = format!("/dev/pts/{index}");
    super::tty::info_of(t, fd, &path, slave_rdev(index))
}

/// Every slave's master must be in the tree; a slave whose master is outside is a terminal from
/// outside (the caller's, which `--shell-job` carries).
pub fn check(d: &PtyDump) -> Result<(), FilesError> {
    for s in &d.slaves {
        if !d.masters.contains_key(&s.index) {
            return Err(FilesError::Unsupported {
                pid: s.pid,
                fd: s.fd,
                kind: "tty (use --shell-job for the caller's terminal; the pty master is \
                       outside the tree)",
                target: s.target.clone(),
            });
        }
    }
    Ok(())
}

/// Reads the bytes queued in every pair (writing them back at once) and writes tty-data.img.
/// Runs once every fd of the frozen tree is known (the masters are borrowed from their tasks).
pub fn dump_queues(d: &PtyDump, dir: &ImageDir) -> Result<(), FilesError> {
    let mut out = Vec::new();
    for (&index, &(pid, fd, id)) in &d.masters {
        let err = |what: String| FilesError::State {
            pid,
            fd,
            kind: "pty",
            what: format!("pty {index}: {what}"),
        };
        let m = super::borrow(pid, fd).map_err(|e| err(format!("borrowing the master: {e}")))?;
        let s = self_slave(index).map_err(|e| err(format!("opening the slave: {e}")))?;
        let (to_master, to_slave) = (queued(m.as_raw_fd()), queued(s.as_raw_fd()));
        if to_master > 0 {
            let mut pkt = 0i32;
            // SAFETY: TIOCGPKT fills one int.
            unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPKT, &mut pkt) };
            if pkt != 0 {
                return Err(err(format!(
                    "{to_master} bytes queued for a master in packet mode"
                )));
            }
            let bytes = take(&m, to_master as usize).map_err(|e| err(format!("reading: {e}")))?;
            push_to_master(&m, &s, &bytes).map_err(|e| err(format!("writing back: {e}")))?;
            out.push(pb::TtyDataEntry {
                tty_id: id,
                data: bytes,
            });
        }
        if to_slave > 0 {
            let tio = termios_of(&s).map_err(|e| err(format!("tcgetattr: {e}")))?;
            if tio.c_lflag & libc::ICANON != 0 {
                return Err(err(format!(
                    "{to_slave} bytes of input lines queued for the slave in canonical mode \
                     (a line editor's state, which cannot be rebuilt)"
                )));
            }
            let Some(slave) = d.slaves.iter().find(|x| x.index == index) else {
                return Err(err(format!(
                    "{to_slave} bytes queued for a slave no task of the tree holds"
                )));
            };
            let bytes = take(&s, to_slave as usize).map_err(|e| err(format!("reading: {e}")))?;
            push_to_slave(&m, &s, &bytes).map_err(|e| err(format!("writing back: {e}")))?;
            out.push(pb::TtyDataEntry {
                tty_id: slave.id,
                data: bytes,
            });
        }
    }
    if !out.is_empty() {
        dir.write_entries("tty-data.img", &out)
            .map_err(|source| FilesError::Write {
                image: "tty-data.img".into(),
                source,
            })?;
    }
    Ok(())
}

/// Reads exactly `n` bytes known to be queued on `fd`.
fn take(fd: &OwnedFd, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reading into the unfilled tail of a buffer we own.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf[got..].as_mut_ptr().cast(), n - got) };
        if r <= 0 {
            return Err(if r == 0 {
                std::io::Error::other(format!("end of data after {got} of {n} bytes"))
            } else {
                std::io::Error::last_os_error()
            });
        }
        got += r as usize;
    }
    Ok(buf)
}

fn termios_of(fd: &OwnedFd) -> std::io::Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open tty; `t` is a valid out-pointer.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}

fn set_termios(fd: &OwnedFd, t: &libc::termios) -> std::io::Result<()> {
    // SAFETY: tcsetattr on an open tty with a valid termios.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: writing from a slice we own.
        let r = unsafe {
            libc::write(
                fd.as_raw_fd(),
                bytes[off..].as_ptr().cast(),
                bytes.len() - off,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        off += r as usize;
    }
    Ok(())
}

/// Waits (bounded) until `fd` has `n` bytes to read: a pty hands written bytes to the other
/// end's line discipline from a kernel work item.
fn wait_queued(fd: &OwnedFd, n: usize) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let q = queued(fd.as_raw_fd()).max(0) as usize;
        if q >= n {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(2) {
            return Err(std::io::Error::other(format!(
                "only {q} of {n} bytes arrived"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Queues `bytes` for the master to read, as they are (the slave's output processing off for
/// the moment).
fn push_to_master(m: &OwnedFd, s: &OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    let before = queued(m.as_raw_fd()).max(0) as usize;
    let orig = termios_of(s)?;
    let mut raw = orig;
    raw.c_oflag &= !libc::OPOST;
    set_termios(s, &raw)?;
    let r = write_all(s, bytes).and_then(|()| wait_queued(m, before + bytes.len()));
    set_termios(s, &orig)?;
    r
}

/// Queues `bytes` for a non-canonical slave to read, as they are (input processing, echo and
/// signal characters off for the moment).
fn push_to_slave(m: &OwnedFd, s: &OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    let before = queued(s.as_raw_fd()).max(0) as usize;
    let orig = termios_of(s)?;
    let mut raw = orig;
    raw.c_iflag = 0;
    raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
    set_termios(s, &raw)?;
    let r = write_all(m, bytes).and_then(|()| wait_queued(s, before + bytes.len()));
    set_termios(s, &orig)?;
    r
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
    /// Pairs whose slave was exclusive (TIOCEXCL), set once every slave is open.
    exclusive: Vec<u32>,
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
        if info.packet_mode {
            let one = 1i32;
            // SAFETY: TIOCPKT reads one int; `raw` is our master.
            if unsafe { libc::ioctl(raw, libc::TIOCPKT, &one) } != 0 {
                return Err(err(format!(
                    "packet mode: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        if info.locked {
            self.locked.push(index);
        }
        if info.exclusive {
            self.exclusive.push(index);
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

    /// Requeues the bytes of tty-data.img, then locks again the pairs that were locked (after
    /// every slave is open).
    pub fn finish(
        &self,
        dir: &ImageDir,
        files: &BTreeMap<u32, pb::FileEntry>,
        infos: &BTreeMap<u32, pb::TtyInfoEntry>,
    ) -> Result<(), RestoreError> {
        if dir.has("tty-data.img") {
            let data: Vec<pb::TtyDataEntry> = dir
                .read_entries("tty-data.img")
                .map_err(super::restore::img("tty-data.img"))?;
            for d in data {
                self.requeue(files, infos, &d)?;
            }
        }
        for i in &self.locked {
            if let Some((m, _)) = self.masters.get(i) {
                let one = 1i32;
                // SAFETY: TIOCSPTLCK reads one int.
                unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &one) };
            }
        }
        for &i in &self.exclusive {
            let s = self_slave(i).map_err(|e| RestoreError::State {
                pid: 0,
                fd: 0,
                kind: "pty",
                what: format!("pty {i}: opening the slave to make it exclusive: {e}"),
            })?;
            // SAFETY: TIOCEXCL takes no argument; it marks the slave tty, not our open.
            unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCEXCL) };
        }
        Ok(())
    }

    fn requeue(
        &self,
        files: &BTreeMap<u32, pb::FileEntry>,
        infos: &BTreeMap<u32, pb::TtyInfoEntry>,
        d: &pb::TtyDataEntry,
    ) -> Result<(), RestoreError> {
        let bad = |what: String| RestoreError::Image {
            what: "tty-data.img".into(),
            source: format!("data for tty file {}: {what}", d.tty_id).into(),
        };
        let tty = files
            .get(&d.tty_id)
            .and_then(|f| f.tty.as_ref())
            .ok_or_else(|| bad("no such TTY entry in files.img".into()))?;
        let index = infos
            .get(&tty.tty_info_id)
            .and_then(|i| i.pty.as_ref())
            .map(|p| p.index)
            .ok_or_else(|| bad("not a pty".into()))?;
        let master = tty
            .regf_id
            .and_then(|id| files.get(&id)?.reg.as_ref())
            .is_some_and(|r| r.name.ends_with("ptmx"));
        let (m, _) = self
            .masters
            .get(&index)
            .ok_or_else(|| bad(format!("pty {index} is not restored")))?;
        let err = |what: String| RestoreError::State {
            pid: 0,
            fd: 0,
            kind: "pty",
            what: format!("pty {index}: requeueing {} bytes: {what}", d.data.len()),
        };
        let s = self_slave(index).map_err(|e| err(format!("open slave: {e}")))?;
        if master {
            push_to_master(m, &s, &d.data).map_err(|e| err(e.to_string()))
        } else {
            let tio = termios_of(&s).map_err(|e| err(e.to_string()))?;
            if tio.c_lflag & libc::ICANON != 0 {
                return Err(err("the slave is in canonical mode".into()));
            }
            push_to_slave(m, &s, &d.data).map_err(|e| err(e.to_string()))
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

/// A slave open of ferry's own (non-blocking: the queue helpers must never hang).
fn self_slave(index: u32) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
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

//! Dump half: the file table (files.img), each task's fds (fdinfo-N.img) and pipe contents.
//!
//! Kernel mechanism: /proc/PID/fd/N links name each open file and stat through them gives the
//! object (mode, device, inode, size); /proc/PID/fdinfo/N gives the position and the open flags
//! (O_CLOEXEC among them). Two fds refer to one open file description exactly when
//! `kcmp(KCMP_FILE)` says so, and then they share one files.img entry. A pipe's unread bytes are
//! copied without consuming them: ferry opens the pipe afresh through the /proc link (a new
//! reader of the same pipe) and `tee`s the buffer into a pipe of its own.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use ferry_images::pb;

use crate::mem::dump::MappedFile;

/// Errors of the fd dump.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A /proc entry could not be read.
    #[error("task {pid}: fd {fd}: reading {path}: {source}")]
    Proc {
        pid: i32,
        fd: i32,
        path: String,
        source: std::io::Error,
    },
    /// An fd kind ferry cannot dump yet.
    #[error("task {pid}: fd {fd}: unsupported file type {kind} ({target})")]
    Unsupported {
        pid: i32,
        fd: i32,
        kind: &'static str,
        target: String,
    },
    /// The tree holds a file lock.
    #[error("task {pid}: holds a {lock}: file locks are not dumped yet")]
    Locked { pid: i32, lock: String },
    /// Reading a pipe's buffered data failed.
    #[error("task {pid}: fd {fd}: copying the data of pipe {ino}: {source}")]
    PipeData {
        pid: i32,
        fd: i32,
        ino: u64,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, FilesError>;

const KCMP_FILE: i32 = 0;

/// Whether fd `a` of `pa` and fd `b` of `pb` are one open file description.
fn same_file(pa: i32, a: i32, pb_: i32, b: i32) -> bool {
    // SAFETY: kcmp only compares kernel objects; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pa, pb_, KCMP_FILE, a, b) };
    r == 0
}

/// ELF NT_GNU_BUILD_ID of `path` as CRIU stores it (little-endian u32 words), if any.
pub fn build_id(path: &str) -> Option<Vec<u32>> {
    let data = std::fs::read(path).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = u64_at(0x20)? as usize;
    let (phentsize, phnum) = (u16_at(0x36)? as usize, u16_at(0x38)? as usize);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != 4 {
            continue; // PT_NOTE
        }
        let (off, size) = (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize);
        let mut p = off;
        while p + 12 <= off + size {
            let (namesz, descsz, ty) =
                (u32_at(p)? as usize, u32_at(p + 4)? as usize, u32_at(p + 8)?);
            let name = p + 12;
            let desc = name + namesz.div_ceil(4) * 4;
            if ty == 3 && data.get(name..name + namesz)? == b"GNU\0" {
                let d = data.get(desc..desc + descsz)?;
                return Some(
                    d.chunks(4)
                        .map(|c| {
                            let mut w = [0u8; 4];
                            w[..c.len()].copy_from_slice(c);
                            u32::from_le_bytes(w)
                        })
                        .collect(),
                );
            }
            p = desc + descsz.div_ceil(4) * 4;
        }
    }
    None
}

/// pos and flags from /proc/PID/fdinfo/N.
fn fdinfo(pid: i32, fd: i32) -> Result<(u64, u32)> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).map_err(|source| FilesError::Proc {
        pid,
        fd,
        path,
        source,
    })?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("0")
    };
    let pos = get("pos").parse().unwrap_or(0);
    let flags = u32::from_str_radix(get("flags"), 8).unwrap_or(0);
    Ok((pos, flags))
}

fn fown() -> pb::FownEntry {
    pb::FownEntry::default()
}

/// Refuses a tree holding file locks: they are not dumped yet, and a restore without them
/// would let other processes into what the tree had locked. /proc/PID/fdinfo/N lists, as
/// `lock:` lines, the flock, POSIX and OFD locks owned through that fd (reading /proc/locks
/// instead costs milliseconds of frozen time on this kernel).
pub fn check_locks(pids: &[i32]) -> Result<()> {
    for &pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.starts_with("lock:")) {
                return Err(FilesError::Locked {
                    pid,
                    lock: format!(
                        "lock on fd {} ({})",
                        e.file_name().to_string_lossy(),
                        l.trim()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// (pid, fd, file id) of an fd already dumped.
type FdRef = (i32, i32, u32);

/// A pipe's buffered data for pipes-data.img.
#[derive(Debug, Clone)]
pub struct PipeData {
    /// The entry.
    pub entry: pb::PipeDataEntry,
    /// The bytes that follow it.
    pub data: Vec<u8>,
}

/// Every file entry of the dump, shared by all tasks.
#[derive(Debug, Default)]
pub struct FileTable {
    /// files.img entries in id order.
    pub entries: Vec<pb::FileEntry>,
    /// Buffered pipe contents.
    pub pipes: Vec<PipeData>,
    by_object: HashMap<(u64, u64, u32), u32>,
    fds: HashMap<(u64, u64), Vec<FdRef>>,
    pipes_seen: HashSet<u64>,
    /// tty-info.img entries (terminals of `--shell-job` trees).
    pub ttys: Vec<pb::TtyInfoEntry>,
}

impl FileTable {
    fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// A REG entry for a path-named object not held by an fd (exe, mappings, cwd, root),
    /// shared by everything naming the same inode with the same flags.
    pub fn reg_object(&mut self, f: &MappedFile, flags: u32, with_build_id: bool) -> u32 {
        let key = (f.dev, f.ino, flags);
        if let Some(id) = self.by_object.get(&key) {
            return *id;
        }
        let id = self.next_id();
        let is_reg = f.mode & libc::S_IFMT == libc::S_IFREG;
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(pb::RegFileEntry {
                id,
                flags,
                pos: 0,
                fown: fown(),
                name: f.path.clone(),
                size: is_reg.then_some(f.size),
                mode: Some(f.mode),
                build_id: if with_build_id && is_reg {
                    build_id(&f.path).unwrap_or_default()
                } else {
                    Vec::new()
                },
                ..Default::default()
            }),
            ..Default::default()
        });
        self.by_object.insert(key, id);
        id
    }

    /// Dumps every fd of task `pid`; returns its fdinfo entries.
    pub fn dump_fds(&mut self, pid: i32, shell_job: bool) -> Result<Vec<pb::FdinfoEntry>> {
        let dir = format!("/proc/{pid}/fd");
        let rd = std::fs::read_dir(&dir).map_err(|source| FilesError::Proc {
            pid,
            fd: -1,
            path: dir.clone(),
            source,
        })?;
        let mut fds: Vec<i32> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        let mut out = Vec::new();
        for fd in fds {
            out.push(self.dump_fd(pid, fd, shell_job)?);
        }
        Ok(out)
    }

    fn dump_fd(&mut self, pid: i32, fd: i32, shell_job: bool) -> Result<pb::FdinfoEntry> {
        let link = format!("/proc/{pid}/fd/{fd}");
        let proc_err = |path: &str| {
            let path = path.to_string();
            move |source| FilesError::Proc {
                pid,
                fd,
                path,
                source,
            }
        };
        let target = std::fs::read_link(&link)
            .map_err(proc_err(&link))?
            .to_string_lossy()
            .into_owned();
        let md = std::fs::metadata(&link).map_err(proc_err(&link))?;
        let (pos, oflags) = fdinfo(pid, fd)?;
        let cloexec = oflags & libc::O_CLOEXEC as u32 != 0;
        let flags = oflags & !(libc::O_CLOEXEC as u32);
        let unsupported = |kind| FilesError::Unsupported {
            pid,
            fd,
            kind,
            target: target.clone(),
        };
        let mode = md.mode() & libc::S_IFMT;
        let rdev = md.rdev();
        let major = libc::major(rdev);
        let ty = match mode {
            libc::S_IFREG | libc::S_IFDIR if target.ends_with(" (deleted)") => {
                return Err(unsupported("deleted file (not supported yet)"))
            }
            libc::S_IFREG | libc::S_IFDIR if target.starts_with('/') => pb::FdTypes::Reg,
            // mem devices: /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom.
            libc::S_IFCHR if major == 1 => pb::FdTypes::Reg,
            libc::S_IFCHR if major == 5 && libc::minor(rdev) == 2 => {
                return Err(unsupported("pty master (not supported yet)"))
            }
            libc::S_IFCHR if matches!(major, 4 | 5 | 136..=143) => {
                if !shell_job {
                    return Err(unsupported(
                        "tty (use --shell-job for the caller's terminal)",
                    ));
                }
                pb::FdTypes::Tty
            }
            libc::S_IFCHR => return Err(unsupported("character device")),
            libc::S_IFBLK => return Err(unsupported("block device")),
            libc::S_IFIFO if target.starts_with("pipe:") => pb::FdTypes::Pipe,
            libc::S_IFIFO => return Err(unsupported("FIFO (not supported yet)")),
            libc::S_IFSOCK => return Err(unsupported("socket (not supported yet)")),
            _ if target.starts_with("anon_inode:") => {
                return Err(unsupported("anonymous inode (not supported yet)"))
            }
            _ => return Err(unsupported("unknown")),
        };
        let key = (md.dev(), md.ino());
        let shared = self.fds.get(&key).and_then(|v| {
            v.iter()
                .find(|(p, f, _)| same_file(pid, fd, *p, *f))
                .map(|(_, _, id)| *id)
        });
        let id = match shared {
            Some(id) => id,
            None => {
                let id = self.next_id();
                let mut e = pb::FileEntry {
                    r#type: ty as i32,
                    id,
                    ..Default::default()
                };
                if ty == pb::FdTypes::Tty {
                    let info = self.tty_info(pid, fd, &link, &md)?;
                    let regf = MappedFile {
                        path: target.clone(),
                        dev: md.dev(),
                        ino: md.ino(),
                        mode: md.mode(),
                        size: 0,
                    };
                    // The tty's path as a REG entry of its own, as CRIU links them.
                    let regf_id = self.reg_object(&regf, flags, false);
                    let id = self.next_id();
                    e.id = id;
                    e.tty = Some(pb::TtyFileEntry {
                        id,
                        tty_info_id: info,
                        flags,
                        fown: fown(),
                        regf_id: Some(regf_id),
                    });
                } else if ty == pb::FdTypes::Pipe {
                    e.pipe = Some(pb::PipeEntry {
                        id,
                        pipe_id: md.ino() as u32,
                        flags,
                        fown: fown(),
                    });
                    if self.pipes_seen.insert(md.ino()) {
                        self.pipe_data(pid, fd, md.ino())?;
                    }
                } else {
                    let is_reg = mode == libc::S_IFREG;
                    e.reg = Some(pb::RegFileEntry {
                        id,
                        flags,
                        pos,
                        fown: fown(),
                        name: target.clone(),
                        size: is_reg.then_some(md.size()),
                        mode: Some(md.mode()),
                        ..Default::default()
                    });
                }
                let id = e.id;
                self.entries.push(e);
                id
            }
        };
        self.fds.entry(key).or_default().push((pid, fd, id));
        Ok(pb::FdinfoEntry {
            id,
            flags: if cloexec { libc::FD_CLOEXEC as u32 } else { 0 },
            r#type: ty as i32,
            fd: fd as u32,
            xattr_security_selinux: None,
        })
    }

    /// The tty-info.img entry of the terminal `fd` of `pid` (one per device); returns its id.
    fn tty_info(&mut self, pid: i32, fd: i32, link: &str, md: &std::fs::Metadata) -> Result<u32> {
        let rdev = md.rdev();
        if let Some(t) = self.ttys.iter().find(|t| u64::from(t.rdev) == rdev) {
            return Ok(t.id);
        }
        let err = |source| FilesError::Proc {
            pid,
            fd,
            path: link.to_string(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(link)
            .map_err(err)?;
        let raw = f.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is an open tty fd; `t` is a valid out-pointer.
        if unsafe { libc::tcgetattr(raw, &mut t) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
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
        let (ispeed, ospeed) = unsafe { (libc::cfgetispeed(&t), libc::cfgetospeed(&t)) };
        let id = self.ttys.len() as u32 + 1;
        self.ttys.push(pb::TtyInfoEntry {
            id,
            r#type: ty as i32,
            locked: false,
            exclusive: excl != 0,
            packet_mode: false,
            sid: sid.max(0) as u32,
            pgrp: pgrp.max(0) as u32,
            rdev: rdev as u32,
            termios: Some(pb::TermiosEntry {
                c_iflag: t.c_iflag,
                c_oflag: t.c_oflag,
                c_cflag: t.c_cflag,
                c_lflag: t.c_lflag,
                c_line: t.c_line as u32,
                c_ispeed: ispeed,
                c_ospeed: ospeed,
                c_cc: t.c_cc.iter().take(19).map(|c| *c as u32).collect(),
            }),
            termios_locked: None,
            winsize: Some(pb::WinsizeEntry {
                ws_row: ws.ws_row.into(),
                ws_col: ws.ws_col.into(),
                ws_xpixel: ws.ws_xpixel.into(),
                ws_ypixel: ws.ws_ypixel.into(),
            }),
            pty: pty.map(|index| pb::TtyPtyEntry { index }),
            dev: None,
            uid: Some(md.uid()),
            gid: Some(md.gid()),
        });
        Ok(id)
    }

    /// Copies the unread bytes of pipe `ino` (held by `pid` as `fd`) without consuming them.
    fn pipe_data(&mut self, pid: i32, fd: i32, ino: u64) -> Result<()> {
        let err = |source| FilesError::PipeData {
            pid,
            fd,
            ino,
            source,
        };
        let src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/{pid}/fd/{fd}"))
            .map_err(err)?;
        // SAFETY: fcntl on an fd we own.
        let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if size < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let mut p = [0i32; 2];
        // SAFETY: `p` has room for two fds.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: fresh fds we own.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < size {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: both fds are pipes we hold; tee does not consume the source.
        let n = unsafe {
            libc::tee(
                src.as_raw_fd(),
                wr.as_raw_fd(),
                size as usize,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        let n = if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(err(e));
            }
            0
        } else {
            n as usize
        };
        let mut data = vec![0u8; n];
        let mut got = 0;
        while got < n {
            // SAFETY: reading into the rest of `data`.
            let r = unsafe { libc::read(rd.as_raw_fd(), data[got..].as_mut_ptr().cast(), n - got) };
            if r <= 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            got += r as usize;
        }
        if n > 0 {
            self.pipes.push(PipeData {
                entry: pb::PipeDataEntry {
                    pipe_id: ino as u32,
                    bytes: n as u32,
                    size: Some(size as u32),
                },
                data,
            });
        }
        Ok(())
    }
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_build_id_of_an_elf() {
        let exe = std::env::current_exe().unwrap();
        // Rust test binaries carry a GNU build-id on Debian's toolchain; skip quietly if not.
        if let Some(b) = build_id(exe.to_str().unwrap()) {
            assert!(!b.is_empty());
        }
        assert!(build_id("/proc/self/status").is_none());
    }

    #[test]
    fn pipe_data_is_copied_not_consumed() {
        let mut p = [0i32; 2];
        // SAFETY: room for two fds.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: writing 5 bytes from a static buffer.
        assert_eq!(unsafe { libc::write(p[1], b"hello".as_ptr().cast(), 5) }, 5);
        let me = std::process::id() as i32;
        let mut t = FileTable::default();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", p[1]))
            .unwrap()
            .ino();
        t.pipe_data(me, p[1], ino).unwrap();
        assert_eq!(t.pipes[0].data, b"hello");
        assert_eq!(t.pipes[0].entry.bytes, 5);
        let mut buf = [0u8; 5];
        // SAFETY: reading into `buf`.
        assert_eq!(unsafe { libc::read(p[0], buf.as_mut_ptr().cast(), 5) }, 5);
        assert_eq!(&buf, b"hello");
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }
}

//! Dump dispatcher: walks a task's fds, finds which open file descriptions are shared (kcmp), and
//! hands each new description to the module of its kind, which returns its files.img entry.
//!
//! Kernel mechanism: /proc/PID/fd/N names the object (a path, `pipe:[ino]`, `socket:[ino]`,
//! `anon_inode:[eventfd]` ...) and stat through it gives mode, device and inode; fdinfo gives
//! position, flags (O_CLOEXEC among them) and per-kind state. Two fds are one description exactly
//! when `kcmp(KCMP_FILE)` says so; they then share one files.img entry.
//!
//! To add a kind: give it a [`Kind`] in [`classify`], then one arm in [`FileTable::dump_new`]
//! calling `your_module::dump(self, &fd, id)`, which returns the [`pb::FileEntry`].

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;

use ferry_images::{pb, ImageDir};

use crate::mem::dump::MappedFile;

pub use super::pipe::PipeData;

/// Errors of the fd dump; each names task, fd and what was being done.
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
    /// An fd kind ferry cannot dump.
    #[error("task {pid}: fd {fd}: unsupported file type {kind} ({target})")]
    Unsupported {
        pid: i32,
        fd: i32,
        kind: &'static str,
        target: String,
    },
    /// A supported kind in a state ferry cannot dump.
    #[error("task {pid}: fd {fd}: {kind}: {what}")]
    State {
        pid: i32,
        fd: i32,
        kind: &'static str,
        what: String,
    },
    /// The tree holds a file lock.
    #[error("task {pid}: mapping {start:#x}-{end:#x} ({name}): {what}")]
    Mapping {
        pid: i32,
        start: u64,
        end: u64,
        name: String,
        what: String,
    },
    #[error("task {pid}: holds a {lock}: file locks are dumped only with --file-locks")]
    Locked { pid: i32, lock: String },
    /// Reading a pipe's buffered data failed.
    #[error("task {pid}: fd {fd}: copying the data of pipe {ino}: {source}")]
    PipeData {
        pid: i32,
        fd: i32,
        ino: u64,
        source: std::io::Error,
    },
    /// Writing an image of the file table failed.
    #[error("writing {image}: {source}")]
    Write {
        image: String,
        source: ferry_images::dir::DirError,
    },
    /// A unix socket (see `super::unix`).
    #[error(transparent)]
    Unix(#[from] super::unix::UnixError),
    /// An inet socket (see `super::inet`).
    #[error(transparent)]
    Inet(#[from] super::inet::InetError),
}

pub(crate) type Result<T> = std::result::Result<T, FilesError>;

const KCMP_FILE: i32 = 0;

/// Whether fd `a` of `pa` and fd `b` of `pb` are one open file description.
fn same_file(pa: i32, a: i32, pb_: i32, b: i32) -> bool {
    // SAFETY: kcmp only compares kernel objects; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pa, pb_, KCMP_FILE, a, b) };
    r == 0
}

/// One fd being dumped: what /proc says about it.
#[derive(Debug)]
pub struct Fd {
    /// Task.
    pub pid: i32,
    /// fd number.
    pub fd: i32,
    /// /proc/PID/fd/N.
    pub link: String,
    /// Its readlink.
    pub target: String,
    /// stat through the link.
    pub md: std::fs::Metadata,
    /// fdinfo text.
    pub info: String,
    /// Position.
    pub pos: u64,
    /// Open flags without O_CLOEXEC.
    pub flags: u32,
    /// F_SETOWN owner and F_SETSIG signal of the description.
    pub fown: pb::FownEntry,
}

impl Fd {
    /// A /proc read error for this fd.
    pub fn proc_err(&self, path: &str) -> impl FnOnce(std::io::Error) -> FilesError {
        let (pid, fd, path) = (self.pid, self.fd, path.to_string());
        move |source| FilesError::Proc {
            pid,
            fd,
            path,
            source,
        }
    }

    /// A "this state cannot be dumped" error for this fd.
    pub fn state(&self, kind: &'static str, what: impl Into<String>) -> FilesError {
        FilesError::State {
            pid: self.pid,
            fd: self.fd,
            kind,
            what: what.into(),
        }
    }

    fn unsupported(&self, kind: &'static str) -> FilesError {
        FilesError::Unsupported {
            pid: self.pid,
            fd: self.fd,
            kind,
            target: self.target.clone(),
        }
    }
}

/// The kinds of fd the dispatcher knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file, directory, memory device; unlinked files go out as ghosts.
    Reg,
    /// A pipe.
    Pipe,
    /// A named pipe.
    Fifo,
    /// A terminal (the caller's, with `--shell-job`).
    Tty,
    /// The master of a pty pair.
    PtyMaster,
    /// The slave of a pty pair whose master is in the tree.
    PtySlave,
    /// eventfd.
    Eventfd,
    /// epoll instance.
    Eventpoll,
    /// signalfd.
    Signalfd,
    /// timerfd.
    Timerfd,
    /// inotify instance.
    Inotify,
    /// pidfd.
    Pidfd,
    /// fanotify group.
    Fanotify,
    /// memfd.
    Memfd,
    /// A socket (the socket modules' own dispatch).
    Socket,
}

impl Kind {
    /// The fdinfo-N.img type of the kind.
    pub fn fd_type(self) -> pb::FdTypes {
        match self {
            Kind::Reg => pb::FdTypes::Reg,
            Kind::Pipe => pb::FdTypes::Pipe,
            Kind::Fifo => pb::FdTypes::Fifo,
            Kind::Tty | Kind::PtyMaster | Kind::PtySlave => pb::FdTypes::Tty,
            Kind::Eventfd => pb::FdTypes::Eventfd,
            Kind::Eventpoll => pb::FdTypes::Eventpoll,
            Kind::Signalfd => pb::FdTypes::Signalfd,
            Kind::Timerfd => pb::FdTypes::Timerfd,
            Kind::Inotify => pb::FdTypes::Inotify,
            Kind::Pidfd => pb::FdTypes::Pidfd,
            Kind::Fanotify => pb::FdTypes::Fanotify,
            Kind::Memfd => pb::FdTypes::Memfd,
            Kind::Socket => pb::FdTypes::Unixsk,
        }
    }
}

/// Which module dumps `fd`; anything else is an "unsupported" error naming pid, fd and kind.
pub fn classify(fd: &Fd, shell_job: bool) -> Result<Kind> {
    let mode = fd.md.mode() & libc::S_IFMT;
    let rdev = fd.md.rdev();
    let major = libc::major(rdev);
    let t = fd.target.as_str();
    Ok(match mode {
        libc::S_IFREG if t.starts_with("/memfd:") => Kind::Memfd,
        libc::S_IFREG | libc::S_IFDIR if t.starts_with('/') => Kind::Reg,
        // mem devices: /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom.
        libc::S_IFCHR if major == 1 => Kind::Reg,
        libc::S_IFCHR if major == 5 && libc::minor(rdev) == 2 => Kind::PtyMaster,
        libc::S_IFCHR if (136..=143).contains(&major) && !shell_job => Kind::PtySlave,
        libc::S_IFCHR if matches!(major, 4 | 5 | 136..=143) => {
            if !shell_job {
                return Err(fd.unsupported("tty (use --shell-job for the caller's terminal)"));
            }
            Kind::Tty
        }
        libc::S_IFCHR => return Err(fd.unsupported("character device")),
        libc::S_IFBLK => return Err(fd.unsupported("block device")),
        libc::S_IFIFO if t.starts_with("pipe:") => Kind::Pipe,
        libc::S_IFIFO if t.starts_with('/') => Kind::Fifo,
        libc::S_IFIFO => return Err(fd.unsupported("FIFO without a path")),
        libc::S_IFSOCK => Kind::Socket,
        _ => match t {
            "anon_inode:[eventfd]" => Kind::Eventfd,
            "anon_inode:[eventpoll]" => Kind::Eventpoll,
            "anon_inode:[signalfd]" => Kind::Signalfd,
            "anon_inode:[timerfd]" => Kind::Timerfd,
            "anon_inode:inotify" => Kind::Inotify,
            "anon_inode:[fanotify]" => Kind::Fanotify,
            "anon_inode:[pidfd]" => Kind::Pidfd,
            "anon_inode:[io_uring]" => return Err(fd.unsupported("io_uring")),
            "anon_inode:[userfaultfd]" => return Err(fd.unsupported("userfaultfd")),
            _ if t.starts_with("anon_inode:") => return Err(fd.unsupported("anonymous inode")),
            _ => return Err(fd.unsupported("unknown")),
        },
    })
}

/// Refuses a tree holding file locks when they are not to be dumped (no `--file-locks`): a
/// restore without them would let other processes into what the tree had locked. /proc/PID/fdinfo/N lists, as
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

/// Every file entry of the dump, shared by all tasks, plus the side images of some kinds.
#[derive(Debug)]
pub struct FileTable {
    /// files.img entries in id order.
    pub entries: Vec<pb::FileEntry>,
    /// Buffered pipe contents (pipes-data.img).
    pub pipes: Vec<PipeData>,
    /// tty-info.img entries (terminals of `--shell-job` trees).
    pub ttys: Vec<pb::TtyInfoEntry>,
    /// Unlinked files: ghost-file-N.img contents, N = index + 1.
    pub ghosts: Vec<super::reg::Ghost>,
    /// remap-fpath.img entries.
    pub remaps: Vec<pb::RemapFilePathEntry>,
    /// Largest unlinked file whose content goes into the images (`--ghost-limit`).
    pub ghost_limit: u64,
    pub(crate) by_object: HashMap<(u64, u64, u32), u32>,
    fds: HashMap<(u64, u64), Vec<FdRef>>,
    pub(crate) pipes_seen: std::collections::HashSet<u64>,
    /// Dump file locks (`--file-locks`) instead of refusing them.
    pub file_locks: bool,
    /// file-locks.img entries.
    pub locks: Vec<pb::FileLockEntry>,
    locks_seen: HashSet<(u32, i64, String, i64, i64)>,
    /// Buffered FIFO contents (fifo-data.img).
    pub fifo_data: Vec<PipeData>,
    pub(crate) fifos_seen: std::collections::HashSet<u64>,
    /// pty pairs seen (every slave's master must be in the tree).
    pub(crate) ptys: super::pty::PtyDump,
    /// memfd inodes (memfd.img, pagemap-shmem-N.img).
    pub memfds: Vec<super::memfd::MemfdInode>,
    /// Unix sockets of the tree: peers, queues (sk-queues.img).
    pub unix: super::unix::UnixDump,
    /// TCP and UDP sockets of the tree: connections in repair mode, tcp-stream images.
    pub inet: super::inet::InetDump,
    /// The tree's pids, host -> namespace (pidfd targets, F_SETOWN owners).
    pub tree_pids: super::pidfd::TreePids,
}

/// CRIU's default --ghost-limit: 1 MiB.
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

impl Default for FileTable {
    fn default() -> Self {
        FileTable {
            entries: Vec::new(),
            pipes: Vec::new(),
            ttys: Vec::new(),
            ghosts: Vec::new(),
            remaps: Vec::new(),
            ghost_limit: DEFAULT_GHOST_LIMIT,
            by_object: HashMap::new(),
            fds: HashMap::new(),
            pipes_seen: Default::default(),
            memfds: Vec::new(),
            ptys: Default::default(),
            fifo_data: Vec::new(),
            file_locks: false,
            locks: Vec::new(),
            locks_seen: HashSet::new(),
            fifos_seen: Default::default(),
            unix: Default::default(),
            inet: Default::default(),
            tree_pids: Default::default(),
        }
    }
}

impl FileTable {
    /// The id the next files.img entry gets.
    pub fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// A REG entry for a path-named object not held by an fd (exe, mappings, cwd, root),
    /// shared by everything naming the same inode with the same flags.
    pub fn reg_object(&mut self, f: &MappedFile, flags: u32, with_build_id: bool) -> u32 {
        super::reg::object(self, f, flags, with_build_id)
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

    pub(crate) fn dump_fd(
        &mut self,
        pid: i32,
        fd: i32,
        shell_job: bool,
    ) -> Result<pb::FdinfoEntry> {
        let link = format!("/proc/{pid}/fd/{fd}");
        let err = |path: String| {
            move |source| FilesError::Proc {
                pid,
                fd,
                path,
                source,
            }
        };
        let target = std::fs::read_link(&link)
            .map_err(err(link.clone()))?
            .to_string_lossy()
            .into_owned();
        let md = std::fs::metadata(&link).map_err(err(link.clone()))?;
        let ipath = format!("/proc/{pid}/fdinfo/{fd}");
        let info = std::fs::read_to_string(&ipath).map_err(err(ipath))?;
        let pos = super::field(&info, "pos")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let oflags = super::field(&info, "flags")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .unwrap_or(0);
        let cloexec = oflags & libc::O_CLOEXEC as u32 != 0;
        let mut f = Fd {
            pid,
            fd,
            link,
            target,
            md,
            info,
            pos,
            flags: oflags & !(libc::O_CLOEXEC as u32),
            fown: super::fown_of(pid, fd),
        };
        let mut fown = f.fown;
        self.tree_pids.fown(&f, &mut fown)?;
        f.fown = fown;
        let kind = classify(&f, shell_job)?;
        let key = (f.md.dev(), f.md.ino());
        let shared = self.fds.get(&key).and_then(|v| {
            v.iter()
                .find(|(p, n, _)| same_file(pid, fd, *p, *n))
                .map(|(_, _, id)| *id)
        });
        let id = match shared {
            Some(id) => id,
            None => {
                let e = self.dump_new(kind, &f)?;
                let id = e.id;
                self.entries.push(e);
                id
            }
        };
        self.fds.entry(key).or_default().push((pid, fd, id));
        if self.file_locks {
            let l = super::locks::dump(&f, id, &mut self.locks_seen)?;
            self.locks.extend(l);
        }
        Ok(pb::FdinfoEntry {
            id,
            flags: if cloexec { libc::FD_CLOEXEC as u32 } else { 0 },
            // A socket's kind (unix, inet) is its entry's.
            r#type: match kind {
                Kind::Socket => self
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.id == id)
                    .map(|e| e.r#type),
                _ => None,
            }
            .unwrap_or(kind.fd_type() as i32),
            fd: fd as u32,
            xattr_security_selinux: None,
        })
    }

    /// The files.img entry of a description seen for the first time. Add your kind here.
    fn dump_new(&mut self, kind: Kind, fd: &Fd) -> Result<pb::FileEntry> {
        match kind {
            Kind::Reg => super::reg::dump(self, fd),
            Kind::Pipe => super::pipe::dump(self, fd),
            Kind::Fifo => super::fifo::dump(self, fd),
            Kind::Tty => super::tty::dump(self, fd),
            Kind::PtyMaster => super::pty::dump_master(self, fd),
            Kind::PtySlave => super::pty::dump_slave(self, fd),
            Kind::Eventfd => super::eventfd::dump(self, fd),
            Kind::Eventpoll => super::epoll::dump(self, fd),
            Kind::Signalfd => super::signalfd::dump(self, fd),
            Kind::Timerfd => super::timerfd::dump(self, fd),
            Kind::Inotify => super::inotify::dump(self, fd),
            Kind::Pidfd => super::pidfd::dump(self, fd),
            Kind::Fanotify => super::fanotify::dump(self, fd),
            Kind::Memfd => super::memfd::dump(self, fd),
            // Sockets: the socket modules hook in here.
            Kind::Socket if super::inet::is_inet(fd) => super::inet::dump(self, fd),
            Kind::Socket => super::unix::dump(self, fd),
        }
    }

    /// Writes the side images of the table (tty-info, pipes-data, ghost files, remap-fpath,
    /// memfd inodes with their pages, taking pages ids from `next_pages_id`); files.img itself
    /// is written by the dump orchestrator.
    pub fn write_side_images(&self, dir: &ImageDir, next_pages_id: &mut u32) -> Result<()> {
        let werr = |image: &str| {
            let image = image.to_string();
            move |source| FilesError::Write { image, source }
        };
        super::pty::check(&self.ptys)?;
        super::pty::dump_queues(&self.ptys, dir)?;
        if !self.ttys.is_empty() {
            dir.write_entries("tty-info.img", &self.ttys)
                .map_err(werr("tty-info.img"))?;
        }
        super::pipe::write_data(dir, &self.pipes)?;
        super::fifo::write_data(dir, &self.fifo_data)?;
        self.unix.write(dir)?;
        self.inet.write(dir)?;
        super::memfd::write(dir, &self.memfds, next_pages_id)?;
        super::locks::write(dir, &self.locks)?;
        super::reg::write_ghosts(dir, &self.ghosts, &self.remaps)
    }
}

/// Writes an image whose entries are each followed by raw bytes, and syncs it.
pub fn write_with_raw<'a, M: prost::Message + 'a>(
    dir: &ImageDir,
    name: &str,
    items: impl IntoIterator<Item = (&'a M, &'a [u8])>,
) -> Result<()> {
    let werr = |source: ferry_images::dir::DirError| FilesError::Write {
        image: name.to_string(),
        source,
    };
    let ioerr = |source: std::io::Error| FilesError::Write {
        image: name.to_string(),
        source: ferry_images::dir::DirError::Io {
            path: name.to_string(),
            op: "write",
            source,
        },
    };
    let mut w = dir.writer(name).map_err(werr)?;
    for (e, raw) in items {
        w.write_entry(e).map_err(|e| werr(e.into()))?;
        w.write_raw(raw).map_err(|e| werr(e.into()))?;
    }
    let f = w
        .finish()
        .map_err(|e| werr(e.into()))?
        .into_inner()
        .map_err(|e| ioerr(e.into_error()))?;
    f.sync_all().map_err(ioerr)
}

/// A size as CRIU's options take it: bytes, or a number with a K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("expected a size such as 4096, 64K or 1M, got {s:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_sizes() {
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("64K"), Ok(64 << 10));
        assert_eq!(super::parse_size("1M"), Ok(1 << 20));
        assert_eq!(super::parse_size("2g"), Ok(2 << 30));
        assert!(super::parse_size("1X").is_err());
        assert!(super::parse_size("").is_err());
    }
}

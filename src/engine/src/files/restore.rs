//! Restore dispatcher: opens every open file description the tree needs once, in the
//! coordinator before forking, then lets each task put its fds in place.
//!
//! Kernel mechanism: a description opened once and inherited by every forked task, then
//! `dup3`ed to the fd numbers of the image, is one shared description again, just as it was
//! (position, flags and state shared between fds and tasks). Each kind's module creates its
//! description from its files.img entry; everything sits at fd numbers above every number the
//! images use, so a task's `dup3`s never clobber one another. Descriptions that refer to other
//! fds by number (epoll targets) are completed in the task after its fds are in place.
//!
//! To add a kind: one arm in [`open_fd`] calling `your_module::open(...)`, returning the
//! description as an [`OwnedFd`]; a post-install step, if the kind needs one, goes in [`install`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ferry_images::{pb, ImageDir};
use thiserror::Error;

use super::inherit::{self, InheritFd, Inherited};
use super::{
    epoll, eventfd, fanotify, fifo, inotify, memfd, pipe, pty, reg, signalfd, timerfd, tty,
};

pub use super::reg::build_id;

/// Errors preparing or installing fds, naming task, fd and path.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// An image could not be read.
    #[error("{what}: {source}")]
    Image {
        /// Which image.
        what: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file is not what the image recorded.
    #[error("file {path} changed since the dump: {what}")]
    Changed {
        /// Path.
        path: String,
        /// What differs.
        what: String,
    },
    /// A syscall failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Path or object.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An fd kind ferry cannot restore.
    #[error("task {pid}: fd {fd}: {what} is not supported by ferry's restore yet")]
    Unsupported {
        /// Task.
        pid: u32,
        /// fd.
        fd: u32,
        /// What.
        what: String,
    },
    /// The images refer to a file id that does not exist.
    #[error("{what} names file id {id}, which files.img does not have")]
    NoFile {
        /// Who refers to it.
        what: String,
        /// The id.
        id: u32,
    },
    /// A kind's state could not be restored.
    #[error("task {pid}: fd {fd}: {kind}: {what}")]
    State {
        /// Task.
        pid: u32,
        /// fd.
        fd: u32,
        /// Kind.
        kind: &'static str,
        /// What went wrong.
        what: String,
    },
}

/// The old name of the error type.
pub type FilesError = RestoreError;

pub(crate) fn img<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
) -> impl FnOnce(E) -> RestoreError + '_ {
    move |e| RestoreError::Image {
        what: what.to_string(),
        source: Box::new(e),
    }
}

pub(crate) fn sys(op: &'static str, path: &str) -> RestoreError {
    RestoreError::Sys {
        op,
        path: path.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// Takes ownership of the fd a syscall returned, or names the failed syscall.
pub(crate) fn owned(n: i32, op: &'static str, what: &str) -> Result<OwnedFd, RestoreError> {
    if n < 0 {
        return Err(sys(op, what));
    }
    // SAFETY: n is a fresh fd returned to us by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// tty-info.img by id.
pub(crate) fn load_tty_infos(
    dir: &ImageDir,
) -> Result<BTreeMap<u32, pb::TtyInfoEntry>, RestoreError> {
    if !dir.has("tty-info.img") {
        return Ok(BTreeMap::new());
    }
    let v: Vec<pb::TtyInfoEntry> = dir
        .read_entries("tty-info.img")
        .map_err(img("tty-info.img"))?;
    Ok(v.into_iter().map(|t| (t.id, t)).collect())
}

/// files.img by id.
pub fn load_files(dir: &ImageDir) -> Result<BTreeMap<u32, pb::FileEntry>, RestoreError> {
    if !dir.has("files.img") {
        return Ok(BTreeMap::new());
    }
    let v: Vec<pb::FileEntry> = dir.read_entries("files.img").map_err(img("files.img"))?;
    Ok(v.into_iter().map(|f| (f.id, f)).collect())
}

/// Everything the coordinator opened, by files.img id.
#[derive(Debug, Default)]
pub struct Opened {
    /// Descriptions for fds, by files.img id.
    pub fds: BTreeMap<u32, OwnedFd>,
    /// Files for mappings (and the exe), by files.img id.
    pub maps: BTreeMap<u32, OwnedFd>,
    /// Anonymous shared memory, by shmid.
    pub shmem: BTreeMap<u64, OwnedFd>,
    /// memfds with the seals to add once every mapping is in place (`memfd::apply_seals`).
    pub memfd_seals: Vec<(OwnedFd, u32)>,
    /// epoll targets to add once a task's fds are in place, by the epoll's files.img id.
    pub epolls: BTreeMap<u32, Vec<pb::EventpollTfdEntry>>,
    /// F_SETOWN owners and F_SETSIG signals to set in the task, by files.img id.
    pub fowns: BTreeMap<u32, pb::FownEntry>,
    /// Descriptions that had O_ASYNC, set once their owner is (open(2) ignores the flag).
    pub asyncs: BTreeSet<u32>,
    /// pty slaves that are a session's controlling terminal: (sid, foreground pgrp) by id.
    pub cttys: BTreeMap<u32, (u32, u32)>,
    /// pidfds each task opens itself, by files.img id.
    pub pidfds: BTreeMap<u32, pb::PidfdEntry>,
    /// file-locks.img: locks each task takes again once its fds are in place.
    pub locks: Vec<pb::FileLockEntry>,
    /// TCP and UDP sockets; established connections stay in repair mode until
    /// `inet::restore::leave_repair`.
    pub inet: super::inet::restore::Sockets,
    /// Inherited fds whose key matched no file of the images (for the log).
    pub inherit_unused: Vec<InheritFd>,
    /// Pipes with one end outside the tree and no inherited fd: restored unconnected.
    pub pipes_unconnected: Vec<u32>,
}

/// The fown entry of any kind of files.img entry.
fn fown_of(f: &pb::FileEntry) -> Option<&pb::FownEntry> {
    let f = [
        f.reg.as_ref().map(|e| &e.fown),
        f.pipe.as_ref().map(|e| &e.fown),
        f.efd.as_ref().map(|e| &e.fown),
        f.epfd.as_ref().map(|e| &e.fown),
        f.sgfd.as_ref().map(|e| &e.fown),
        f.tfd.as_ref().map(|e| &e.fown),
        f.memfd.as_ref().map(|e| &e.fown),
        f.ify.as_ref().map(|e| &e.fown),
        f.pidfd.as_ref().map(|e| &e.fown),
        f.ffy.as_ref().map(|e| &e.fown),
        f.tty.as_ref().map(|e| &e.fown),
        f.usk.as_ref().map(|e| &e.fown),
        f.isk.as_ref().map(|e| &e.fown),
    ];
    f.into_iter().flatten().next()
}

/// The open flags of any kind of files.img entry (0 for a kind without them).
fn flags_of(f: &pb::FileEntry) -> u32 {
    let f = [
        f.reg.as_ref().map(|e| e.flags),
        f.pipe.as_ref().map(|e| e.flags),
        f.efd.as_ref().map(|e| e.flags),
        f.epfd.as_ref().map(|e| e.flags),
        f.sgfd.as_ref().map(|e| e.flags),
        f.tfd.as_ref().map(|e| e.flags),
        f.memfd.as_ref().map(|e| e.flags),
        f.ify.as_ref().map(|e| e.flags),
        f.ffy.as_ref().map(|e| e.flags),
        f.tty.as_ref().map(|e| e.flags),
        f.usk.as_ref().map(|e| e.flags),
        f.isk.as_ref().map(|e| e.flags),
    ];
    f.into_iter().flatten().next().unwrap_or(0)
}

/// Moves an fd to a number >= `min` (close-on-exec); the old number is closed.
fn lift(fd: OwnedFd, min: RawFd, what: &str) -> Result<OwnedFd, RestoreError> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the result is a new fd we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    owned(n, "F_DUPFD", what)
}

/// What the tree needs opened.
#[derive(Debug, Default)]
pub struct Needs {
    /// (pid, fdinfo) for every fd of every task.
    pub fds: Vec<(u32, pb::FdinfoEntry)>,
    /// files.img ids used by mappings or as exe, with the open flags they need.
    pub maps: BTreeMap<u32, i32>,
    /// shmid -> size for anonymous shared memory.
    pub shmem: BTreeMap<u64, u64>,
}

/// The coordinator's state while it opens descriptions.
pub struct Prep<'a> {
    /// The images.
    pub dir: &'a ImageDir,
    /// --shell-job.
    pub shell_job: bool,
    /// Pipes by pipe_id.
    pub pipes: pipe::Pipes,
    /// pty pairs by index.
    pub ptys: pty::Ptys,
    /// tty-info.img by id.
    pub tty_infos: BTreeMap<u32, pb::TtyInfoEntry>,
    /// Indexes of the pty pairs whose master is in the images.
    pub pty_masters: std::collections::HashSet<u32>,
    /// FIFO anchors by pipe_id.
    pub fifos: fifo::Fifos,
    /// files.img.
    pub files: &'a BTreeMap<u32, pb::FileEntry>,
    /// Re-created unlinked files.
    pub ghosts: reg::Ghosts,
    /// memfd.img.
    pub memfds: memfd::Inodes,
    /// What is opened so far.
    pub out: Opened,
    /// Unix sockets, all rebuilt on first use.
    pub unix: super::unix::restore::Sockets,
    /// Stand-ins for the dead processes of pidfds opened here.
    pub dead_pids: super::pidfd::Dead,
    /// Fds handed in by the caller (`--inherit-fd`), by key.
    pub inherit: Inherited,
}

/// Opens everything in `needs` (coordinator side, before forking); `inherit` are the caller's
/// fds standing for files of the images (see [`inherit`]).
pub fn prepare(
    dir: &ImageDir,
    files: &BTreeMap<u32, pb::FileEntry>,
    needs: &Needs,
    shell_job: bool,
    inherit_fds: &[InheritFd],
    min_fd: RawFd,
) -> Result<Opened, RestoreError> {
    // First of all, before anything may take or replace low fd numbers.
    let inherit = Inherited::new(inherit_fds, min_fd).map_err(|e| RestoreError::Image {
        what: "inherited fds".into(),
        source: Box::new(e),
    })?;
    let tty_infos = load_tty_infos(dir)?;
    let pty_masters = pty::masters_in(files, &tty_infos);
    let mut p = Prep {
        dir,
        shell_job,
        pipes: Default::default(),
        fifos: Default::default(),
        ptys: Default::default(),
        tty_infos,
        pty_masters,
        files,
        ghosts: reg::Ghosts::create(dir, files)?,
        memfds: memfd::Inodes::load(dir)?,
        out: Opened::default(),
        unix: Default::default(),
        dead_pids: Default::default(),
        inherit,
    };
    let dead_in_tasks = super::pidfd::dead_in_tasks(needs);
    for (pid, fi) in &needs.fds {
        if p.out.fds.contains_key(&fi.id) {
            continue;
        }
        let f = files.get(&fi.id).ok_or_else(|| RestoreError::NoFile {
            what: format!("task {pid} fd {}", fi.fd),
            id: fi.id,
        })?;
        if let Some(e) = f.pidfd.as_ref().filter(|e| e.nspid >= 0 || dead_in_tasks) {
            p.out.pidfds.insert(fi.id, *e);
            continue;
        }
        let fd = open_fd(&mut p, *pid, fi, f)?;
        if let Some(o) = fown_of(f).filter(|o| o.pid != 0 || o.signum != 0) {
            p.out.fowns.insert(fi.id, *o);
        }
        if flags_of(f) & libc::O_ASYNC as u32 != 0 {
            p.out.asyncs.insert(fi.id);
        }
        p.out.fds.insert(fi.id, lift(fd, min_fd, "fd")?);
    }
    // Files in flight in unix socket queues: opened (or taken from the tasks') and sent.
    super::unix::scm::send_in_flight(&mut p)?;
    p.pipes.fill(dir)?;
    p.ptys.finish(dir, files, &p.tty_infos)?;
    p.dead_pids.finish()?;
    p.out.inherit_unused = p.inherit.unused();
    p.out.pipes_unconnected = pipe::one_sided(files)
        .into_iter()
        .filter(|&id| {
            let key = pipe::inherit_key(&pb::PipeEntry {
                pipe_id: id,
                ..Default::default()
            });
            !p.inherit.has(&key)
        })
        .collect();
    p.out.locks = super::locks::load(dir)?;
    for (&id, &flags) in &needs.maps {
        let f = files.get(&id).ok_or_else(|| RestoreError::NoFile {
            what: "a mapping".into(),
            id,
        })?;
        let fd: OwnedFd = if let Some(r) = &f.reg {
            reg::open(r, flags, false, &p.ghosts)?.into()
        } else if let Some(m) = &f.memfd {
            memfd::map_fd(&mut p, m.inode_id, flags)?
        } else {
            return Err(RestoreError::Unsupported {
                pid: 0,
                fd: 0,
                what: format!("a mapping of file id {id} (type {})", f.r#type),
            });
        };
        p.out.maps.insert(id, lift(fd, min_fd, "mapping")?);
    }
    for (&shmid, &size) in &needs.shmem {
        let f =
            crate::mem::restore::anon_shmem(dir, shmid, size).map_err(|e| RestoreError::Image {
                what: format!("shared memory {shmid}"),
                source: Box::new(e),
            })?;
        p.out.shmem.insert(shmid, lift(f.into(), min_fd, "shmem")?);
    }
    // Everything of a ghost file is open now: its name goes, as it had gone before the dump.
    p.ghosts.unlink();
    Ok(p.out)
}

/// The description of one files.img entry. Add your kind here.
pub(crate) fn open_fd(
    p: &mut Prep,
    pid: u32,
    fi: &pb::FdinfoEntry,
    f: &pb::FileEntry,
) -> Result<OwnedFd, RestoreError> {
    if !p.inherit.is_empty() {
        if let Some(key) = inherit::key_of(f, &p.tty_infos) {
            if let Some(src) = p.inherit.take(&key) {
                // A session's terminal taken from outside is still its controlling terminal.
                let info = f.tty.as_ref().and_then(|t| p.tty_infos.get(&t.tty_info_id));
                if let Some(i) = info.filter(|i| i.sid != 0) {
                    p.out.cttys.insert(f.id, (i.sid, i.pgrp));
                }
                return inherit::open(f, src, &key);
            }
        }
    }
    let ty = pb::FdTypes::try_from(f.r#type).ok();
    let missing = || RestoreError::Image {
        what: "files.img".into(),
        source: format!("file id {} of type {:?} has no entry of its kind", f.id, ty).into(),
    };
    Ok(match ty {
        Some(pb::FdTypes::Reg) => {
            let r = f.reg.as_ref().ok_or_else(missing)?;
            reg::open(r, r.flags as i32, true, &p.ghosts)?.into()
        }
        Some(pb::FdTypes::Pipe) => p.pipes.open(f.pipe.as_ref().ok_or_else(missing)?)?,
        Some(pb::FdTypes::Fifo) => {
            let e = f.fifo.as_ref().ok_or_else(missing)?;
            p.fifos.open(p.dir, p.files, &p.ghosts, pid, fi.fd, e)?
        }
        Some(pb::FdTypes::Memfd) => memfd::open(p, f.memfd.as_ref().ok_or_else(missing)?)?,
        Some(pb::FdTypes::Tty) => {
            let e = f.tty.as_ref().ok_or_else(missing)?;
            let info = p.tty_infos.get(&e.tty_info_id);
            let regf = e.regf_id.and_then(|id| p.files.get(&id)?.reg.as_ref());
            let master = regf.is_some_and(|r| r.name.ends_with("ptmx"));
            match info {
                Some(i)
                    if master
                        || i.pty
                            .as_ref()
                            .is_some_and(|x| p.pty_masters.contains(&x.index)) =>
                {
                    if !master && i.sid != 0 {
                        p.out.cttys.insert(f.id, (i.sid, i.pgrp));
                    }
                    p.ptys.open(pid, fi.fd, e, i, master)?
                }
                _ => tty::open(pid, fi.fd, p.shell_job)?,
            }
        }
        Some(pb::FdTypes::Pidfd) => {
            let e = f.pidfd.as_ref().ok_or_else(missing)?;
            p.dead_pids.open(pid, fi.fd, e)?
        }
        Some(pb::FdTypes::Eventfd) => {
            eventfd::open(pid, fi.fd, f.efd.as_ref().ok_or_else(missing)?)?
        }
        Some(pb::FdTypes::Signalfd) => {
            signalfd::open(pid, fi.fd, f.sgfd.as_ref().ok_or_else(missing)?)?
        }
        Some(pb::FdTypes::Timerfd) => {
            timerfd::open(pid, fi.fd, f.tfd.as_ref().ok_or_else(missing)?)?
        }
        Some(pb::FdTypes::Inotify) => {
            inotify::open(pid, fi.fd, f.ify.as_ref().ok_or_else(missing)?)?
        }
        Some(pb::FdTypes::Fanotify) => {
            fanotify::open(pid, fi.fd, f.ffy.as_ref().ok_or_else(missing)?)?
        }
        Some(pb::FdTypes::Eventpoll) => {
            let e = f.epfd.as_ref().ok_or_else(missing)?;
            p.out.epolls.insert(f.id, e.tfd.clone());
            epoll::open(pid, fi.fd, e)?
        }
        Some(pb::FdTypes::Unixsk) => p.unix.open(p.dir, f.id).map_err(|e| RestoreError::State {
            pid,
            fd: fi.fd,
            kind: "unix socket",
            what: e.to_string(),
        })?,
        Some(pb::FdTypes::Inetsk) => {
            p.out
                .inet
                .open(p.dir, f.id)
                .map_err(|e| RestoreError::State {
                    pid,
                    fd: fi.fd,
                    kind: "inet socket",
                    what: e.to_string(),
                })?
        }
        // Sockets: the socket modules hook in here.
        _ => {
            let kind = ty
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|| format!("fd type {}", f.r#type));
            return Err(RestoreError::Unsupported {
                pid,
                fd: fi.fd,
                what: kind,
            });
        }
    })
}

/// Puts the task's fds in place and closes every other fd but `keep` (runs in the task).
pub fn install(
    pid: u32,
    fds: &[pb::FdinfoEntry],
    opened: &Opened,
    keep: &BTreeSet<RawFd>,
) -> Result<(), RestoreError> {
    let mut mine = keep.clone();
    for fi in fds {
        if opened.pidfds.contains_key(&fi.id) {
            continue; // opened by the task itself, below
        }
        let src = opened.fds.get(&fi.id).ok_or_else(|| RestoreError::NoFile {
            what: format!("task {pid} fd {}", fi.fd),
            id: fi.id,
        })?;
        let cloexec = if fi.flags & libc::FD_CLOEXEC as u32 != 0 {
            libc::O_CLOEXEC
        } else {
            0
        };
        // SAFETY: dup3 from an fd we hold to a target number above which all our own fds sit.
        if unsafe { libc::dup3(src.as_raw_fd(), fi.fd as i32, cloexec) } < 0 {
            return Err(sys("dup3 into place", &format!("task {pid} fd {}", fi.fd)));
        }
        mine.insert(fi.fd as i32);
    }
    mine.extend(super::pidfd::install_task(pid, fds, &opened.pidfds)?);
    // Post-install steps: descriptions that name other fds of the task by number, and owners
    // (which must exist: they are the task itself or tasks forked before it).
    for fi in fds {
        if let Some(o) = opened.fowns.get(&fi.id) {
            set_fown(pid, fi.fd, o)?;
        }
        if opened.asyncs.contains(&fi.id) {
            set_async(pid, fi.fd)?;
        }
        if let Some(&(sid, pgrp)) = opened.cttys.get(&fi.id) {
            pty::take_ctty(pid, fi.fd, sid, pgrp)?;
        }
        if let Some(tfds) = opened.epolls.get(&fi.id) {
            epoll::add_targets(pid, fi, tfds, fds, opened)?;
        }
    }
    let others: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| RestoreError::Sys {
            op: "read",
            path: "/proc/self/fd".into(),
            source: e,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|n| !mine.contains(n))
        .collect();
    for n in others {
        // SAFETY: closing an fd of this forked task that it must not keep; no Rust object in
        // this task uses it after this point (the caller only holds `opened`, which it leaks).
        unsafe { libc::close(n) };
    }
    // Locks last: closing any fd of a file drops the task's POSIX locks on it, so they are
    // taken only once the coordinator's copies are gone.
    super::locks::apply(pid, &opened.locks)?;
    Ok(())
}

/// O_ASYNC on fd `fd` of this task (after its owner: F_SETFL registers the description for
/// SIGIO then).
fn set_async(pid: u32, fd: u32) -> Result<(), RestoreError> {
    // SAFETY: fcntl F_GETFL/F_SETFL on an fd of this task, integer arguments only.
    let ok = unsafe {
        let fl = libc::fcntl(fd as i32, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd as i32, libc::F_SETFL, fl | libc::O_ASYNC) == 0
    };
    if !ok {
        return Err(RestoreError::State {
            pid,
            fd,
            kind: "fown",
            what: format!("setting O_ASYNC: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

/// F_SETSIG and F_SETOWN_EX on fd `fd` of this task.
fn set_fown(pid: u32, fd: u32, o: &pb::FownEntry) -> Result<(), RestoreError> {
    let ex = super::OwnerEx {
        type_: o.pid_type as i32,
        pid: o.pid as i32,
    };
    // SAFETY: fcntl on an fd of this task; F_SETOWN_EX reads a valid f_owner_ex.
    let ok = unsafe {
        libc::fcntl(fd as i32, super::F_SETSIG, o.signum as i32) == 0
            && (o.pid == 0 || libc::fcntl(fd as i32, super::F_SETOWN_EX, &ex) == 0)
    };
    if !ok {
        return Err(RestoreError::State {
            pid,
            fd,
            kind: "fown",
            what: format!(
                "owner {} (type {}) signal {}: {}",
                o.pid,
                o.pid_type,
                o.signum,
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}

//! Unix sockets, restore half: every `UNIXSK` entry of files.img is rebuilt at once, in the
//! coordinator, before any task is forked.
//!
//! Kernel mechanism: two sockets that name each other as peers are one `socketpair(2)`; a
//! connected socket whose peer is gone is one end of a socketpair whose other end is closed
//! once its data is queued (the kernel then reports EOF, or ECONNREFUSED for datagrams, as
//! before). Named sockets are `bind(2)`ed (a stale socket file nobody listens on is removed
//! first; a name that was unlinked is unlinked again once everything has connected through it),
//! listeners `listen(2)` with their backlog, every other connection is a `connect(2)` to its
//! peer's name (connections that were waiting in an accept queue land there again). Queued
//! bytes from sk-queues.img are then sent into each receiver's queue by the socket the kernel
//! lets send to it (its peer, a socket connected to it, or a throw-away socket by its name),
//! one `send` per datagram; then shutdown bits, options and file flags are set.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;

use ferry_images::{pb, ImageDir, ImageReader};

use super::{established_stream, USK_EXTERN};

/// Errors rebuilding unix sockets; each names the files.img id, the socket's inode and stage.
#[derive(Debug, thiserror::Error)]
pub enum UnixRestoreError {
    /// A syscall failed.
    #[error("unix socket id {id} (inode {ino}): restore: {stage}: {source}")]
    Sys {
        id: u32,
        ino: u32,
        stage: String,
        source: std::io::Error,
    },
    /// The images ask for something ferry cannot rebuild.
    #[error("unix socket id {id} (inode {ino}): restore: {what}")]
    Unsupported { id: u32, ino: u32, what: String },
    /// An image is unreadable.
    #[error("unix sockets: restore: reading {image}: {what}")]
    Image { image: &'static str, what: String },
}

type Result<T> = std::result::Result<T, UnixRestoreError>;

/// Every unix socket of the images, rebuilt, by files.img id.
#[derive(Debug, Default)]
pub struct Sockets {
    built: bool,
    fds: BTreeMap<u32, OwnedFd>,
    /// Socket files this restore created, removed again if it fails half-way.
    bound: Vec<std::path::PathBuf>,
    /// Messages that carry files (and the rest of their receivers' queues), sent once every
    /// file is open (see `super::scm::send_in_flight`).
    pub(crate) deferred: Vec<super::scm::Deferred>,
    /// What waits for those messages: shutdowns (id, inode, how) and names to unlink.
    post: (Vec<(u32, u32, i32)>, Vec<std::path::PathBuf>),
}

pub(super) fn sockaddr(name: &[u8]) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.is_empty() || name.len() > a.sun_path.len() {
        return None;
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    Some((a, (base + name.len()) as libc::socklen_t))
}

fn path_of(name: &[u8]) -> Option<&std::path::Path> {
    let n = name.split(|&b| b == 0).next()?;
    (name.first() != Some(&0) && !n.is_empty())
        .then(|| std::path::Path::new(std::ffi::OsStr::from_bytes(n)))
}

fn new_socket(ty: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let n = unsafe { libc::socket(libc::AF_UNIX, ty as i32 | libc::SOCK_CLOEXEC, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: n is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn pair(ty: u32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0i32; 2];
    // SAFETY: `sv` has room for two fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            ty as i32 | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn connect_to(fd: RawFd, name: &[u8]) -> std::io::Result<()> {
    let (a, len) = sockaddr(name).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) })
}

/// Removes a socket file left by the dumped tree; a live socket there is an error.
fn clear_stale(path: &std::path::Path, ty: u32, name: &[u8]) -> std::result::Result<(), String> {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !md.file_type().is_socket() {
        return Err(format!("{} exists and is not a socket", path.display()));
    }
    let probe = new_socket(ty).map_err(|e| e.to_string())?;
    match connect_to(probe.as_raw_fd(), name) {
        Ok(()) => Err(format!("{} is in use by a live socket", path.display())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .map_err(|e| format!("removing the stale socket file {}: {e}", path.display())),
        Err(e) => Err(format!("probing {}: {e}", path.display())),
    }
}

fn set_opts(fd: RawFd, o: &pb::SkOptsEntry, fresh: &pb::SkOptsEntry) -> std::io::Result<()> {
    let int = |opt, v: i32| -> std::io::Result<()> {
        // SAFETY: `v` is a c_int for the call's duration.
        check(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const i32).cast(), 4) })
    };
    // getsockopt reports twice what setsockopt was given; FORCE passes the limits like CRIU.
    if o.so_sndbuf != fresh.so_sndbuf {
        int(libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32)?;
    }
    if o.so_rcvbuf != fresh.so_rcvbuf {
        int(libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32)?;
    }
    if let Some(l) = o.so_buf_lock {
        int(libc::SO_BUF_LOCK, l as i32)?;
    }
    for (opt, sec, usec) in [
        (libc::SO_SNDTIMEO, o.so_snd_tmo_sec, o.so_snd_tmo_usec),
        (libc::SO_RCVTIMEO, o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
    ] {
        if sec != 0 || usec != 0 {
            let tv = libc::timeval {
                tv_sec: sec as libc::time_t,
                tv_usec: usec as libc::suseconds_t,
            };
            // SAFETY: `tv` is a timeval for the call's duration.
            check(unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
    }
    let flag = |opt, v: Option<bool>| match v {
        Some(true) => int(opt, 1),
        _ => Ok(()),
    };
    flag(libc::SO_REUSEADDR, o.reuseaddr)?;
    flag(libc::SO_PASSCRED, o.so_passcred)?;
    flag(libc::SO_PASSSEC, o.so_passsec)?;
    flag(libc::SO_DONTROUTE, o.so_dontroute)?;
    flag(libc::SO_KEEPALIVE, o.so_keepalive)?;
    flag(libc::SO_BROADCAST, o.so_broadcast)?;
    if let Some(p) = o.so_priority.filter(|p| *p != 0) {
        int(libc::SO_PRIORITY, p as i32)?;
    }
    if let Some(l) = o.so_rcvlowat.filter(|l| *l > 1) {
        int(libc::SO_RCVLOWAT, l as i32)?;
    }
    if let Some(m) = o.so_mark.filter(|m| *m != 0) {
        int(libc::SO_MARK, m as i32)?;
    }
    Ok(())
}

impl Sockets {
    /// A description for files.img id `id` (rebuilding every socket on first use).
    pub fn open(&mut self, dir: &ImageDir, id: u32) -> Result<OwnedFd> {
        if !self.built {
            let files: Vec<pb::FileEntry> =
                dir.read_entries("files.img")
                    .map_err(|e| UnixRestoreError::Image {
                        image: "files.img",
                        what: e.to_string(),
                    })?;
            if let Err(e) = self.build(dir, &files) {
                for p in self.bound.drain(..) {
                    let _ = std::fs::remove_file(p);
                }
                self.fds.clear();
                self.deferred.clear();
                self.post = Default::default();
                return Err(e);
            }
            self.built = true;
        }
        let fd = self.fds.get(&id).ok_or_else(|| UnixRestoreError::Image {
            image: "files.img",
            what: format!("file id {id} is not a unix socket ferry rebuilt"),
        })?;
        fd.try_clone().map_err(|source| UnixRestoreError::Sys {
            id,
            ino: 0,
            stage: "dup".into(),
            source,
        })
    }

    fn build(&mut self, dir: &ImageDir, files: &[pb::FileEntry]) -> Result<()> {
        let all: BTreeMap<u32, &pb::UnixSkEntry> = files
            .iter()
            .filter_map(|f| f.usk.as_ref())
            .map(|u| (u.id, u))
            .collect();
        let usk: BTreeMap<u32, &pb::UnixSkEntry> = all
            .iter()
            .filter(|(_, u)| u.uflags & USK_EXTERN == 0)
            .map(|(&i, &u)| (i, u))
            .collect();
        let by_ino: BTreeMap<u32, &pb::UnixSkEntry> = all.values().map(|u| (u.ino, *u)).collect();
        let sys = |u: &pb::UnixSkEntry, stage: &str| {
            let (id, ino, stage) = (u.id, u.ino, stage.to_string());
            move |source| UnixRestoreError::Sys {
                id,
                ino,
                stage,
                source,
            }
        };
        let unsupported = |u: &pb::UnixSkEntry, what: String| UnixRestoreError::Unsupported {
            id: u.id,
            ino: u.ino,
            what,
        };
        // Peers that point at each other.
        let mutual = |u: &pb::UnixSkEntry| {
            by_ino
                .get(&u.peer)
                .filter(|p| p.peer == u.ino && p.uflags & USK_EXTERN == 0 && p.ino != u.ino)
                .copied()
        };
        let mut partners: BTreeMap<u32, OwnedFd> = BTreeMap::new();
        let mut mates: BTreeMap<u32, u32> = BTreeMap::new();
        let mut fresh_opts = BTreeMap::new();
        for u in usk.values() {
            if self.fds.contains_key(&u.id) {
                continue;
            }
            let gone = u.peer == 0 && u.state == 1 && u.r#type != libc::SOCK_DGRAM as u32;
            if let Some(p) = mutual(u) {
                let (a, b) = pair(u.r#type).map_err(sys(u, "socketpair"))?;
                self.fds.insert(u.id, a);
                self.fds.insert(p.id, b);
                mates.insert(u.id, p.id);
                mates.insert(p.id, u.id);
            } else if gone {
                let (a, b) = pair(u.r#type).map_err(sys(u, "socketpair for a closed peer"))?;
                self.fds.insert(u.id, a);
                partners.insert(u.id, b);
            } else {
                self.fds
                    .insert(u.id, new_socket(u.r#type).map_err(sys(u, "socket"))?);
            }
        }
        for u in usk.values() {
            let fd = self.fds[&u.id].as_raw_fd();
            fresh_opts.insert(u.id, super::dump_opts(fd).map_err(sys(u, "getsockopt"))?);
        }
        // Names, then listeners, then connections by name.
        let mut unlink_after = Vec::new();
        for u in usk.values() {
            if u.name.is_empty() || established_stream(u) {
                continue;
            }
            let fd = self.fds[&u.id].as_raw_fd();
            let (a, len) = sockaddr(&u.name)
                .ok_or_else(|| unsupported(u, format!("name of {} bytes", u.name.len())))?;
            let path = path_of(&u.name);
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(unsupported(u, format!("relative name {}", p.display())));
                }
                if u.deleted == Some(true) && std::fs::symlink_metadata(p).is_ok() {
                    return Err(unsupported(
                        u,
                        format!(
                            "its unlinked name {} is taken by another file now",
                            p.display()
                        ),
                    ));
                }
                clear_stale(p, u.r#type, &u.name).map_err(|w| unsupported(u, w))?;
            }
            // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
            check(unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) })
                .map_err(sys(u, "bind"))?;
            if let Some(p) = path {
                self.bound.push(p.to_path_buf());
                if let Some(fp) = &u.file_perms {
                    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
                    // SAFETY: chmod/chown on a NUL-terminated path we own.
                    unsafe {
                        check(libc::chmod(c.as_ptr(), fp.mode & 0o7777))
                            .map_err(sys(u, "chmod"))?;
                        check(libc::chown(c.as_ptr(), fp.uid, fp.gid)).map_err(sys(u, "chown"))?;
                    }
                }
                if u.deleted == Some(true) {
                    unlink_after.push(p.to_path_buf());
                }
            }
            if u.state == 10 {
                // SAFETY: listen on a socket we own.
                check(unsafe { libc::listen(fd, u.backlog as i32) }).map_err(sys(u, "listen"))?;
            }
        }
        for u in usk.values() {
            if u.peer == 0 || mutual(u).is_some() {
                continue;
            }
            let p = by_ino.get(&u.peer).ok_or_else(|| {
                unsupported(
                    u,
                    format!("its peer inode {} has no entry in files.img", u.peer),
                )
            })?;
            if p.name.is_empty() {
                return Err(unsupported(
                    u,
                    format!("its peer inode {} has no name", u.peer),
                ));
            }
            connect_to(self.fds[&u.id].as_raw_fd(), &p.name).map_err(sys(u, "connect"))?;
        }
        for u in usk.values() {
            let fd = self.fds[&u.id].as_raw_fd();
            set_opts(fd, &u.opts, &fresh_opts[&u.id]).map_err(sys(u, "setsockopt"))?;
        }
        self.requeue(dir, &usk, &by_ino, &mates, &partners)?;
        for u in usk.values() {
            let how = match u.shutdown.unwrap_or(0) {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                3 => libc::SHUT_RDWR,
                _ => continue,
            };
            self.post.0.push((u.id, u.ino, how));
        }
        for u in usk.values() {
            let fd = self.fds[&u.id].as_raw_fd();
            let fl = u.flags as i32 & (libc::O_NONBLOCK | libc::O_ASYNC);
            // SAFETY: F_SETFL on a socket we own.
            check(unsafe { libc::fcntl(fd, libc::F_SETFL, fl) }).map_err(sys(u, "F_SETFL"))?;
        }
        self.post.1 = unlink_after;
        drop(partners);
        // Messages with files in flight wait for those files; what would stop them from being
        // sent waits for them.
        if self.deferred.is_empty() {
            self.finish_post()?;
        }
        Ok(())
    }

    /// Removes the socket files this restore bound (a later stage of the restore failed).
    pub(crate) fn remove_bound(&mut self) {
        for p in self.bound.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Shuts down what was shut down and unlinks what was unlinked, once every queued message
    /// is sent.
    pub(crate) fn finish_post(&mut self) -> Result<()> {
        for (id, ino, how) in std::mem::take(&mut self.post.0) {
            let Some(fd) = self.fds.get(&id) else {
                continue;
            };
            // SAFETY: shutdown on a socket we own.
            let r = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
            // A socket whose peer is gone may already be shut down (ENOTCONN): fine.
            if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTCONN) {
                return Err(UnixRestoreError::Sys {
                    id,
                    ino,
                    stage: "shutdown".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        for p in std::mem::take(&mut self.post.1) {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    fn requeue(
        &mut self,
        dir: &ImageDir,
        usk: &BTreeMap<u32, &pb::UnixSkEntry>,
        by_ino: &BTreeMap<u32, &pb::UnixSkEntry>,
        mates: &BTreeMap<u32, u32>,
        partners: &BTreeMap<u32, OwnedFd>,
    ) -> Result<()> {
        const IMG: &str = "sk-queues.img";
        if !dir.has(IMG) {
            return Ok(());
        }
        let ierr = |e: &dyn std::fmt::Display| UnixRestoreError::Image {
            image: IMG,
            what: e.to_string(),
        };
        let data = dir.read(IMG).map_err(|e| ierr(&e))?;
        let mut r = ImageReader::new(IMG, &data).map_err(|e| ierr(&e))?;
        let mut temps: BTreeMap<u32, OwnedFd> = BTreeMap::new();
        let mut packets = Vec::new();
        while let Some(e) = r.next_entry::<pb::SkPacketEntry>().map_err(|e| ierr(&e))? {
            let bytes = r
                .raw(u64::from(e.length), "queued data")
                .map_err(|e| ierr(&e))?;
            let rights = super::scm::rights_of(&e)
                .map_err(|w| ierr(&format!("queued data for socket id {}: {w}", e.id_for)))?;
            packets.push((e, bytes, rights));
        }
        // A receiver with files in flight gets its whole queue later, in order.
        let with_rights: std::collections::BTreeSet<u32> = packets
            .iter()
            .filter(|p| !p.2.is_empty())
            .map(|p| p.0.id_for)
            .collect();
        for (e, bytes, rights) in packets {
            let x = usk.get(&e.id_for).ok_or_else(|| {
                ierr(&format!(
                    "queued data for file id {}, which is no unix socket",
                    e.id_for
                ))
            })?;
            let stream = x.r#type == libc::SOCK_STREAM as u32;
            let stage = format!("re-queueing {} bytes", bytes.len());
            let serr = |source| UnixRestoreError::Sys {
                id: x.id,
                ino: x.ino,
                stage: stage.clone(),
                source,
            };
            // Who may send to x: its mate, its closed peer's stand-in, a socket connected to it
            // (if x is not connected elsewhere), or a throw-away socket sending to its name.
            let (fd, to): (RawFd, Option<&[u8]>) = if let Some(m) = mates.get(&x.id) {
                (self.fds[m].as_raw_fd(), None)
            } else if let Some(p) = partners.get(&x.id) {
                (p.as_raw_fd(), None)
            } else if let Some(p) = by_ino.get(&x.peer).filter(|p| p.uflags & USK_EXTERN == 0) {
                if x.name.is_empty() {
                    return Err(UnixRestoreError::Unsupported {
                        id: x.id,
                        ino: x.ino,
                        what: "data queued for an unnamed socket connected one way".into(),
                    });
                }
                (self.fds[&p.id].as_raw_fd(), Some(&x.name[..]))
            } else if let Some(s) = usk.values().find(|s| s.peer == x.ino && x.peer == 0) {
                (self.fds[&s.id].as_raw_fd(), None)
            } else if !x.name.is_empty() && x.peer == 0 && !stream {
                let t = match temps.get(&x.id) {
                    Some(t) => t.as_raw_fd(),
                    None => {
                        let t = new_socket(x.r#type).map_err(&serr)?;
                        let raw = t.as_raw_fd();
                        temps.insert(x.id, t);
                        raw
                    }
                };
                (t, Some(&x.name[..]))
            } else {
                return Err(UnixRestoreError::Unsupported {
                    id: x.id,
                    ino: x.ino,
                    what: "queued data with no socket that could send it again".into(),
                });
            };
            if with_rights.contains(&x.id) {
                // SAFETY: F_DUPFD_CLOEXEC on an fd we hold; the result is a new fd we own.
                let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
                if n < 0 {
                    return Err(serr(std::io::Error::last_os_error()));
                }
                self.deferred.push(super::scm::Deferred {
                    // SAFETY: n is a fresh fd we own.
                    sender: unsafe { OwnedFd::from_raw_fd(n) },
                    to: to.map(<[u8]>::to_vec),
                    receiver: x.id,
                    stream,
                    rights,
                    data: bytes.to_vec(),
                });
                continue;
            }
            super::queue::send_msg(fd, bytes, &[], to, stream).map_err(serr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_paths_and_abstract_names() {
        let (_, len) = sockaddr(b"/tmp/x").unwrap();
        assert_eq!(len as usize, 2 + 6);
        let (a, len) = sockaddr(b"\0abs").unwrap();
        assert_eq!(len as usize, 2 + 4);
        assert_eq!(a.sun_path[0], 0);
        assert!(sockaddr(&[b'a'; 200]).is_none());
        assert_eq!(path_of(b"/tmp/x").unwrap(), std::path::Path::new("/tmp/x"));
        assert!(path_of(b"\0abs").is_none());
    }
}

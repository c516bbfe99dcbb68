//! Unix sockets (files.img `UNIXSK` entries + sk-queues.img): dump half; the restore half is
//! in `unix_restore`.
//!
//! Kernel mechanism: sock_diag (`unix_diag`) names every unix socket of the namespace with its
//! type, state, peer inode, bound name, socket-file inode, accept-queue inodes, queue lengths and
//! shutdown bits, so pairs and connections are matched by inode across the whole tree. The
//! queued bytes are read without being consumed: ferry takes its own copy of the socket with
//! `pidfd_getfd` (the same open file description) and `recvmsg(MSG_PEEK)`s it, moving
//! `SO_PEEK_OFF` along the queue (saved and put back afterwards), one sk-queues entry per
//! datagram or one per stream queue, each followed by its raw bytes, as CRIU writes them.
//! A socket whose peer is outside the tree is refused (datagram sockets connected to a named
//! socket pass with `--ext-unix-sk`, which records the peer as an external entry to reconnect
//! to by name); a connection still in a listener's accept queue is recorded as a connection to
//! the listener (CRIU's rule), so restore connects it again.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;

use ferry_images::{pb, ImageDir};

use super::dump::{Fd, FileTable, FilesError};

#[path = "unix_diag.rs"]
pub mod diag;
#[path = "unix_queue.rs"]
pub mod queue;
#[path = "unix_restore.rs"]
pub mod restore;
#[path = "unix_scm.rs"]
pub mod scm;

pub use queue::peek_queue;

use diag as unix_diag;
use diag::SkDiag;

/// `uflags` bit of an entry for a socket outside the tree.
pub const USK_EXTERN: u32 = 1;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;

/// Errors of the unix socket dump; each names the task, fd, inode and stage.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    /// sock_diag could not be asked.
    #[error("task {pid}: dump: listing unix sockets through sock_diag: {source}")]
    Diag { pid: i32, source: std::io::Error },
    /// The socket is not a unix socket.
    #[error("task {pid}: fd {fd}: socket inode {ino} is not a unix socket; only unix sockets are dumped yet")]
    NotUnix { pid: i32, fd: i32, ino: u64 },
    /// Something ferry does not dump.
    #[error("task {pid}: fd {fd}: unix socket inode {ino}: dump: unsupported: {what}")]
    Unsupported {
        pid: i32,
        fd: i32,
        ino: u32,
        what: String,
    },
    /// A syscall on the socket failed.
    #[error("task {pid}: fd {fd}: unix socket inode {ino}: dump: {op}: {source}")]
    Sys {
        pid: i32,
        fd: i32,
        ino: u32,
        op: &'static str,
        source: std::io::Error,
    },
    /// sk-queues.img could not be written.
    #[error("dump: writing sk-queues.img: {0}")]
    Image(String),
    /// A file in flight (SCM_RIGHTS) in the socket's queue ferry cannot dump.
    #[error("task {pid}: fd {fd}: unix socket inode {ino}: dump: {what}")]
    InFlight {
        pid: i32,
        fd: i32,
        ino: u32,
        what: String,
    },
    /// The peer is outside the dumped tree.
    #[error("task {pid}: fd {fd}: unix socket inode {ino} is connected to socket inode {peer} outside the dumped tree{hint}")]
    External {
        pid: i32,
        fd: i32,
        ino: u32,
        peer: u32,
        hint: &'static str,
    },
}

type Result<T> = std::result::Result<T, UnixError>;

/// One sk-queues.img entry and the bytes that follow it.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The entry (`id_for` is the receiving socket's files.img id).
    pub entry: pb::SkPacketEntry,
    /// The queued bytes.
    pub data: Vec<u8>,
    /// Files in flight with them: indexes in [`UnixDump::flight`], turned into the entry's
    /// `scm` once they are dumped.
    pub rights: Vec<usize>,
}

#[derive(Debug)]
struct Rec {
    pid: i32,
    fd: i32,
    id: u32,
    diag: SkDiag,
}

/// Unix socket state of one dump, shared by every task of the tree.
#[derive(Debug, Default)]
pub struct UnixDump {
    /// sock_diag tables by network namespace inode.
    nets: HashMap<u64, HashMap<u32, SkDiag>>,
    socks: Vec<Rec>,
    /// Queued data for sk-queues.img, in dump order.
    pub queues: Vec<Queued>,
    /// Descriptions in flight in the queues, held by ferry until the dump ends.
    pub flight: Vec<scm::Flight>,
    /// fds in flight seen so far (a description passed twice counts twice).
    refs: usize,
    /// While a file in flight is dumped: the task, fd and socket inode whose queue holds it
    /// (its network namespace and root are the task's, its errors name them).
    ctx: Option<(i32, i32, u32)>,
}

fn getopt<T: Copy + Default>(fd: RawFd, level: i32, opt: i32) -> std::io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is a plain value of `len` bytes owned here.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut T).cast(), &mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn setopt<T>(fd: RawFd, level: i32, opt: i32, v: &T) -> std::io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` points to a valid value of `len` bytes.
    let r = unsafe { libc::setsockopt(fd, level, opt, (v as *const T).cast(), len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Socket options as CRIU records them (buffer sizes as getsockopt reports them: doubled).
pub fn dump_opts(fd: RawFd) -> std::io::Result<pb::SkOptsEntry> {
    let int = |opt| getopt::<libc::c_int>(fd, libc::SOL_SOCKET, opt);
    let tv = |opt| getopt::<libc::timeval>(fd, libc::SOL_SOCKET, opt);
    let (snd, rcv) = (tv(libc::SO_SNDTIMEO)?, tv(libc::SO_RCVTIMEO)?);
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd.tv_sec as u64,
        so_snd_tmo_usec: snd.tv_usec as u64,
        so_rcv_tmo_sec: rcv.tv_sec as u64,
        so_rcv_tmo_usec: rcv.tv_usec as u64,
        reuseaddr: Some(int(libc::SO_REUSEADDR)? != 0),
        so_priority: Some(int(libc::SO_PRIORITY)? as u32),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT)? as u32),
        so_mark: Some(int(libc::SO_MARK)? as u32).filter(|m| *m != 0),
        so_passcred: Some(int(libc::SO_PASSCRED)? != 0),
        so_passsec: Some(int(libc::SO_PASSSEC)? != 0),
        so_dontroute: Some(int(libc::SO_DONTROUTE)? != 0),
        so_no_check: Some(int(libc::SO_NO_CHECK)? != 0),
        so_reuseport: Some(int(libc::SO_REUSEPORT)? != 0),
        so_broadcast: Some(int(libc::SO_BROADCAST)? != 0),
        so_keepalive: Some(int(libc::SO_KEEPALIVE)? != 0),
        so_oobinline: Some(int(libc::SO_OOBINLINE)? as u32),
        so_buf_lock: Some(int(libc::SO_BUF_LOCK)? as u32),
        ..Default::default()
    })
}

/// sk_shutdown bits to the image's enum (RCV_SHUTDOWN = READ, SEND_SHUTDOWN = WRITE).
pub fn encode_shutdown(bits: u8) -> Option<i32> {
    (bits & 3 != 0).then_some(i32::from(bits & 3))
}

/// The kernel's dev_t (MAJOR << 20 | MINOR) against a stat dev.
fn same_dev(kdev: u32, st_dev: u64) -> bool {
    libc::major(st_dev) == kdev >> 20 && libc::minor(st_dev) == kdev & 0xfffff
}

impl UnixDump {
    /// The task whose namespaces hold what ferry's own fd `pid` refers to (a file in flight is
    /// looked at through the task that holds its queue).
    fn ns_pid(&self, pid: i32) -> i32 {
        match self.ctx {
            Some((owner, _, _)) if pid == std::process::id() as i32 => owner,
            _ => pid,
        }
    }

    fn table(&mut self, pid: i32) -> Result<&HashMap<u32, SkDiag>> {
        let pid = self.ns_pid(pid);
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino())
            .map_err(|source| UnixError::Diag { pid, source })?;
        match self.nets.entry(ns) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let t =
                    unix_diag::collect(pid).map_err(|source| UnixError::Diag { pid, source })?;
                Ok(e.insert(t))
            }
        }
    }

    /// Whether `ino` is a unix socket of `pid`'s network namespace.
    pub fn is_unix(&mut self, pid: i32, ino: u64) -> Result<bool> {
        let Ok(i) = u32::try_from(ino) else {
            return Ok(false);
        };
        Ok(self.table(pid)?.contains_key(&i))
    }

    /// The files.img entry of socket `fd` of `pid` (a new open file description, id `id`,
    /// file flags `flags`); its queued data goes to `self.queues`.
    pub fn dump_fd(
        &mut self,
        pid: i32,
        fd: i32,
        id: u32,
        ino: u64,
        flags: u32,
    ) -> Result<pb::UnixSkEntry> {
        let d = u32::try_from(ino)
            .ok()
            .and_then(|i| self.table(pid).ok()?.get(&i).cloned())
            .ok_or(UnixError::NotUnix { pid, fd, ino })?;
        let ino = d.ino;
        // A file in flight answers for the task whose queue holds it.
        let (src_pid, src_fd) = (pid, fd);
        let (pid, fd) = match self.ctx {
            Some((p, f, _)) if pid == std::process::id() as i32 => (p, f),
            _ => (pid, fd),
        };
        let unsupported = |what: String| UnixError::Unsupported { pid, fd, ino, what };
        let sys = |op| {
            move |source| UnixError::Sys {
                pid,
                fd,
                ino,
                op,
                source,
            }
        };
        let name = d.name.clone().unwrap_or_default();
        let (mut deleted, mut perms) = (None, None);
        if !name.is_empty() && name[0] != 0 {
            if name[0] != b'/' {
                return Err(unsupported(format!(
                    "bound to the relative path {:?} (resolving it needs the binder's cwd)",
                    String::from_utf8_lossy(&name)
                )));
            }
            let bare = name.split(|&b| b == 0).next().unwrap_or_default();
            let path = format!(
                "/proc/{}/root{}",
                self.ns_pid(src_pid),
                String::from_utf8_lossy(bare)
            );
            let live = std::fs::symlink_metadata(&path).ok().filter(|m| {
                d.vfs
                    .is_some_and(|(dev, i)| u64::from(i) == m.ino() && same_dev(dev, m.dev()))
            });
            match live {
                Some(m) => {
                    perms = Some(pb::FilePermsEntry {
                        mode: m.mode(),
                        uid: m.uid(),
                        gid: m.gid(),
                    })
                }
                None => deleted = Some(true),
            }
        }
        let sk = super::borrow(src_pid, src_fd).map_err(sys("pidfd_getfd"))?;
        let opts = dump_opts(sk.as_raw_fd()).map_err(sys("getsockopt"))?;
        if d.state != TCP_LISTEN {
            let queue = peek_queue(&sk, d.ty).map_err(unsupported)?;
            let owner = self.ctx.unwrap_or((pid, fd, ino));
            for p in queue {
                let rights = self.hold(owner, p.rights)?;
                self.queues.push(Queued {
                    entry: pb::SkPacketEntry {
                        id_for: id,
                        length: p.data.len() as u32,
                        scm: Vec::new(),
                    },
                    data: p.data,
                    rights,
                });
            }
        }
        let e = pb::UnixSkEntry {
            id,
            ino,
            r#type: d.ty,
            state: d.state,
            flags,
            uflags: 0,
            backlog: d.wqlen,
            peer: d.peer,
            fown: pb::FownEntry::default(),
            opts,
            name,
            shutdown: encode_shutdown(d.shutdown),
            file_perms: perms,
            name_dir: None,
            deleted,
            ns_id: None,
            mnt_id: None,
        };
        self.socks.push(Rec {
            pid,
            fd,
            id,
            diag: d,
        });
        Ok(e)
    }

    fn find(&self, ino: u32) -> Option<&SkDiag> {
        self.nets.values().find_map(|t| t.get(&ino))
    }

    /// Tree-wide checks once every task is dumped: each peer is in the tree, a connection
    /// pending in a listener's queue, or (`ext_unix_sk`, datagram) an external named socket,
    /// which gets an entry of its own in `files`.
    pub fn finish(&mut self, files: &mut Vec<pb::FileEntry>, ext_unix_sk: bool) -> Result<()> {
        let ours: HashMap<u32, &Rec> = self.socks.iter().map(|r| (r.diag.ino, r)).collect();
        // A connection not accepted yet: its server end (an embryo) has no inode, so the client
        // reports no peer, and the listener lists the client's inode among its icons. Bytes the
        // client already sent into it are still charged to the client's write memory.
        let mut pending: HashMap<u32, (u32, bool)> = HashMap::new(); // client -> (listener, ours)
        for t in self.nets.values() {
            for l in t.values().filter(|l| l.state == TCP_LISTEN) {
                for &c in &l.icons {
                    pending.insert(c, (l.ino, ours.contains_key(&l.ino)));
                }
            }
        }
        for r in &self.socks {
            for &c in &r.diag.icons {
                let err = |what: String| UnixError::Unsupported {
                    pid: r.pid,
                    fd: r.fd,
                    ino: r.diag.ino,
                    what,
                };
                let Some(cl) = ours.get(&c) else {
                    return Err(err(format!(
                        "its accept queue holds a connection from socket {c} outside the tree"
                    )));
                };
                if cl.diag.wqlen != 0 {
                    return Err(err(format!(
                        "the client (task {} fd {}) of a connection in its accept queue already \
                         sent {} bytes into it",
                        cl.pid, cl.fd, cl.diag.wqlen
                    )));
                }
            }
        }
        let mut peer_fix: Vec<(u32, u32)> = Vec::new();
        let mut ext: HashMap<u32, u32> = HashMap::new();
        let mut next = files.iter().map(|f| f.id).max().unwrap_or(0) + 1;
        let mut new_entries = Vec::new();
        for r in &self.socks {
            let d = &r.diag;
            let (pid, fd, ino) = (r.pid, r.fd, d.ino);
            if d.peer == 0 {
                match pending.get(&ino) {
                    Some(&(l, true)) => peer_fix.push((r.id, l)),
                    Some(&(l, false)) => {
                        return Err(UnixError::External {
                            pid,
                            fd,
                            ino,
                            peer: l,
                            hint: " (a listener that has not accepted the connection yet; --ext-unix-sk covers only datagram sockets)",
                        })
                    }
                    None => {}
                }
                continue;
            }
            if let Some(p) = ours.get(&d.peer) {
                if p.diag.peer != ino && p.diag.name.as_ref().is_none_or(|n| n.is_empty()) {
                    return Err(UnixError::Unsupported {
                        pid,
                        fd,
                        ino,
                        what: format!(
                            "connected to unnamed socket {} that is not connected back",
                            d.peer
                        ),
                    });
                }
                continue;
            }
            let peer = self.find(d.peer).cloned();
            let named = peer
                .as_ref()
                .and_then(|p| p.name.clone())
                .filter(|n| !n.is_empty());
            let dgram = d.ty == libc::SOCK_DGRAM as u32;
            match (ext_unix_sk, dgram, named) {
                (true, true, Some(name)) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = ext.entry(d.peer) {
                        e.insert(next);
                        new_entries.push(external_entry(next, &peer.unwrap_or_default(), name));
                        next += 1;
                    }
                }
                _ => {
                    return Err(UnixError::External {
                        pid,
                        fd,
                        ino,
                        peer: d.peer,
                        hint: if !ext_unix_sk {
                            " (use --ext-unix-sk for datagram sockets connected to a named socket)"
                        } else {
                            " (--ext-unix-sk covers only datagram sockets connected to a named socket)"
                        },
                    })
                }
            }
        }
        for (id, l) in peer_fix {
            if let Some(u) = files
                .iter_mut()
                .find(|f| f.id == id)
                .and_then(|f| f.usk.as_mut())
            {
                u.peer = l;
            }
        }
        files.extend(new_entries);
        Ok(())
    }

    /// Writes sk-queues.img (each entry followed by its bytes), if anything is queued.
    pub fn write(&self, dir: &ImageDir) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| UnixError::Image(e.to_string());
        let mut w = dir.writer("sk-queues.img").map_err(|e| err(&e))?;
        for q in &self.queues {
            w.write_entry(&q.entry).map_err(|e| err(&e))?;
            w.write_raw(&q.data).map_err(|e| err(&e))?;
        }
        let f = w.finish().map_err(|e| err(&e))?;
        let f = f.into_inner().map_err(|e| err(&e.into_error()))?;
        f.sync_all().map_err(|e| err(&e))
    }
}

fn external_entry(id: u32, p: &SkDiag, name: Vec<u8>) -> pb::FileEntry {
    pb::FileEntry {
        r#type: pb::FdTypes::Unixsk as i32,
        id,
        usk: Some(pb::UnixSkEntry {
            id,
            ino: p.ino,
            r#type: p.ty,
            state: p.state,
            flags: 0,
            uflags: USK_EXTERN,
            backlog: 0,
            peer: 0,
            fown: pb::FownEntry::default(),
            opts: pb::SkOptsEntry::default(),
            name,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The files.img entry of a socket fd seen for the first time (the dump dispatcher's arm).
pub fn dump(t: &mut FileTable, fd: &Fd) -> std::result::Result<pb::FileEntry, FilesError> {
    let ino = fd.md.ino();
    if !t.unix.is_unix(fd.pid, ino)? {
        return Err(UnixError::NotUnix {
            pid: fd.pid,
            fd: fd.fd,
            ino,
        }
        .into());
    }
    let id = t.next_id();
    let mut usk = t.unix.dump_fd(fd.pid, fd.fd, id, ino, fd.flags)?;
    usk.fown = fd.fown;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Unixsk as i32,
        id,
        usk: Some(usk),
        ..Default::default()
    })
}

impl FileTable {
    /// Tree-wide unix socket checks, once every task's fds are dumped and before files.img is
    /// written (see [`UnixDump::finish`]).
    pub fn finish_unix(&mut self, ext_unix_sk: bool) -> std::result::Result<(), FilesError> {
        self.dump_in_flight()?;
        Ok(self.unix.finish(&mut self.entries, ext_unix_sk)?)
    }
}

/// Whether an entry is a connected stream-like socket (its name, if any, is its listener's:
/// the kernel cannot bind it twice, so restore leaves it unnamed, as CRIU does).
pub fn established_stream(u: &pb::UnixSkEntry) -> bool {
    u.state == TCP_ESTABLISHED && u.r#type != libc::SOCK_DGRAM as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_bits_map_to_the_image_enum() {
        assert_eq!(encode_shutdown(0), None);
        assert_eq!(encode_shutdown(1), Some(pb::SkShutdown::Read as i32));
        assert_eq!(encode_shutdown(2), Some(pb::SkShutdown::Write as i32));
        assert_eq!(encode_shutdown(3), Some(pb::SkShutdown::Both as i32));
    }
}

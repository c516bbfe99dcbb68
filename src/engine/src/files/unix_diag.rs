//! The kernel's view of every unix socket of a network namespace, through sock_diag.
//!
//! A `SOCK_DIAG_BY_FAMILY` dump request for `AF_UNIX` on a `NETLINK_SOCK_DIAG` socket answers one
//! `unix_diag_msg` (type, state, inode) per socket of the namespace the netlink socket was
//! created in, followed by the attributes asked for: `UNIX_DIAG_NAME` (the bound address),
//! `UNIX_DIAG_VFS` (device and inode of the socket file a path name was bound to),
//! `UNIX_DIAG_PEER` (the peer's inode), `UNIX_DIAG_ICONS` (inodes of connections waiting in a
//! listener's accept queue), `UNIX_DIAG_RQLEN` (bytes queued for reading, or for a listener the
//! number of pending connections and the backlog) and `UNIX_DIAG_SHUTDOWN` (`sk_shutdown` bits).
//! The netlink socket is opened from a helper thread that first `setns`es into the task's network
//! namespace, so a tree in a namespace of its own is seen as it sees itself.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One unix socket as sock_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkDiag {
    /// Socket inode.
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub ty: u32,
    /// TCP_ESTABLISHED, TCP_CLOSE or TCP_LISTEN.
    pub state: u32,
    /// Peer inode (0: none, or the peer is gone).
    pub peer: u32,
    /// Inodes of the connections in a listener's accept queue, in queue order.
    pub icons: Vec<u32>,
    /// Bytes to read (listener: pending connections).
    pub rqlen: u32,
    /// Bytes sent and not yet read (listener: the backlog).
    pub wqlen: u32,
    /// Bound address: a path, or a leading NUL then an abstract name.
    pub name: Option<Vec<u8>>,
    /// (device, inode) of the socket file a path name was bound to.
    pub vfs: Option<(u32, u32)>,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2) bits.
    pub shutdown: u8,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const NLMSG_HDR: usize = 16;
const UDIAG_MSG: usize = 16;

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

/// The request: every state, every attribute ferry needs.
fn request() -> Vec<u8> {
    let len = (NLMSG_HDR + 24) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.push(libc::AF_UNIX as u8);
    m.push(0); // protocol
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    m.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS;
    m.extend_from_slice(&(show | UDIAG_SHOW_RQLEN).to_ne_bytes());
    m.extend_from_slice(&[0xff; 8]); // no cookie
    m
}

/// Parses one `unix_diag_msg` payload with its attributes.
pub fn parse_msg(p: &[u8]) -> Option<SkDiag> {
    let mut d = SkDiag {
        ty: u32::from(*p.get(1)?),
        state: u32::from(*p.get(2)?),
        ino: u32_at(p, 4)?,
        ..Default::default()
    };
    let mut o = UDIAG_MSG;
    while o + 4 <= p.len() {
        let len = usize::from(u16_at(p, o)?);
        let ty = u16_at(p, o + 2)? & 0x3fff;
        if len < 4 || o + len > p.len() {
            return None;
        }
        let v = &p[o + 4..o + len];
        match ty {
            UNIX_DIAG_NAME => d.name = Some(v.to_vec()),
            UNIX_DIAG_VFS => d.vfs = Some((u32_at(v, 4)?, u32_at(v, 0)?)),
            UNIX_DIAG_PEER => d.peer = u32_at(v, 0)?,
            UNIX_DIAG_ICONS => d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN => {
                d.rqlen = u32_at(v, 0)?;
                d.wqlen = u32_at(v, 4)?;
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = *v.first()?,
            _ => {}
        }
        o += len.next_multiple_of(4);
    }
    Some(d)
}

/// Runs the dump on `sk` and collects the answers by inode.
fn dump_on(sk: &OwnedFd) -> std::io::Result<HashMap<u32, SkDiag>> {
    let req = request();
    // SAFETY: sending a fully initialised buffer on a netlink socket we own.
    if unsafe { libc::send(sk.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, within its length.
        let n = unsafe { libc::recv(sk.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let b = &buf[..n as usize];
        let mut o = 0;
        while o + NLMSG_HDR <= b.len() {
            let len = u32_at(b, o).unwrap_or(0) as usize;
            let ty = u16_at(b, o + 4).unwrap_or(0);
            if len < NLMSG_HDR || o + len > b.len() {
                return Err(std::io::Error::other("truncated sock_diag message"));
            }
            match i32::from(ty) {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let e = u32_at(b, o + NLMSG_HDR).unwrap_or(0) as i32;
                    return Err(std::io::Error::from_raw_os_error(-e));
                }
                _ => {
                    let d = parse_msg(&b[o + NLMSG_HDR..o + len])
                        .ok_or_else(|| std::io::Error::other("malformed unix_diag_msg"))?;
                    out.insert(d.ino, d);
                }
            }
            o += len.next_multiple_of(4);
        }
    }
}

fn netlink() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Every unix socket of the network namespace `pid` lives in, by inode.
pub fn collect(pid: i32) -> std::io::Result<HashMap<u32, SkDiag>> {
    let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let theirs = format!("/proc/{pid}/ns/net");
    if ns(&theirs)? == ns("/proc/thread-self/ns/net")? {
        return dump_on(&netlink()?);
    }
    // setns(CLONE_NEWNET) changes only the calling thread, and a netlink socket keeps the
    // namespace it was made in: a short-lived thread makes it there.
    let nsf = std::fs::File::open(&theirs)?;
    let sk = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        // SAFETY: setns on an fd we hold, in a thread that does nothing else afterwards.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        netlink()
    })
    .join()
    .map_err(|_| std::io::Error::other("sock_diag helper thread panicked"))??;
    dump_on(&sk)
}

/// A copy of fd `fd` of task `pid` (the same open file description), by pidfd_getfd.
pub fn take_fd(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags only.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd is fresh and ours.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd duplicates the target's fd into ours; no memory is passed.
    let n = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: n is a fresh fd of this process.
    Ok(unsafe { OwnedFd::from_raw_fd(n as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_socketpair_with_its_queue() {
        let mut sv = [0i32; 2];
        // SAFETY: room for two fds.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: fresh fds we own.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        // SAFETY: writing 3 bytes from a static buffer.
        let n = unsafe { libc::write(a.as_raw_fd(), b"abc".as_ptr().cast(), 3) };
        assert_eq!(n, 3);
        // SAFETY: shutdown on our own socket.
        assert_eq!(unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_WR) }, 0);
        let ino = |f: &OwnedFd| {
            let md = std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
            std::os::unix::fs::MetadataExt::ino(&md) as u32
        };
        let all = collect(std::process::id() as i32).unwrap();
        let (ia, ib) = (ino(&a), ino(&b));
        let (da, db) = (&all[&ia], &all[&ib]);
        assert_eq!((da.peer, db.peer), (ib, ia));
        assert_eq!(da.ty, libc::SOCK_STREAM as u32);
        assert_eq!(db.rqlen, 3);
        assert_eq!((da.shutdown, db.shutdown), (2, 1));
    }

    #[test]
    fn rejects_a_short_attribute() {
        let mut p = vec![
            libc::AF_UNIX as u8,
            1,
            1,
            0,
            7,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        p.extend_from_slice(&[40, 0, 2, 0, 1, 2]);
        assert!(parse_msg(&p).is_none());
    }
}

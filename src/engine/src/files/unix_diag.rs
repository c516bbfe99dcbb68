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

use crate::files::sock_diag::{self, u16_at, u32_at, NLMSG_HDR, SOCK_DIAG_BY_FAMILY};

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
const UDIAG_MSG: usize = 16;

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

/// Every unix socket of the network namespace `pid` lives in, by inode.
pub fn collect(pid: i32) -> std::io::Result<HashMap<u32, SkDiag>> {
    let sk = sock_diag::socket_of(pid)?;
    let mut out = HashMap::new();
    sock_diag::dump(&sk, &request(), "sock_diag", |m| {
        let d = parse_msg(m).ok_or_else(|| std::io::Error::other("malformed unix_diag_msg"))?;
        out.insert(d.ino, d);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

//! The kernel's view of the TCP and UDP sockets of a network namespace, through sock_diag.
//!
//! A `SOCK_DIAG_BY_FAMILY` dump request (`inet_diag_req_v2`) for one family (`AF_INET`,
//! `AF_INET6`) and one protocol (`IPPROTO_TCP`, `IPPROTO_UDP`) on a `NETLINK_SOCK_DIAG` socket
//! answers one `inet_diag_msg` per socket of the namespace the netlink socket was made in:
//! state, source and destination address and port (network byte order), the receive and
//! write queue lengths (for a listener: connections waiting in its accept queue, and its
//! backlog) and the socket inode, followed by attributes, among them `INET_DIAG_SHUTDOWN`
//! (`sk_shutdown` bits). A short-lived helper thread `setns`es into the task's namespace to
//! make the netlink socket there, so a tree in its own namespace is seen as it sees itself.

use std::collections::HashMap;

use crate::files::sock_diag::{self, u16_at, u32_at, NLMSG_HDR, SOCK_DIAG_BY_FAMILY};

/// One TCP or UDP socket as inet_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InetDiag {
    /// AF_INET or AF_INET6.
    pub family: u8,
    /// TCP state number (UDP: 7 unconnected, 1 connected).
    pub state: u8,
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// Source address, as the kernel stores it (network order words; IPv4 uses the first).
    pub src: [u32; 4],
    /// Destination address.
    pub dst: [u32; 4],
    /// Receive queue (listener: accept queue length).
    pub rqueue: u32,
    /// Write queue (listener: backlog).
    pub wqueue: u32,
    /// Socket inode.
    pub ino: u32,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2) bits.
    pub shutdown: u8,
}

const INET_DIAG_SHUTDOWN: u16 = 8;
const DIAG_MSG: usize = 72;

/// The request: every state of one family and protocol.
fn request(family: u8, proto: u8) -> Vec<u8> {
    let len = (NLMSG_HDR + 56) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.extend_from_slice(&[family, proto, 0, 0]); // family, protocol, ext, pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    m.extend_from_slice(&[0; 48]); // any socket id
    m
}

/// Parses one `inet_diag_msg` payload with its attributes.
pub fn parse_msg(p: &[u8]) -> Option<InetDiag> {
    if p.len() < DIAG_MSG {
        return None;
    }
    let be16 = |o: usize| Some(u16::from_be_bytes(p.get(o..o + 2)?.try_into().ok()?));
    let addr = |o: usize| -> Option<[u32; 4]> {
        Some([
            u32_at(p, o)?,
            u32_at(p, o + 4)?,
            u32_at(p, o + 8)?,
            u32_at(p, o + 12)?,
        ])
    };
    let mut d = InetDiag {
        family: p[0],
        state: p[1],
        sport: be16(4)?,
        dport: be16(6)?,
        src: addr(8)?,
        dst: addr(24)?,
        rqueue: u32_at(p, 56)?,
        wqueue: u32_at(p, 60)?,
        ino: u32_at(p, 68)?,
        shutdown: 0,
    };
    let mut o = DIAG_MSG;
    while o + 4 <= p.len() {
        let len = usize::from(u16_at(p, o)?);
        let ty = u16_at(p, o + 2)? & 0x3fff;
        if len < 4 || o + len > p.len() {
            return None;
        }
        if ty == INET_DIAG_SHUTDOWN {
            d.shutdown = *p.get(o + 4)?;
        }
        o += len.next_multiple_of(4);
    }
    Some(d)
}

/// Every TCP and UDP socket (IPv4 and IPv6) of the network namespace `pid` lives in, by inode
/// (inode 0 ones, time-wait and request minisocks, left out).
pub fn collect(pid: i32) -> std::io::Result<HashMap<u32, InetDiag>> {
    let sk = sock_diag::socket_of(pid)?;
    let mut out = HashMap::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            sock_diag::dump(&sk, &request(family, proto), "inet_diag", |m| {
                let d =
                    parse_msg(m).ok_or_else(|| std::io::Error::other("malformed inet_diag_msg"))?;
                if d.ino != 0 {
                    out.insert(d.ino, d);
                }
                Ok(())
            })?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: i32) -> u32 {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino() as u32
    }

    #[test]
    fn sees_listener_connection_and_udp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let u = UdpSocket::bind("[::1]:0").unwrap();
        let all = collect(std::process::id() as i32).unwrap();
        let dl = &all[&ino(l.as_raw_fd())];
        assert_eq!(dl.state, 10);
        assert_eq!(dl.sport, l.local_addr().unwrap().port());
        assert_eq!(dl.src[0].to_ne_bytes(), [127, 0, 0, 1]);
        let dc = &all[&ino(c.as_raw_fd())];
        assert_eq!((dc.state, dc.dport), (1, dl.sport));
        assert_eq!(all[&ino(s.as_raw_fd())].sport, dl.sport);
        let du = &all[&ino(u.as_raw_fd())];
        assert_eq!(du.family, libc::AF_INET6 as u8);
        assert_eq!(du.src[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn rejects_a_short_message() {
        assert!(parse_msg(&[2, 1, 0, 0]).is_none());
    }
}

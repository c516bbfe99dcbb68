//! A minimal rtnetlink client: list links, create a veth pair, set link attributes.
//!
//! A `NETLINK_ROUTE` socket talks to the network namespace it was created in, so every
//! caller makes one on a thread that has entered the target namespace. Messages are
//! `nlmsghdr` + `ifinfomsg` + 4-byte aligned attributes (`rtattr`), built and parsed here by
//! hand; nested attributes (`IFLA_LINKINFO`) carry the link kind.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

/// `IFLA_ADDRESS`.
pub const IFLA_ADDRESS: u16 = 1;
/// `IFLA_IFNAME`.
pub const IFLA_IFNAME: u16 = 3;
/// `IFLA_MTU`.
pub const IFLA_MTU: u16 = 4;
/// `IFLA_LINK`.
pub const IFLA_LINK: u16 = 5;
/// `IFLA_MASTER`.
pub const IFLA_MASTER: u16 = 10;
/// `IFLA_LINKINFO`.
pub const IFLA_LINKINFO: u16 = 18;
/// `IFLA_NET_NS_FD`.
pub const IFLA_NET_NS_FD: u16 = 28;
/// `IFLA_LINK_NETNSID`.
pub const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// One link as RTM_NEWLINK describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: i32,
    /// `IFF_*` flags.
    pub flags: u32,
    /// `ARPHRD_*` type.
    pub hw_type: u16,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address.
    pub address: Vec<u8>,
    /// `IFLA_LINK` (a veth's peer index, in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID` (the peer's namespace id, as this namespace knows it).
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER` (bridge or bond this link is enslaved to).
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); None for loopback and physical devices.
    pub kind: Option<String>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute.
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

/// Appends a nested attribute built by `f`.
pub(crate) fn put_nested(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf.resize(align4(buf.len()), 0);
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Iterates over the attributes in `b`.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, data))
    })
}

fn u32_of(d: &[u8]) -> Option<u32> {
    d.get(..4)
        .map(|x| u32::from_ne_bytes(x.try_into().expect("4 bytes")))
}

fn cstr_of(d: &[u8]) -> String {
    let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
    String::from_utf8_lossy(&d[..end]).into_owned()
}

/// The messages of a received netlink buffer as (type, sequence number, payload); a header
/// whose length does not fit is an error and ends the walk.
pub(crate) fn messages(mut b: &[u8]) -> impl Iterator<Item = io::Result<(u16, u32, &[u8])>> {
    std::iter::from_fn(move || {
        if b.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
        if len < 16 || len > b.len() {
            b = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            )));
        }
        let payload = &b[16..len];
        b = &b[align4(len).min(b.len())..];
        Some(Ok((ty, seq, payload)))
    })
}

/// A netlink socket of `protocol` in the calling thread's network namespace, whose receives
/// fail after 10 s instead of hanging on a kernel that never answers.
pub(crate) fn open_socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a pointer to a live timeval and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A rtnetlink socket in the calling thread's network namespace.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in the current thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let fd = open_socket(libc::NETLINK_ROUTE)?;
        Ok(Self { fd, seq: 1 })
    }

    fn send(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<u32> {
        self.seq += 1;
        let mut m = Vec::with_capacity(16 + payload.len());
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        // SAFETY: sending `m.len()` initialised bytes to the kernel (nl_pid 0 by default).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Receives replies to `seq`, calling `f` on each (type, payload) until DONE or an ACK.
    fn recv(&mut self, seq: u32, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receiving into a live buffer of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for m in messages(&buf[..n as usize]) {
                let (ty, mseq, payload) = m?;
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let err = payload
                            .get(..4)
                            .map(|e| i32::from_ne_bytes(e.try_into().expect("4")))
                            .unwrap_or(0);
                        return if err == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-err))
                        };
                    }
                    _ => f(ty, payload),
                }
            }
        }
    }

    /// Lists every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let seq = self.send(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, &ifinfomsg(0, 0, 0))?;
        let mut out = Vec::new();
        self.recv(seq, |ty, p| {
            if ty != RTM_NEWLINK || p.len() < 16 {
                return;
            }
            let mut l = Link {
                hw_type: u16::from_ne_bytes([p[2], p[3]]),
                index: i32::from_ne_bytes(p[4..8].try_into().expect("4")),
                flags: u32::from_ne_bytes(p[8..12].try_into().expect("4")),
                ..Default::default()
            };
            for (t, d) in attrs(&p[16..]) {
                match t {
                    IFLA_IFNAME => l.name = cstr_of(d),
                    IFLA_MTU => l.mtu = u32_of(d).unwrap_or(0),
                    IFLA_ADDRESS => l.address = d.to_vec(),
                    IFLA_LINK => l.link = u32_of(d),
                    IFLA_MASTER => l.master = u32_of(d),
                    IFLA_LINK_NETNSID => l.link_netnsid = u32_of(d).map(|v| v as i32),
                    IFLA_LINKINFO => {
                        for (it, id) in attrs(d) {
                            if it == IFLA_INFO_KIND {
                                l.kind = Some(cstr_of(id));
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(l);
        })?;
        Ok(out)
    }

    fn request(&mut self, flags: u16, msg: &[u8]) -> io::Result<()> {
        let seq = self.send(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | flags, msg)?;
        self.recv(seq, |_, _| {})
    }

    /// Creates a veth pair: `name` with index `index` here, `peer` in the namespace `peer_ns`.
    pub fn add_veth(
        &mut self,
        name: &str,
        index: i32,
        peer: &str,
        peer_ns: &OwnedFd,
    ) -> io::Result<()> {
        let mut m = ifinfomsg(index, 0, 0).to_vec();
        put_attr(&mut m, IFLA_IFNAME, format!("{name}\0").as_bytes());
        put_nested(&mut m, IFLA_LINKINFO, |b| {
            put_attr(b, IFLA_INFO_KIND, b"veth");
            put_nested(b, IFLA_INFO_DATA, |b| {
                put_nested(b, VETH_INFO_PEER, |b| {
                    b.extend_from_slice(&ifinfomsg(0, 0, 0));
                    put_attr(b, IFLA_IFNAME, format!("{peer}\0").as_bytes());
                    put_attr(
                        b,
                        IFLA_NET_NS_FD,
                        &(peer_ns.as_raw_fd() as u32).to_ne_bytes(),
                    );
                });
            });
        });
        self.request(NLM_F_CREATE | NLM_F_EXCL, &m)
    }

    /// Sets MTU and, when given, the hardware address of link `index`.
    pub fn set_attrs(&mut self, index: i32, mtu: u32, address: Option<&[u8]>) -> io::Result<()> {
        let mut m = ifinfomsg(index, 0, 0).to_vec();
        put_attr(&mut m, IFLA_MTU, &mtu.to_ne_bytes());
        if let Some(a) = address {
            put_attr(&mut m, IFLA_ADDRESS, a);
        }
        self.request(0, &m)
    }

    /// Sets the flags in `mask` of link `index` to their values in `flags`.
    pub fn set_flags(&mut self, index: i32, flags: u32, mask: u32) -> io::Result<()> {
        self.request(0, &ifinfomsg(index, flags & mask, mask))
    }
}

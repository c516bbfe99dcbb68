//! Inet sockets (files.img `INETSK` entries + tcp-stream-INO.img): TCP and UDP over IPv4 and
//! IPv6. Dump half here; the restore half is in `inet_restore`, TCP repair in `tcp`.
//!
//! Kernel mechanism: ferry takes its own copy of the socket with `pidfd_getfd` (the same open
//! file description) to ask its family, type and protocol (`SO_DOMAIN`, `SO_TYPE`,
//! `SO_PROTOCOL`) and options; sock_diag's inet_diag (`inet_diag`) gives its state, addresses,
//! ports, queue lengths, backlog and shutdown bits by inode. Listening, bound and unconnected
//! TCP sockets and UDP sockets are recreated from that alone (bind, listen, connect); UDP
//! datagrams still queued are not carried over (as CRIU). An established TCP connection needs
//! `--tcp-established`: its socket is put in repair mode (`tcp`), which keeps it silent from
//! then on; its sequence numbers, negotiated options, windows and the bytes of both queues go
//! to tcp-stream-INO.img. A dump that fails, or a `--leave-running` dump, takes the sockets
//! out of repair mode before the tree runs again ([`InetDump::resume`]); a dump that kills the
//! tree closes them while still in repair mode, so the kernel sends neither FIN nor RST and
//! leaves no TIME_WAIT behind: the restore can take the same addresses and ports again.
//! Anything else (raw sockets, SCTP, TCP connections being set up or half closed, listeners
//! with connections not accepted yet) is a dump error naming task, fd and connection.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use ferry_images::{pb, ImageDir};

use super::dump::{Fd, FileTable, FilesError};

#[path = "inet_diag.rs"]
pub mod diag;
#[path = "inet_restore.rs"]
pub mod restore;
#[path = "tcp.rs"]
pub mod tcp;

use diag::InetDiag;

/// TCP states (include/net/tcp_states.h) ferry handles.
pub const TCP_ESTABLISHED: u32 = 1;
/// A socket neither connected nor listening (UDP unconnected, TCP fresh or bound).
pub const TCP_CLOSE: u32 = 7;
/// A listener.
pub const TCP_LISTEN: u32 = 10;

/// Errors of the inet socket dump; each names task, fd, connection and stage.
#[derive(Debug, thiserror::Error)]
pub enum InetError {
    /// sock_diag could not be asked.
    #[error("task {pid}: fd {fd}: dump: listing inet sockets through inet_diag: {source}")]
    Diag {
        pid: i32,
        fd: i32,
        source: std::io::Error,
    },
    /// A syscall on ferry's copy of the socket failed.
    #[error("task {pid}: fd {fd}: inet socket {conn}: dump: {op}: {source}")]
    Sys {
        pid: i32,
        fd: i32,
        conn: String,
        op: String,
        source: std::io::Error,
    },
    /// Something ferry does not dump.
    #[error("task {pid}: fd {fd}: inet socket {conn}: dump: unsupported: {what}")]
    Unsupported {
        pid: i32,
        fd: i32,
        conn: String,
        what: String,
    },
    /// An established connection without `--tcp-established`.
    #[error(
        "task {pid}: fd {fd}: established TCP connection {conn}: dump refused; \
         use --tcp-established to checkpoint it with TCP repair"
    )]
    Established { pid: i32, fd: i32, conn: String },
    /// TCP repair failed on a connection.
    #[error("task {pid}: fd {fd}: TCP connection {conn}: dump: {source}")]
    Repair {
        pid: i32,
        fd: i32,
        conn: String,
        source: tcp::TcpError,
    },
    /// Leaving repair mode failed for some connections.
    #[error("leaving TCP repair mode before the tree runs again: {0}")]
    Resume(String),
    /// A tcp-stream image could not be written.
    #[error("dump: writing {image}: {what}")]
    Image { image: String, what: String },
}

type Result<T> = std::result::Result<T, InetError>;

/// A socket held in repair mode by the dump.
#[derive(Debug)]
struct Repaired {
    conn: String,
    sk: OwnedFd,
}

/// Inet socket state of one dump, shared by every task of the tree.
#[derive(Debug, Default)]
pub struct InetDump {
    /// `--tcp-established`: established connections are dumped with TCP repair.
    pub tcp_established: bool,
    /// inet_diag tables by network namespace inode.
    nets: HashMap<u64, HashMap<u32, InetDiag>>,
    /// tcp-stream images to write, by socket inode.
    streams: Vec<(u32, tcp::Stream)>,
    /// Sockets put in repair mode (ferry's copies; closing them in repair mode is silent).
    repaired: Vec<Repaired>,
}

fn getint(fd: RawFd, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is an int of `len` bytes owned here.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// Socket options as CRIU records them (buffer sizes as getsockopt reports them: doubled).
/// Options a protocol does not implement (EOPNOTSUPP, ENOPROTOOPT) are left out.
fn dump_opts(fd: RawFd) -> std::io::Result<pb::SkOptsEntry> {
    let int = |opt| getint(fd, libc::SOL_SOCKET, opt);
    let opt = |opt| match int(opt) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT)) => {
            Ok(None)
        }
        Err(e) => Err(e),
    };
    let flag = |o| opt(o).map(|v| v.map(|v| v != 0));
    let tv = |o| -> std::io::Result<libc::timeval> {
        let mut v = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SAFETY: `v` is a timeval of `len` bytes owned here.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                o,
                (&mut v as *mut libc::timeval).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(v)
    };
    let (snd, rcv) = (tv(libc::SO_SNDTIMEO)?, tv(libc::SO_RCVTIMEO)?);
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd.tv_sec as u64,
        so_snd_tmo_usec: snd.tv_usec as u64,
        so_rcv_tmo_sec: rcv.tv_sec as u64,
        so_rcv_tmo_usec: rcv.tv_usec as u64,
        reuseaddr: flag(libc::SO_REUSEADDR)?,
        so_priority: opt(libc::SO_PRIORITY)?.map(|v| v as u32),
        so_rcvlowat: opt(libc::SO_RCVLOWAT)?.map(|v| v as u32),
        so_mark: opt(libc::SO_MARK)?.map(|v| v as u32).filter(|m| *m != 0),
        so_passcred: flag(libc::SO_PASSCRED)?,
        so_passsec: flag(libc::SO_PASSSEC)?,
        so_dontroute: flag(libc::SO_DONTROUTE)?,
        so_no_check: flag(libc::SO_NO_CHECK)?,
        so_reuseport: flag(libc::SO_REUSEPORT)?,
        so_broadcast: flag(libc::SO_BROADCAST)?,
        so_keepalive: flag(libc::SO_KEEPALIVE)?,
        so_oobinline: opt(libc::SO_OOBINLINE)?.map(|v| v as u32),
        so_buf_lock: opt(libc::SO_BUF_LOCK)?.map(|v| v as u32),
        ..Default::default()
    })
}

/// The device a socket is bound to (SO_BINDTODEVICE), if any.
fn bound_device(fd: RawFd) -> std::io::Result<Option<String>> {
    let mut buf = [0u8; libc::IFNAMSIZ];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: SO_BINDTODEVICE writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = &buf[..(len as usize).min(buf.len())];
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    Ok((!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned()))
}

/// The address words of the image: one for IPv4, four for IPv6 (network order, as stored).
pub fn addr_words(family: u32, a: &[u32; 4]) -> Vec<u32> {
    if family == libc::AF_INET as u32 {
        vec![a[0]]
    } else {
        a.to_vec()
    }
}

/// `ADDR:PORT` as people write it (`[ADDR]:PORT` for IPv6).
pub fn endpoint(family: u32, words: &[u32], port: u32) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == libc::AF_INET6 as u32 && bytes.len() == 16 {
        let a: [u8; 16] = bytes.try_into().unwrap_or([0; 16]);
        format!("[{}]:{port}", std::net::Ipv6Addr::from(a))
    } else if bytes.len() >= 4 {
        let a = std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
        format!("{a}:{port}")
    } else {
        format!("?:{port}")
    }
}

/// The connection of an entry, for messages: `tcp 127.0.0.1:40000 -> 127.0.0.1:8080`.
pub fn describe(e: &pb::InetSkEntry) -> String {
    let proto = match e.proto as i32 {
        libc::IPPROTO_TCP => "tcp",
        libc::IPPROTO_UDP => "udp",
        _ => "inet",
    };
    let src = endpoint(e.family, &e.src_addr, e.src_port);
    if e.dst_port == 0 {
        return format!("{proto} {src}");
    }
    format!(
        "{proto} {src} -> {}",
        endpoint(e.family, &e.dst_addr, e.dst_port)
    )
}

/// Whether the socket behind `fd` is an inet one (so this module dumps it).
pub fn is_inet(fd: &Fd) -> bool {
    let Ok(sk) = super::borrow(fd.pid, fd.fd) else {
        return false;
    };
    matches!(
        getint(sk.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN),
        Ok(libc::AF_INET | libc::AF_INET6)
    )
}

fn state_name(s: u32) -> &'static str {
    match s {
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        11 => "CLOSING",
        _ => "unknown",
    }
}

impl InetDump {
    fn table(&mut self, pid: i32, fd: i32) -> Result<&HashMap<u32, InetDiag>> {
        let derr = |source| InetError::Diag { pid, fd, source };
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino())
            .map_err(derr)?;
        Ok(match self.nets.entry(ns) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(diag::collect(pid).map_err(derr)?)
            }
        })
    }

    /// The `INETSK` entry of socket `fd` (a new open file description, id `id`).
    pub fn dump_fd(&mut self, fd: &Fd, id: u32) -> Result<pb::InetSkEntry> {
        let (pid, n) = (fd.pid, fd.fd);
        let ino = fd.md.ino();
        let sys = |conn: &str, op: &str| {
            let (conn, op) = (conn.to_string(), op.to_string());
            move |source| InetError::Sys {
                pid,
                fd: n,
                conn,
                op,
                source,
            }
        };
        let first = format!("inode {ino}");
        let sk = super::borrow(pid, n).map_err(sys(&first, "pidfd_getfd"))?;
        let raw = sk.as_raw_fd();
        let family =
            getint(raw, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys(&first, "SO_DOMAIN"))?;
        let ty = getint(raw, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys(&first, "SO_TYPE"))?;
        let proto =
            getint(raw, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(sys(&first, "SO_PROTOCOL"))?;
        let unsupported = |conn: &str, what: String| InetError::Unsupported {
            pid,
            fd: n,
            conn: conn.to_string(),
            what,
        };
        match (ty, proto) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {}
            (libc::SOCK_RAW, _) => return Err(unsupported(&first, "raw sockets".into())),
            (_, libc::IPPROTO_SCTP) => return Err(unsupported(&first, "SCTP sockets".into())),
            _ => {
                return Err(unsupported(
                    &first,
                    format!("socket type {ty} protocol {proto}"),
                ))
            }
        }
        let table = self.table(pid, n)?;
        let d = u32::try_from(ino)
            .ok()
            .and_then(|i| table.get(&i).cloned())
            .ok_or_else(|| {
                unsupported(
                    &first,
                    "not listed by inet_diag in the task's network namespace".into(),
                )
            })?;
        let fam = u32::from(d.family);
        let mut e = pb::InetSkEntry {
            id,
            ino: d.ino,
            family: family as u32,
            r#type: ty as u32,
            proto: proto as u32,
            state: u32::from(d.state),
            src_port: u32::from(d.sport),
            dst_port: u32::from(d.dport),
            flags: fd.flags,
            backlog: 0,
            src_addr: addr_words(fam, &d.src),
            dst_addr: addr_words(fam, &d.dst),
            fown: fd.fown,
            opts: Default::default(),
            v6only: None,
            ip_opts: None,
            ifname: None,
            ns_id: None,
            shutdown: super::unix::encode_shutdown(d.shutdown),
        };
        let conn = describe(&e);
        e.opts = dump_opts(raw).map_err(sys(&conn, "getsockopt"))?;
        if family == libc::AF_INET6 {
            let v = getint(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
                .map_err(sys(&conn, "IPV6_V6ONLY"))?;
            e.v6only = Some(v != 0);
        }
        let freebind = if family == libc::AF_INET6 {
            getint(raw, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)
        } else {
            getint(raw, libc::IPPROTO_IP, libc::IP_FREEBIND)
        }
        .map_err(sys(&conn, "IP_FREEBIND"))?;
        e.ip_opts = Some(pb::IpOptsEntry {
            freebind: Some(freebind != 0),
            raw: None,
        });
        e.ifname = bound_device(raw).map_err(sys(&conn, "SO_BINDTODEVICE"))?;
        if proto == libc::IPPROTO_UDP {
            return Ok(e);
        }
        match e.state {
            TCP_LISTEN => {
                if d.rqueue != 0 {
                    return Err(unsupported(
                        &conn,
                        format!(
                            "listener with {} connection(s) not accepted yet in its queue",
                            d.rqueue
                        ),
                    ));
                }
                e.backlog = d.wqueue;
            }
            TCP_CLOSE => {}
            TCP_ESTABLISHED => {
                if !self.tcp_established {
                    return Err(InetError::Established { pid, fd: n, conn });
                }
                if d.shutdown != 0 {
                    return Err(unsupported(&conn, "a shut down TCP connection".into()));
                }
                self.repair(pid, n, &conn, sk, d.ino)?;
            }
            s => {
                return Err(unsupported(
                    &conn,
                    format!("TCP connection in state {} ({s})", state_name(s)),
                ))
            }
        }
        Ok(e)
    }

    /// Puts the connection in repair mode (kept until [`InetDump::resume`] or the end of the
    /// dump) and reads its state.
    fn repair(&mut self, pid: i32, fd: i32, conn: &str, sk: OwnedFd, ino: u32) -> Result<()> {
        let rerr = |source| InetError::Repair {
            pid,
            fd,
            conn: conn.to_string(),
            source,
        };
        tcp::repair(sk.as_raw_fd(), true).map_err(|source| {
            rerr(tcp::TcpError {
                step: "TCP_REPAIR on".into(),
                source,
            })
        })?;
        let raw = sk.as_raw_fd();
        self.repaired.push(Repaired {
            conn: format!("task {pid} fd {fd} {conn}"),
            sk,
        });
        let s = tcp::save(raw).map_err(rerr)?;
        self.streams.push((ino, s));
        Ok(())
    }

    /// Takes every socket the dump put in repair mode out of it again (before the tree runs
    /// on: after a failed dump, or with `--leave-running`). Every socket is tried; the error
    /// names those that stay in repair mode.
    pub fn resume(&mut self) -> Result<()> {
        let mut bad = Vec::new();
        for r in self.repaired.drain(..) {
            if let Err(e) = tcp::repair(r.sk.as_raw_fd(), false) {
                bad.push(format!("{}: {e}", r.conn));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(InetError::Resume(bad.join("; ")))
        }
    }

    /// Writes tcp-stream-INO.img (INO in hex) for every dumped connection: the entry, then the
    /// receive queue's bytes, then the send queue's.
    pub fn write(&self, dir: &ImageDir) -> std::result::Result<(), FilesError> {
        for (ino, s) in &self.streams {
            let name = format!("tcp-stream-{ino:x}.img");
            let mut raw = Vec::with_capacity(s.inq.len() + s.outq.len());
            raw.extend_from_slice(&s.inq);
            raw.extend_from_slice(&s.outq);
            super::dump::write_with_raw(dir, &name, [(&s.entry, &raw[..])])?;
        }
        Ok(())
    }
}

/// The files.img entry of an inet socket fd seen for the first time (the dump dispatcher's
/// socket arm sends AF_INET/AF_INET6 here).
pub fn dump(t: &mut FileTable, fd: &Fd) -> std::result::Result<pb::FileEntry, FilesError> {
    let id = t.next_id();
    let isk = t.inet.dump_fd(fd, id)?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Inetsk as i32,
        id,
        isk: Some(isk),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_as_people_write_them() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(endpoint(libc::AF_INET as u32, &[v4], 80), "127.0.0.1:80");
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert_eq!(
            endpoint(libc::AF_INET6 as u32, &[0, 0, 0, one], 8080),
            "[::1]:8080"
        );
        let e = pb::InetSkEntry {
            family: libc::AF_INET as u32,
            proto: libc::IPPROTO_TCP as u32,
            src_port: 1,
            dst_port: 2,
            src_addr: vec![v4],
            dst_addr: vec![v4],
            ..Default::default()
        };
        assert_eq!(describe(&e), "tcp 127.0.0.1:1 -> 127.0.0.1:2");
    }
}

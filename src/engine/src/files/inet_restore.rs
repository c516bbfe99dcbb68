//! Inet sockets, restore half: every `INETSK` entry of files.img is rebuilt at once, in the
//! coordinator, before any task is forked.
//!
//! Kernel mechanism: a socket of the same family, type and protocol gets its options, then
//! `bind` to its old address and port, `listen` with its backlog, or `connect` (UDP). Sockets
//! that are not established TCP connections are made first: a listener's `bind` would
//! otherwise collide with the connections it had accepted, which share its port. Each
//! established connection is made in repair mode (`tcp`): bound to its old port (repair mode
//! lets it share the port), its sequence numbers set, `connect`ed without a SYN, its options,
//! queues and windows put back. Repair mode stays on until every task of the tree waits
//! before its last `rt_sigreturn`; then [`leave_repair`] takes every connection out of it (a
//! window probe restarts the conversation), sends the bytes that had never been sent and
//! gives SO_REUSEADDR back, before any task runs its own code.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ferry_images::{pb, ImageDir, ImageReader};

use super::tcp::{self, Stream};
use super::{describe, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};

/// Errors rebuilding inet sockets; each names the files.img id, the connection and the stage.
#[derive(Debug, thiserror::Error)]
pub enum InetRestoreError {
    /// A syscall failed.
    #[error("inet socket id {id} ({conn}): restore: {stage}: {source}")]
    Sys {
        id: u32,
        conn: String,
        stage: String,
        source: std::io::Error,
    },
    /// TCP repair failed.
    #[error("inet socket id {id} ({conn}): restore: {source}")]
    Repair {
        id: u32,
        conn: String,
        source: tcp::TcpError,
    },
    /// The images ask for something ferry cannot rebuild.
    #[error("inet socket id {id} ({conn}): restore: unsupported: {what}")]
    Unsupported { id: u32, conn: String, what: String },
    /// An image is unreadable or inconsistent.
    #[error("inet sockets: restore: reading {image}: {what}")]
    Image { image: String, what: String },
    /// The images hold connections and `--tcp-established` was not given.
    #[error(
        "the images hold established TCP connection(s) ({conns}); restore them with \
         --tcp-established"
    )]
    NeedFlag { conns: String },
    /// Leaving repair mode failed.
    #[error("inet socket id {id} ({conn}): restore: leaving TCP repair mode: {source}")]
    Leave {
        id: u32,
        conn: String,
        source: tcp::TcpError,
    },
}

type Result<T> = std::result::Result<T, InetRestoreError>;

/// An established connection still in repair mode.
#[derive(Debug)]
struct Pending {
    id: u32,
    conn: String,
    sk: OwnedFd,
    stream: Stream,
    reuseaddr: bool,
}

/// Every inet socket of the images, rebuilt, by files.img id.
#[derive(Debug, Default)]
pub struct Sockets {
    built: bool,
    fds: BTreeMap<u32, OwnedFd>,
    pending: Vec<Pending>,
}

/// A sockaddr for an entry's address words and port.
fn sockaddr(
    family: u32,
    words: &[u32],
    port: u32,
) -> Option<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let port = u16::try_from(port).ok()?.to_be();
    if family == libc::AF_INET as u32 {
        let a = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port,
            sin_addr: libc::in_addr {
                s_addr: *words.first()?,
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in sockaddr_storage.
        unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), a) };
        return Some((
            ss,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ));
    }
    if family != libc::AF_INET6 as u32 || words.len() != 4 {
        return None;
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let a = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: bytes.try_into().ok()?,
        },
        sin6_scope_id: 0,
    };
    // SAFETY: sockaddr_in6 fits in sockaddr_storage.
    unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), a) };
    Some((
        ss,
        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
    ))
}

fn is_any(words: &[u32]) -> bool {
    words.iter().all(|&w| w == 0)
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

/// The socket options of the entry (SO_REUSEADDR among them, before `bind`); buffer sizes
/// only where they differ from a fresh socket's (setting one turns autotuning off).
fn set_opts(fd: RawFd, o: &pb::SkOptsEntry) -> std::io::Result<()> {
    let int = |opt, v: i32| tcp::setopt(fd, libc::SOL_SOCKET, opt, &v);
    let cur = |opt| getint(fd, libc::SOL_SOCKET, opt);
    if o.so_sndbuf != 0 && cur(libc::SO_SNDBUF)? as u32 != o.so_sndbuf {
        int(libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32)?;
    }
    if o.so_rcvbuf != 0 && cur(libc::SO_RCVBUF)? as u32 != o.so_rcvbuf {
        int(libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32)?;
    }
    let flags = [
        (o.reuseaddr, libc::SO_REUSEADDR),
        (o.so_reuseport, libc::SO_REUSEPORT),
        (o.so_keepalive, libc::SO_KEEPALIVE),
        (o.so_broadcast, libc::SO_BROADCAST),
        (o.so_dontroute, libc::SO_DONTROUTE),
        (o.so_no_check, libc::SO_NO_CHECK),
        (o.so_passcred, libc::SO_PASSCRED),
    ];
    for (v, opt) in flags {
        if v == Some(true) {
            int(opt, 1)?;
        }
    }
    for (v, opt) in [
        (o.so_priority, libc::SO_PRIORITY),
        (o.so_rcvlowat, libc::SO_RCVLOWAT),
        (o.so_mark, libc::SO_MARK),
        (o.so_oobinline, libc::SO_OOBINLINE),
    ] {
        if let Some(v) = v.filter(|v| *v != 0) {
            if cur(opt)? as u32 != v {
                int(opt, v as i32)?;
            }
        }
    }
    for (sec, usec, opt) in [
        (o.so_snd_tmo_sec, o.so_snd_tmo_usec, libc::SO_SNDTIMEO),
        (o.so_rcv_tmo_sec, o.so_rcv_tmo_usec, libc::SO_RCVTIMEO),
    ] {
        if sec != 0 || usec != 0 {
            let tv = libc::timeval {
                tv_sec: sec as libc::time_t,
                tv_usec: usec as libc::suseconds_t,
            };
            tcp::setopt(fd, libc::SOL_SOCKET, opt, &tv)?;
        }
    }
    Ok(())
}

/// Reads tcp-stream-INO.img: the entry, then both queues' bytes.
fn load_stream(dir: &ImageDir, ino: u32) -> Result<Stream> {
    let name = format!("tcp-stream-{ino:x}.img");
    let ierr = |what: String| InetRestoreError::Image {
        image: name.clone(),
        what,
    };
    let data = dir.read(&name).map_err(|e| ierr(e.to_string()))?;
    let mut r = ImageReader::new(&name, &data).map_err(|e| ierr(e.to_string()))?;
    let entry: pb::TcpStreamEntry = r
        .next_entry()
        .map_err(|e| ierr(e.to_string()))?
        .ok_or_else(|| ierr("no entry".into()))?;
    let inq = r
        .raw(u64::from(entry.inq_len), "receive queue")
        .map_err(|e| ierr(e.to_string()))?
        .to_vec();
    let outq = r
        .raw(u64::from(entry.outq_len), "send queue")
        .map_err(|e| ierr(e.to_string()))?
        .to_vec();
    let s = Stream { entry, inq, outq };
    tcp::check(&s).map_err(ierr)?;
    Ok(s)
}

fn established(e: &pb::InetSkEntry) -> bool {
    e.proto == libc::IPPROTO_TCP as u32 && e.state == TCP_ESTABLISHED
}

/// The established TCP connections among files.img's entries.
fn connections(files: &[pb::FileEntry]) -> Vec<&pb::InetSkEntry> {
    files
        .iter()
        .filter_map(|f| f.isk.as_ref())
        .filter(|e| established(e))
        .collect()
}

/// Refuses images holding established TCP connections unless `--tcp-established` was given
/// (CRIU's rule: the caller must know connections are being restored).
pub fn check_flag(dir: &ImageDir, tcp_established: bool) -> Result<()> {
    if tcp_established || !dir.has("files.img") {
        return Ok(());
    }
    let files: Vec<pb::FileEntry> =
        dir.read_entries("files.img")
            .map_err(|e| InetRestoreError::Image {
                image: "files.img".into(),
                what: e.to_string(),
            })?;
    check_files(&files, tcp_established)
}

/// [`check_flag`] on files.img's entries already read.
pub fn check_files(files: &[pb::FileEntry], tcp_established: bool) -> Result<()> {
    if tcp_established {
        return Ok(());
    }
    let conns: Vec<String> = connections(files).into_iter().map(describe).collect();
    if conns.is_empty() {
        return Ok(());
    }
    Err(InetRestoreError::NeedFlag {
        conns: conns.join(", "),
    })
}

impl Sockets {
    /// Whether any restored connection waits in repair mode for [`leave_repair`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The socket of files.img id `id` (a copy: the coordinator keeps its own for
    /// [`leave_repair`]); builds every inet socket on first use.
    pub fn open(&mut self, dir: &ImageDir, id: u32) -> Result<OwnedFd> {
        if !self.built {
            self.built = true;
            let files: Vec<pb::FileEntry> =
                dir.read_entries("files.img")
                    .map_err(|e| InetRestoreError::Image {
                        image: "files.img".into(),
                        what: e.to_string(),
                    })?;
            let mut all: Vec<&pb::InetSkEntry> =
                files.iter().filter_map(|f| f.isk.as_ref()).collect();
            // Listeners and everything else first, connections last (see the module docs).
            all.sort_by_key(|e| established(e));
            for e in all {
                let fd = self.build(dir, e)?;
                self.fds.insert(e.id, fd);
            }
        }
        let fd = self.fds.get(&id).ok_or_else(|| InetRestoreError::Image {
            image: "files.img".into(),
            what: format!("no inet socket entry with id {id}"),
        })?;
        fd.try_clone().map_err(|source| InetRestoreError::Sys {
            id,
            conn: String::new(),
            stage: "dup".into(),
            source,
        })
    }

    fn build(&mut self, dir: &ImageDir, e: &pb::InetSkEntry) -> Result<OwnedFd> {
        let conn = describe(e);
        let (id, c) = (e.id, conn.clone());
        let sys = |stage: &str| {
            let (stage, conn) = (stage.to_string(), c.clone());
            move |source| InetRestoreError::Sys {
                id,
                conn,
                stage,
                source,
            }
        };
        let last = |stage: &str| sys(stage)(std::io::Error::last_os_error());
        let unsupported = |what: String| InetRestoreError::Unsupported {
            id,
            conn: conn.clone(),
            what,
        };
        let fam = e.family as i32;
        if fam != libc::AF_INET && fam != libc::AF_INET6 {
            return Err(unsupported(format!("address family {fam}")));
        }
        let tcp = match (e.r#type as i32, e.proto as i32) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => true,
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => false,
            (t, p) => return Err(unsupported(format!("socket type {t} protocol {p}"))),
        };
        if tcp && !matches!(e.state, TCP_ESTABLISHED | TCP_CLOSE | TCP_LISTEN) {
            return Err(unsupported(format!("TCP state {}", e.state)));
        }
        // SAFETY: plain socket(2); the result is checked and owned below.
        let n = unsafe { libc::socket(fam, e.r#type as i32 | libc::SOCK_CLOEXEC, e.proto as i32) };
        if n < 0 {
            return Err(last("socket"));
        }
        // SAFETY: n is fresh and ours.
        let sk = unsafe { OwnedFd::from_raw_fd(n) };
        let fd = sk.as_raw_fd();
        set_opts(fd, &e.opts).map_err(sys("socket options"))?;
        if let Some(v6only) = e.v6only {
            tcp::setopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                &i32::from(v6only),
            )
            .map_err(sys("IPV6_V6ONLY"))?;
        }
        if e.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true) {
            let (level, opt) = if fam == libc::AF_INET6 {
                (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)
            } else {
                (libc::IPPROTO_IP, libc::IP_FREEBIND)
            };
            tcp::setopt(fd, level, opt, &1i32).map_err(sys("IP_FREEBIND"))?;
        }
        if let Some(dev) = e.ifname.as_ref().filter(|d| !d.is_empty()) {
            // SAFETY: binding to a device name of the given length.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_BINDTODEVICE,
                    dev.as_ptr().cast(),
                    dev.len() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(last(&format!("SO_BINDTODEVICE {dev}")));
            }
        }
        let repair = tcp && e.state == TCP_ESTABLISHED;
        if repair {
            tcp::repair(fd, true).map_err(sys("TCP_REPAIR on"))?;
        }
        let src = sockaddr(e.family, &e.src_addr, e.src_port)
            .ok_or_else(|| unsupported("malformed source address".into()))?;
        if e.src_port != 0 || !is_any(&e.src_addr) {
            // SAFETY: `src` is a sockaddr of the given length.
            let r =
                unsafe { libc::bind(fd, (&src.0 as *const libc::sockaddr_storage).cast(), src.1) };
            if r != 0 {
                return Err(last("bind"));
            }
        }
        let dst = sockaddr(e.family, &e.dst_addr, e.dst_port)
            .ok_or_else(|| unsupported("malformed destination address".into()))?;
        if repair {
            let stream = load_stream(dir, e.ino)?;
            tcp::restore(fd, &stream, &dst).map_err(|source| InetRestoreError::Repair {
                id,
                conn: conn.clone(),
                source,
            })?;
            self.pending.push(Pending {
                id,
                conn: conn.clone(),
                sk: sk.try_clone().map_err(sys("dup"))?,
                stream,
                reuseaddr: e.opts.reuseaddr == Some(true),
            });
        } else if tcp && e.state == TCP_LISTEN {
            // SAFETY: listen on our socket.
            if unsafe { libc::listen(fd, e.backlog as i32) } != 0 {
                return Err(last("listen"));
            }
        } else if !tcp && e.dst_port != 0 {
            // SAFETY: `dst` is a sockaddr of the given length.
            let r = unsafe {
                libc::connect(fd, (&dst.0 as *const libc::sockaddr_storage).cast(), dst.1)
            };
            if r != 0 {
                return Err(last("connect"));
            }
        }
        if let Some(sh) = e.shutdown.filter(|s| *s != 0) {
            let how = match sh {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                _ => libc::SHUT_RDWR,
            };
            // SAFETY: shutdown on our socket.
            if unsafe { libc::shutdown(fd, how) } != 0 {
                return Err(last("shutdown"));
            }
        }
        let fl = e.flags as i32 & (libc::O_NONBLOCK | libc::O_ASYNC);
        // SAFETY: F_SETFL on our socket.
        if fl != 0 && unsafe { libc::fcntl(fd, libc::F_SETFL, fl) } != 0 {
            return Err(last("F_SETFL"));
        }
        Ok(sk)
    }
}

/// Takes every restored connection out of repair mode, sends the bytes that had never been
/// sent, and gives SO_REUSEADDR back (repair mode had replaced it). Runs in the coordinator
/// once every task waits before its last `rt_sigreturn`, before any of them runs on.
pub fn leave_repair(s: &Sockets) -> Result<()> {
    for p in &s.pending {
        tcp::repair(p.sk.as_raw_fd(), false).map_err(|source| InetRestoreError::Leave {
            id: p.id,
            conn: p.conn.clone(),
            source: tcp::TcpError {
                step: "TCP_REPAIR off".into(),
                source,
            },
        })?;
    }
    for p in &s.pending {
        let leave = |source| InetRestoreError::Leave {
            id: p.id,
            conn: p.conn.clone(),
            source,
        };
        tcp::finish(p.sk.as_raw_fd(), &p.stream).map_err(leave)?;
        if p.reuseaddr {
            tcp::setopt(
                p.sk.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &1i32,
            )
            .map_err(|source| {
                leave(tcp::TcpError {
                    step: "SO_REUSEADDR".into(),
                    source,
                })
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_of_both_families() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        let (ss, len) = sockaddr(libc::AF_INET as u32, &[v4], 8080).unwrap();
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        assert_eq!(ss.ss_family, libc::AF_INET as libc::sa_family_t);
        let (_, len) = sockaddr(libc::AF_INET6 as u32, &[0, 0, 0, 1], 1).unwrap();
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in6>());
        assert!(sockaddr(libc::AF_INET6 as u32, &[0], 1).is_none());
        assert!(sockaddr(libc::AF_INET as u32, &[v4], 70000).is_none());
    }
}

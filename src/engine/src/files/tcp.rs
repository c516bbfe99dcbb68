//! TCP repair: the state of an established connection read out of the kernel and put back
//! into a fresh socket (tcp-stream-INO.img).
//!
//! Kernel mechanism: `setsockopt(TCP_REPAIR, 1)` (CAP_NET_ADMIN) freezes a socket's protocol:
//! it sends nothing, `close` is silent (no FIN, no RST, no TIME_WAIT) and `bind` ignores port
//! conflicts. In repair mode `TCP_REPAIR_QUEUE` selects the receive or the send queue, whose
//! sequence number `TCP_QUEUE_SEQ` reads or sets (`rcv_nxt`, `write_seq`) and whose bytes
//! `recv(MSG_PEEK)` reads and `send` refills without anything going on the wire; `connect`
//! turns a bound socket into an established one without a SYN; `TCP_REPAIR_OPTIONS` sets the
//! options negotiated at the handshake (MSS, window scale, SACK, timestamps),
//! `TCP_REPAIR_WINDOW` the windows, `TCP_TIMESTAMP` the timestamp clock. `SIOCINQ`,
//! `SIOCOUTQ` and `SIOCOUTQNSD` give the queue lengths (the send queue holds bytes sent but
//! not acknowledged, then bytes never sent). Leaving repair mode sends a window probe and the
//! connection goes on. Sequence of dump and restore as CRIU's soccr does it.

use std::os::fd::RawFd;

use ferry_images::pb;

/// `TCP_REPAIR` and its friends (linux/tcp.h).
pub const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// `tcpi_options` bits, which tcp-stream's `opt_mask` records.
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RepairOpt {
    code: u32,
    val: u32,
}

/// A failed step, named; the callers add task, fd and connection.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct TcpError {
    /// What was being done.
    pub step: String,
    /// Why it failed.
    pub source: std::io::Error,
}

type Result<T> = std::result::Result<T, TcpError>;

fn err(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> TcpError {
    let step = step.into();
    move |source| TcpError { step, source }
}

fn last(step: &str) -> TcpError {
    TcpError {
        step: step.to_string(),
        source: std::io::Error::last_os_error(),
    }
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

/// setsockopt with a plain value.
pub fn setopt<T>(fd: RawFd, level: i32, opt: i32, v: &T) -> std::io::Result<()> {
    setopt_bytes(
        fd,
        level,
        opt,
        (v as *const T).cast(),
        std::mem::size_of::<T>(),
    )
}

fn setopt_bytes(fd: RawFd, level: i32, opt: i32, p: *const u8, len: usize) -> std::io::Result<()> {
    // SAFETY: `p` points to `len` readable bytes (callers pass a live value or slice).
    let r = unsafe { libc::setsockopt(fd, level, opt, p.cast(), len as libc::socklen_t) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong, what: &str) -> Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these socket ioctls write one int into `v`.
    if unsafe { libc::ioctl(fd, req, &mut v) } != 0 {
        return Err(last(what));
    }
    Ok(v as u32)
}

/// Turns repair mode on (`true`) or off.
pub fn repair(fd: RawFd, on: bool) -> std::io::Result<()> {
    setopt(fd, libc::SOL_TCP, TCP_REPAIR, &libc::c_int::from(on))
}

fn select(fd: RawFd, q: i32) -> Result<()> {
    setopt(fd, libc::SOL_TCP, TCP_REPAIR_QUEUE, &q).map_err(err("TCP_REPAIR_QUEUE"))
}

/// Reads `len` bytes of the selected queue without consuming them, proving there are no more.
fn peek(fd: RawFd, len: u32, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize + 1];
    if len == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: receiving into `buf`, within its length.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(last(&format!("peeking the {what} queue")));
    }
    if n as usize != len as usize {
        return Err(TcpError {
            step: format!("peeking the {what} queue"),
            source: std::io::Error::other(format!("{n} bytes, the kernel counts {len}")),
        });
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// The state of one established connection, with the bytes of its queues.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// The image entry.
    pub entry: pb::TcpStreamEntry,
    /// Bytes received and not read yet.
    pub inq: Vec<u8>,
    /// Bytes written and not acknowledged yet (sent first, then never sent).
    pub outq: Vec<u8>,
}

/// Reads the state of a socket already in repair mode. The selected queue is put back to
/// none afterwards, whatever happened.
pub fn save(fd: RawFd) -> Result<Stream> {
    let r = save_inner(fd);
    let back = select(fd, TCP_NO_QUEUE);
    let s = r?;
    back?;
    Ok(s)
}

fn save_inner(fd: RawFd) -> Result<Stream> {
    let mut info = [0u8; 104];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(last("TCP_INFO"));
    }
    // struct tcp_info: state, ca_state, retransmits, probes, backoff, options,
    // snd_wscale:4 | rcv_wscale:4.
    if u32::from(info[0]) != super::TCP_ESTABLISHED {
        return Err(TcpError {
            step: "TCP_INFO".into(),
            source: std::io::Error::other(format!("state {} is not established", info[0])),
        });
    }
    let opt_mask = u32::from(info[5]);
    let (snd_wscale, rcv_wscale) = (u32::from(info[6] & 0xf), u32::from(info[6] >> 4));
    let inq_len = ioctl_int(fd, SIOCINQ, "SIOCINQ")?;
    let outq_len = ioctl_int(fd, SIOCOUTQ, "SIOCOUTQ")?;
    let unsq_len = ioctl_int(fd, SIOCOUTQNSD, "SIOCOUTQNSD")?;
    let mss: libc::c_int =
        getopt(fd, libc::SOL_TCP, libc::TCP_MAXSEG).map_err(err("TCP_MAXSEG"))?;
    let timestamp = if opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        Some(getopt::<u32>(fd, libc::SOL_TCP, TCP_TIMESTAMP).map_err(err("TCP_TIMESTAMP"))?)
    } else {
        None
    };
    let w: RepairWindow =
        getopt(fd, libc::SOL_TCP, TCP_REPAIR_WINDOW).map_err(err("TCP_REPAIR_WINDOW"))?;
    let nodelay: libc::c_int =
        getopt(fd, libc::SOL_TCP, libc::TCP_NODELAY).map_err(err("TCP_NODELAY"))?;
    let cork: libc::c_int = getopt(fd, libc::SOL_TCP, libc::TCP_CORK).map_err(err("TCP_CORK"))?;
    select(fd, TCP_RECV_QUEUE)?;
    let inq_seq: u32 =
        getopt(fd, libc::SOL_TCP, TCP_QUEUE_SEQ).map_err(err("receive TCP_QUEUE_SEQ"))?;
    let inq = peek(fd, inq_len, "receive")?;
    select(fd, TCP_SEND_QUEUE)?;
    let outq_seq: u32 =
        getopt(fd, libc::SOL_TCP, TCP_QUEUE_SEQ).map_err(err("send TCP_QUEUE_SEQ"))?;
    let outq = peek(fd, outq_len, "send")?;
    Ok(Stream {
        entry: pb::TcpStreamEntry {
            inq_len,
            inq_seq,
            outq_len,
            outq_seq,
            opt_mask,
            snd_wscale,
            mss_clamp: mss as u32,
            rcv_wscale: Some(rcv_wscale),
            timestamp,
            cork: Some(cork != 0),
            nodelay: Some(nodelay != 0),
            unsq_len: Some(unsq_len),
            snd_wl1: Some(w.snd_wl1),
            snd_wnd: Some(w.snd_wnd),
            max_window: Some(w.max_window),
            rcv_wnd: Some(w.rcv_wnd),
            rcv_wup: Some(w.rcv_wup),
        },
        inq,
        outq,
    })
}

/// Writes `buf` whole into the socket, halving the chunk when the kernel refuses a big one
/// (in repair mode the receive queue takes one linear buffer per call).
fn send_all(fd: RawFd, buf: &[u8], flags: i32, what: &str) -> Result<()> {
    let (mut off, mut chunk) = (0usize, buf.len().max(1));
    let mut waited = 0;
    while off < buf.len() {
        let n = chunk.min(buf.len() - off);
        // SAFETY: sending from `buf[off..off + n]`, inside `buf`.
        let r = unsafe { libc::send(fd, buf[off..].as_ptr().cast(), n, flags) };
        if r > 0 {
            off += r as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        if r < 0 && e.raw_os_error() == Some(libc::EAGAIN) && waited < 500 {
            // The kernel is sending the earlier part: wait for room (bounded).
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
            continue;
        }
        if chunk > 1024 {
            chunk /= 2;
            continue;
        }
        return Err(TcpError {
            step: format!("refilling the {what} queue ({off} of {} bytes)", buf.len()),
            source: e,
        });
    }
    Ok(())
}

/// Puts a connection back into `fd`: a fresh socket in repair mode, already bound to its
/// source address. `dst` is the peer's address. Bytes never sent (the tail of the send
/// queue) are left for [`finish`], after repair mode is off.
pub fn restore(
    fd: RawFd,
    s: &Stream,
    dst: &(libc::sockaddr_storage, libc::socklen_t),
) -> Result<()> {
    let e = &s.entry;
    let unsent = e.unsq_len.unwrap_or(0).min(e.outq_len);
    select(fd, TCP_RECV_QUEUE)?;
    setopt(
        fd,
        libc::SOL_TCP,
        TCP_QUEUE_SEQ,
        &e.inq_seq.wrapping_sub(e.inq_len),
    )
    .map_err(err("receive TCP_QUEUE_SEQ"))?;
    select(fd, TCP_SEND_QUEUE)?;
    setopt(
        fd,
        libc::SOL_TCP,
        TCP_QUEUE_SEQ,
        &e.outq_seq.wrapping_sub(e.outq_len),
    )
    .map_err(err("send TCP_QUEUE_SEQ"))?;
    select(fd, TCP_NO_QUEUE)?;
    // connect sizes segments by the default MSS clamp (536 for IPv4, 1220 for IPv6) and keeps
    // that size until the path MTU changes; a user MSS (the kernel takes at most 32767) makes it
    // size them by the path instead, as close to what the connection had as the kernel allows.
    let mss = e.mss_clamp.clamp(88, 32767) as libc::c_int;
    setopt(fd, libc::SOL_TCP, libc::TCP_MAXSEG, &mss).map_err(err("TCP_MAXSEG"))?;
    // SAFETY: `dst` is a sockaddr of the given length.
    if unsafe { libc::connect(fd, (&dst.0 as *const libc::sockaddr_storage).cast(), dst.1) } != 0 {
        return Err(last("connect in repair mode"));
    }
    let mut opts = Vec::new();
    if e.opt_mask & TCPI_OPT_SACK != 0 {
        opts.push(RepairOpt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        let val = e.snd_wscale + (e.rcv_wscale.unwrap_or(0) << 16);
        opts.push(RepairOpt {
            code: TCPOPT_WINDOW,
            val,
        });
    }
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push(RepairOpt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    opts.push(RepairOpt {
        code: TCPOPT_MAXSEG,
        val: e.mss_clamp,
    });
    setopt_bytes(
        fd,
        libc::SOL_TCP,
        TCP_REPAIR_OPTIONS,
        opts.as_ptr().cast(),
        opts.len() * std::mem::size_of::<RepairOpt>(),
    )
    .map_err(err("TCP_REPAIR_OPTIONS"))?;
    if let Some(ts) = e.timestamp {
        setopt(fd, libc::SOL_TCP, TCP_TIMESTAMP, &ts).map_err(err("TCP_TIMESTAMP"))?;
    }
    if !s.inq.is_empty() {
        select(fd, TCP_RECV_QUEUE)?;
        send_all(fd, &s.inq, 0, "receive")?;
    }
    let sent = &s.outq[..s.outq.len() - unsent as usize];
    if !sent.is_empty() {
        select(fd, TCP_SEND_QUEUE)?;
        send_all(fd, sent, 0, "send")?;
    }
    select(fd, TCP_NO_QUEUE)?;
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) =
        (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup)
    {
        let w = RepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        };
        setopt(fd, libc::SOL_TCP, TCP_REPAIR_WINDOW, &w).map_err(err("TCP_REPAIR_WINDOW"))?;
    }
    if let Some(n) = e.nodelay {
        setopt(fd, libc::SOL_TCP, libc::TCP_NODELAY, &libc::c_int::from(n))
            .map_err(err("TCP_NODELAY"))?;
    }
    if let Some(c) = e.cork {
        setopt(fd, libc::SOL_TCP, libc::TCP_CORK, &libc::c_int::from(c))
            .map_err(err("TCP_CORK"))?;
    }
    Ok(())
}

/// Once repair mode is off: the bytes that had never been sent go out as ordinary writes.
pub fn finish(fd: RawFd, s: &Stream) -> Result<()> {
    let unsent = s.entry.unsq_len.unwrap_or(0).min(s.entry.outq_len) as usize;
    let tail = &s.outq[s.outq.len() - unsent..];
    if tail.is_empty() {
        return Ok(());
    }
    send_all(
        fd,
        tail,
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        "unsent send",
    )
}

/// Checks that a tcp-stream entry and its payload agree (a corrupt image is an error).
pub fn check(s: &Stream) -> std::result::Result<(), String> {
    let e = &s.entry;
    if s.inq.len() != e.inq_len as usize || s.outq.len() != e.outq_len as usize {
        return Err("queue lengths disagree with the payload".into());
    }
    if e.unsq_len.unwrap_or(0) > e.outq_len {
        return Err(format!(
            "unsent length {} exceeds the send queue {}",
            e.unsq_len.unwrap_or(0),
            e.outq_len
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn storage(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        let SocketAddr::V4(v4) = a else {
            panic!("IPv4 only")
        };
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in sockaddr_storage.
        unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        (
            ss,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    }

    /// A fresh socket in repair mode bound to `local`, with `s` put back into it.
    fn rebuild(local: SocketAddr, peer: SocketAddr, s: &Stream) -> TcpStream {
        // SAFETY: plain socket(2), checked below.
        let n = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(n >= 0);
        // SAFETY: n is fresh and ours.
        let sk = unsafe { OwnedFd::from_raw_fd(n) };
        repair(sk.as_raw_fd(), true).unwrap();
        let (a, len) = storage(local);
        // SAFETY: `a` is a sockaddr of `len` bytes.
        let r = unsafe { libc::bind(n, (&a as *const libc::sockaddr_storage).cast(), len) };
        assert_eq!(r, 0, "bind {local}: {}", std::io::Error::last_os_error());
        restore(n, s, &storage(peer)).unwrap();
        TcpStream::from(sk)
    }

    #[test]
    fn a_connection_survives_save_close_and_restore() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let (ca, sa) = (c.local_addr().unwrap(), s.local_addr().unwrap());
        c.write_all(&[1u8; 5000]).unwrap();
        s.write_all(&[2u8; 7000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        for f in [&c, &s] {
            repair(f.as_raw_fd(), true).unwrap();
        }
        let (cs, ss) = (save(c.as_raw_fd()).unwrap(), save(s.as_raw_fd()).unwrap());
        assert_eq!((cs.inq.len(), ss.inq.len()), (7000, 5000));
        assert!(cs.inq.iter().all(|&b| b == 2) && ss.inq.iter().all(|&b| b == 1));
        check(&cs).unwrap();
        // Closed in repair mode: silently, no TIME_WAIT, so the same 4-tuple is free again.
        drop((c, s));
        let mut c = rebuild(ca, sa, &cs);
        let mut s = rebuild(sa, ca, &ss);
        for (f, st) in [(&c, &cs), (&s, &ss)] {
            repair(f.as_raw_fd(), false).unwrap();
            finish(f.as_raw_fd(), st).unwrap();
        }
        for f in [&c, &s] {
            f.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        let mut got = vec![0u8; 7000];
        c.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 2));
        let mut got = vec![0u8; 5000];
        s.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 1));
        c.write_all(b"more").unwrap();
        let mut m = [0u8; 4];
        s.read_exact(&mut m).unwrap();
        assert_eq!(&m, b"more");
    }

    /// Bytes restored as sent but not acknowledged (repair-mode writes into the send queue)
    /// reach the peer by retransmission once repair mode is off.
    #[test]
    fn bytes_restored_as_in_flight_are_retransmitted() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (ca, sa) = (c.local_addr().unwrap(), s.local_addr().unwrap());
        c.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < data.len() {
            match (&c).write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        for f in [&c, &s] {
            repair(f.as_raw_fd(), true).unwrap();
        }
        let (mut cs, ss) = (save(c.as_raw_fd()).unwrap(), save(s.as_raw_fd()).unwrap());
        assert!(cs.entry.outq_len > 0, "nothing left in the send queue");
        // Pretend none of it was sent: the peer never got these bytes.
        cs.entry.unsq_len = Some(0);
        drop((c, s));
        let c = rebuild(ca, sa, &cs);
        let mut s = rebuild(sa, ca, &ss);
        for (f, st) in [(&c, &cs), (&s, &ss)] {
            repair(f.as_raw_fd(), false).unwrap();
            finish(f.as_raw_fd(), st).unwrap();
        }
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut got = vec![0u8; off];
        s.read_exact(&mut got).unwrap();
        assert!(got == data[..off], "stream differs");
    }

    #[test]
    fn a_payload_that_disagrees_is_refused() {
        let s = Stream {
            entry: pb::TcpStreamEntry {
                inq_len: 3,
                ..Default::default()
            },
            inq: vec![1],
            outq: Vec::new(),
        };
        assert!(check(&s).is_err());
    }
}

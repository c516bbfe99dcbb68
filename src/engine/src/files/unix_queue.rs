//! Unix socket receive queues, both halves: peeking a queue at dump, sending it again at
//! restore.
//!
//! Kernel mechanism: `recvmsg(MSG_PEEK)` with `SO_PEEK_OFF` walks a queue without consuming it,
//! one datagram per call, or a stream up to its end or up to and including the next message
//! that carries files (SCM_RIGHTS), whose files the kernel then installs in the peeking process
//! as new fds on the same open file descriptions (`unix_peek_fds`); [`super::scm`] dumps them.
//! Where that message began inside the stream is not visible (a peek walks on past the bytes
//! asked for, to the next message with files): ferry gives the files to the chunk's last byte
//! as an entry of its own, so reads that end at message boundaries or beyond receive them
//! exactly as before the dump (CRIU keeps the chunk whole, which hands the files out with the
//! earlier bytes). Restore sends each entry with one `sendmsg`, the files as SCM_RIGHTS.
//!
//! Refused by name: an out-of-band byte, and queued messages whose SCM_CREDENTIALS a restore
//! would change (another uid or gid than the restorer's with SO_PASSCRED on, or SO_PASSPIDFD
//! on: the image has no room for the sender, whose pid becomes the restorer's).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{getopt, setopt};

const SCM_PIDFD: i32 = 4;

/// One peeked message (or stream chunk) and the files that came with it.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Its bytes.
    pub data: Vec<u8>,
    /// Files in flight with it, as fds of ferry's on their descriptions.
    pub rights: Vec<OwnedFd>,
}

#[derive(Default)]
struct Cmsgs {
    rights: Vec<OwnedFd>,
    creds: Option<libc::ucred>,
}

/// Takes what a peek's control messages installed: SCM_RIGHTS fds are kept, SCM_PIDFD fds
/// closed, SCM_CREDENTIALS read.
fn take_cmsgs(ctl: &[u8], ctl_len: usize) -> Cmsgs {
    let mut out = Cmsgs::default();
    let end = ctl_len.min(ctl.len());
    let hdr = std::mem::size_of::<libc::cmsghdr>();
    let mut o = 0;
    while o + hdr <= end {
        // SAFETY: reading a cmsghdr the kernel wrote inside `ctl` (unaligned read).
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(ctl[o..].as_ptr().cast()) };
        let len = h.cmsg_len;
        if len < hdr || o + len > end {
            break;
        }
        let body = &ctl[o + hdr..o + len];
        if h.cmsg_level == libc::SOL_SOCKET {
            match h.cmsg_type {
                libc::SCM_RIGHTS | SCM_PIDFD => {
                    for c in body.chunks_exact(4) {
                        let fd = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                        if fd < 0 {
                            continue; // an SCM_PIDFD payload may be an errno
                        }
                        // SAFETY: the kernel just installed this fd in ferry for the peek;
                        // nobody else knows it.
                        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                        if h.cmsg_type == libc::SCM_RIGHTS {
                            out.rights.push(owned);
                        }
                    }
                }
                libc::SCM_CREDENTIALS if body.len() >= std::mem::size_of::<libc::ucred>() => {
                    // SAFETY: a ucred the kernel wrote (unaligned read).
                    out.creds = Some(unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) });
                }
                _ => {}
            }
        }
        o += len.next_multiple_of(std::mem::size_of::<usize>());
    }
    out
}

/// Reads the receive queue of `sk` without consuming it: one entry per datagram; a stream as
/// one entry per run of bytes ending with a message that carries files (or at its end).
pub fn peek_queue(sk: &OwnedFd, ty: u32) -> std::result::Result<Vec<Peeked>, String> {
    let fd = sk.as_raw_fd();
    let stream = ty == libc::SOCK_STREAM as u32;
    let get = |opt, what| {
        getopt::<libc::c_int>(fd, libc::SOL_SOCKET, opt).map_err(|e| format!("{what}: {e}"))
    };
    let orig = get(libc::SO_PEEK_OFF, "SO_PEEK_OFF")?;
    if stream {
        // An out-of-band byte would come back in-band: refuse it (peeking with MSG_OOB does
        // not consume it; EINVAL means there is none).
        let mut b = 0u8;
        // SAFETY: receiving at most one byte into `b`.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut b as *mut u8).cast(),
                1,
                libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 1 {
            return Err("an out-of-band byte (MSG_OOB) in its queue".into());
        }
    }
    let passcred = get(libc::SO_PASSCRED, "SO_PASSCRED")?;
    // Older kernels have no SO_PASSPIDFD: that is "off".
    let passpidfd = getopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_PASSPIDFD).unwrap_or(0);
    // A datagram peek answers 0 both for an empty datagram and for the end of a read-shut
    // queue; with SO_PASSCRED on, only a real datagram comes with SCM_CREDENTIALS.
    let set_cred = !stream && passcred == 0;
    if set_cred {
        setopt(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, &1)
            .map_err(|e| format!("SO_PASSCRED: {e}"))?;
    }
    // The receiver reads the sender's credentials: a restore sends as ferry, so only
    // messages from ferry's own uid and gid come back unchanged.
    // SAFETY: geteuid/getegid cannot fail.
    let me = (passcred != 0).then(|| unsafe { (libc::geteuid(), libc::getegid()) });
    let r = peek_all(fd, stream, me);
    // The task's own peek offset and SO_PASSCRED come back whatever happened.
    let back = setopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &orig);
    let back2 = if set_cred {
        setopt(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, &0)
    } else {
        Ok(())
    };
    let out = r?;
    back.map_err(|e| format!("restoring SO_PEEK_OFF: {e}"))?;
    back2.map_err(|e| format!("restoring SO_PASSCRED: {e}"))?;
    if passpidfd != 0 && !out.is_empty() {
        return Err(format!(
            "SCM_CREDENTIALS: SO_PASSPIDFD is on and {} messages are queued; a restore would \
             hand the receiver a pidfd of the restorer instead of each sender",
            out.len()
        ));
    }
    Ok(out)
}

fn peek_all(
    fd: RawFd,
    stream: bool,
    me: Option<(u32, u32)>,
) -> std::result::Result<Vec<Peeked>, String> {
    let mut out: Vec<Peeked> = Vec::new();
    // A stream peek stops only at a message with files or at the end of what fits: room for
    // the whole queue means a message with files is never split between two peeks (which
    // would hand out its files twice).
    let mut inq: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if stream && unsafe { libc::ioctl(fd, libc::FIONREAD, &mut inq) } != 0 {
        inq = 0;
    }
    let mut buf = vec![0u8; (inq.max(0) as usize).max(64 * 1024)];
    let mut ctl = vec![0u8; 4096];
    let mut off: libc::c_int = 0;
    let mut open = false; // stream: the last entry still takes bytes
    for _ in 0..1_000_000 {
        setopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &off)
            .map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; the pointers set below stay valid for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = ctl.len();
        let mut flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
        if !stream {
            flags |= libc::MSG_TRUNC;
        }
        // SAFETY: `msg` describes buffers owned by this function.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(out);
            }
            return Err(format!("recvmsg(MSG_PEEK): {e}"));
        }
        let cm = take_cmsgs(&ctl, msg.msg_controllen);
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(
                "SCM_RIGHTS: the control data of a queued message was truncated (ferry \
                        could not take every fd in flight: its RLIMIT_NOFILE?)"
                    .into(),
            );
        }
        let n = n as usize;
        if !stream && n == 0 && cm.creds.is_none() {
            return Ok(out); // end of a read-shut datagram queue
        }
        if !stream && n > buf.len() {
            buf.resize(n, 0);
            continue; // peek the same datagram again, whole (its fds are closed again)
        }
        if stream && n == 0 {
            return Ok(out); // end of stream after a shutdown
        }
        if let (Some((uid, gid)), Some(c)) = (me, cm.creds) {
            if (c.uid, c.gid) != (uid, gid) {
                return Err(format!(
                    "SCM_CREDENTIALS: SO_PASSCRED is on and a queued message was sent by pid {} \
                     uid {} gid {}; a restore would send it again as uid {uid} gid {gid}",
                    c.pid, c.uid, c.gid
                ));
            }
        }
        let data = &buf[..n];
        if stream {
            // A peek hands out the bytes of earlier messages glued to the one with the files,
            // and where that one starts is not visible (a peek walks on past the bytes asked
            // for, to the next message with files). Only the last byte goes with the files:
            // a receiver then gets them with the same read as before whenever its reads end
            // at message boundaries or beyond (never earlier than before the dump).
            let split = if cm.rights.is_empty() { n } else { n - 1 };
            let (plain, carrier) = data.split_at(split);
            if !plain.is_empty() {
                match out.last_mut().filter(|_| open) {
                    Some(p) => p.data.extend_from_slice(plain),
                    None => out.push(Peeked {
                        data: plain.to_vec(),
                        rights: Vec::new(),
                    }),
                }
                open = true;
            }
            if !carrier.is_empty() {
                out.push(Peeked {
                    data: carrier.to_vec(),
                    rights: cm.rights,
                });
                open = false;
            }
        } else {
            out.push(Peeked {
                data: data.to_vec(),
                rights: cm.rights,
            });
        }
        off = off
            .checked_add(n as libc::c_int)
            .ok_or("queue larger than 2 GiB")?;
    }
    Err("receive queue does not end".into())
}

// ---- restore ----

/// Sends `data` (all of it for a stream, one datagram otherwise) from `fd`, to the name `to`
/// if given; `rights` go with the first piece.
pub fn send_msg(
    fd: RawFd,
    data: &[u8],
    rights: &[RawFd],
    to: Option<&[u8]>,
    stream: bool,
) -> std::io::Result<()> {
    let addr = match to {
        Some(n) => Some(
            super::restore::sockaddr(n)
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?,
        ),
        None => None,
    };
    let space = if rights.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE only computes a size.
        unsafe { libc::CMSG_SPACE((rights.len() * 4) as u32) as usize }
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut ctl = vec![0u64; space.div_ceil(8)];
    let mut done = 0;
    let mut first = true;
    loop {
        let rest = &data[done..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: msghdr is plain data; every pointer set below stays valid for the call.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if let Some((a, len)) = &addr {
            m.msg_name = (a as *const libc::sockaddr_un as *mut libc::sockaddr_un).cast();
            m.msg_namelen = *len;
        }
        if first && space != 0 {
            m.msg_control = ctl.as_mut_ptr().cast();
            m.msg_controllen = space;
            // SAFETY: the control buffer has room for one cmsg with `rights.len()` fds.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN((rights.len() * 4) as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    rights.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(c),
                    rights.len() * 4,
                );
            }
        }
        // SAFETY: `m` describes buffers that live across the call.
        let n = unsafe { libc::sendmsg(fd, &m, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        first = false;
        done += n as usize;
        if !stream || done >= data.len() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::unix::scm::same_description;
    use std::os::unix::fs::MetadataExt;

    fn pair(ty: i32) -> (OwnedFd, OwnedFd) {
        let mut sv = [0i32; 2];
        // SAFETY: room for two fds.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: fresh fds we own.
        unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
    }

    fn send(fd: &OwnedFd, b: &[u8]) {
        send_msg(fd.as_raw_fd(), b, &[], None, false).unwrap();
    }

    fn ino(fd: RawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    #[test]
    fn peeks_datagrams_one_by_one_and_leaves_them() {
        let (a, b) = pair(libc::SOCK_SEQPACKET);
        send(&a, b"one");
        send(&a, b"");
        send(&a, &vec![7u8; 100_000]);
        let q = peek_queue(&b, libc::SOCK_SEQPACKET as u32).unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q[0].data, b"one");
        assert!(q[1].data.is_empty());
        assert_eq!(q[2].data.len(), 100_000);
        let off: libc::c_int = getopt(b.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap();
        assert_eq!(off, -1, "the peek offset is put back");
        let mut buf = [0u8; 8];
        // SAFETY: reading into `buf`.
        let n = unsafe { libc::recv(b.as_raw_fd(), buf.as_mut_ptr().cast(), 8, 0) };
        assert_eq!(&buf[..n as usize], b"one");
    }

    #[test]
    fn peeks_a_stream_whole() {
        let (a, b) = pair(libc::SOCK_STREAM);
        for i in 0..50u8 {
            send_msg(a.as_raw_fd(), &[i; 1000], &[], None, true).unwrap();
        }
        let q = peek_queue(&b, libc::SOCK_STREAM as u32).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].data.len(), 50_000);
        assert!(q[0]
            .data
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&x| x == i as u8)));
    }

    #[test]
    fn peeks_files_in_flight_on_their_descriptions_and_leaves_them() {
        let (a, b) = pair(libc::SOCK_DGRAM);
        let (x, y) = pair(libc::SOCK_STREAM);
        send(&a, b"plain");
        send_msg(
            a.as_raw_fd(),
            b"two",
            &[x.as_raw_fd(), y.as_raw_fd()],
            None,
            false,
        )
        .unwrap();
        let q = peek_queue(&b, libc::SOCK_DGRAM as u32).unwrap();
        assert_eq!(q.len(), 2);
        assert!(q[0].rights.is_empty());
        assert_eq!(q[1].data, b"two");
        assert_eq!(q[1].rights.len(), 2);
        assert!(same_description(q[1].rights[0].as_raw_fd(), x.as_raw_fd()));
        assert!(same_description(q[1].rights[1].as_raw_fd(), y.as_raw_fd()));
        assert_eq!(ino(q[1].rights[0].as_raw_fd()), ino(x.as_raw_fd()));
        drop(q);
        // Still queued: a second peek sees the same.
        let q = peek_queue(&b, libc::SOCK_DGRAM as u32).unwrap();
        assert_eq!(q[1].rights.len(), 2);
    }

    #[test]
    fn a_stream_chunk_with_files_ends_in_an_entry_of_its_last_byte() {
        let (a, b) = pair(libc::SOCK_STREAM);
        let (x, _y) = pair(libc::SOCK_STREAM);
        let s = |d: &[u8], r: &[RawFd]| send_msg(a.as_raw_fd(), d, r, None, true).unwrap();
        s(b"abc", &[]);
        s(b"def", &[x.as_raw_fd()]);
        s(b"ghi", &[]);
        s(b"jk", &[x.as_raw_fd()]);
        let q = peek_queue(&b, libc::SOCK_STREAM as u32).unwrap();
        let got: Vec<(&[u8], usize)> = q.iter().map(|p| (&p.data[..], p.rights.len())).collect();
        let want: [(&[u8], usize); 4] = [(b"abcde", 0), (b"f", 1), (b"ghij", 0), (b"k", 1)];
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_credentials_a_restore_would_change() {
        let (a, b) = pair(libc::SOCK_DGRAM);
        setopt(b.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, &1).unwrap();
        // Sent as another uid: a root sender may name any credentials it could have.
        let cred = libc::ucred {
            pid: std::process::id() as i32,
            uid: 4242,
            gid: 4343,
        };
        let mut ctl = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: b"x".as_ptr() as *mut _,
            iov_len: 1,
        };
        // SAFETY: msghdr is plain data; every pointer below is valid for the call.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE computes a size; the buffer has room for one ucred cmsg.
        unsafe {
            m.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_CREDENTIALS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), cred);
        }
        // SAFETY: sending the message built above.
        let n = unsafe { libc::sendmsg(a.as_raw_fd(), &m, 0) };
        assert_eq!(n, 1, "sendmsg as uid 4242 (the tests run as root)");
        let e = peek_queue(&b, libc::SOCK_DGRAM as u32).unwrap_err();
        assert!(
            e.contains("SCM_CREDENTIALS") && e.contains("uid 4242"),
            "{e}"
        );
    }

    #[test]
    fn refuses_an_out_of_band_byte() {
        let (a, b) = pair(libc::SOCK_STREAM);
        send_msg(a.as_raw_fd(), b"abc", &[], None, true).unwrap();
        // SAFETY: sending one byte from a static buffer.
        let n = unsafe { libc::send(a.as_raw_fd(), b"X".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(n, 1);
        let e = peek_queue(&b, libc::SOCK_STREAM as u32).unwrap_err();
        assert!(e.contains("MSG_OOB"), "{e}");
    }
}

//! The netlink plumbing both socket listings share (`unix_diag`, `inet_diag`): a
//! `NETLINK_SOCK_DIAG` socket made inside the task's network namespace, and one
//! `SOCK_DIAG_BY_FAMILY` dump — send the request, read answers until `NLMSG_DONE`, turn
//! `NLMSG_ERROR` into its errno, hand every other message's payload to the caller.
//!
//! A netlink socket keeps the namespace it was made in, and `setns(CLONE_NEWNET)` changes only
//! the calling thread: a short-lived helper thread makes the socket there, so a tree in a
//! namespace of its own is seen as it sees itself.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Size of `struct nlmsghdr`.
pub const NLMSG_HDR: usize = 16;

/// A native-endian u32 at `o`, if `b` holds it.
pub fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// A native-endian u16 at `o`, if `b` holds it.
pub fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
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

/// A sock_diag socket in the network namespace of `pid`.
pub fn socket_of(pid: i32) -> std::io::Result<OwnedFd> {
    let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let theirs = format!("/proc/{pid}/ns/net");
    if ns(&theirs)? == ns("/proc/thread-self/ns/net")? {
        return netlink();
    }
    let nsf = std::fs::File::open(&theirs)?;
    std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        // SAFETY: setns on an fd we hold, in a thread that does nothing else afterwards.
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        netlink()
    })
    .join()
    .map_err(|_| std::io::Error::other("sock_diag helper thread panicked"))?
}

/// Sends `req` on `sk` and calls `each` with the payload (after the netlink header) of every
/// answer until `NLMSG_DONE`. `what` names the messages in errors (e.g. "inet_diag").
pub fn dump(
    sk: &OwnedFd,
    req: &[u8],
    what: &str,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // SAFETY: sending a fully initialised buffer on a netlink socket we own.
    if unsafe { libc::send(sk.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
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
                return Err(std::io::Error::other(format!("truncated {what} message")));
            }
            match i32::from(ty) {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    let e = u32_at(b, o + NLMSG_HDR).unwrap_or(0) as i32;
                    return Err(std::io::Error::from_raw_os_error(-e));
                }
                _ => each(&b[o + NLMSG_HDR..o + len])?,
            }
            o += len.next_multiple_of(4);
        }
    }
}

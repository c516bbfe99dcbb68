//! An attached terminal for `run` and `exec -t` without `--console-socket`, as runc gives one.
//!
//! libcontainer hands a pty master out only through a console socket (AF_UNIX, the fd in an
//! SCM_RIGHTS message). ferry listens on a private socket of its own, takes the master, puts the
//! host terminal in raw mode (restored on drop) and copies stdin -> master and master -> stdout
//! until the process exits. Window size follows the host terminal (on start and on SIGWINCH).

use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

use super::{Error, Result};

/// A console socket ferry listens on while libcontainer creates the process.
pub struct Receiver {
    _dir: tempfile::TempDir,
    path: PathBuf,
    thread: JoinHandle<std::result::Result<OwnedFd, String>>,
}

/// Takes one pty master from one connection.
fn receive_master(listener: UnixListener) -> std::result::Result<OwnedFd, String> {
    let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    for cmsg in msg.cmsgs().map_err(|e| format!("control message: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err("no file descriptor in the console message".to_string())
}

impl Receiver {
    /// Listens on a fresh private socket.
    pub fn listen() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-console-")
            .tempdir()
            .map_err(Error::io(
                "create console socket directory in",
                std::env::temp_dir(),
            ))?;
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).map_err(Error::io("listen on", &path))?;
        let thread = std::thread::spawn(move || receive_master(listener));
        Ok(Receiver {
            _dir: dir,
            path,
            thread,
        })
    }

    /// The socket path to give libcontainer.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// The master, once libcontainer has sent it (after the builder returned).
    pub fn master(self) -> Result<OwnedFd> {
        match self.thread.join() {
            Ok(Ok(fd)) => Ok(fd),
            Ok(Err(e)) => Err(Error::Unsupported(format!(
                "receive the terminal from the container: {e}"
            ))),
            Err(_) => Err(Error::Unsupported(
                "receive the terminal from the container: receiver thread panicked".to_string(),
            )),
        }
    }
}

/// Copies the host window size onto the pty.
pub fn resize(master: RawFd) {
    let stdin = io::stdin().as_raw_fd();
    // SAFETY: winsize is plain data; zeroed is a valid value for it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives across the call.
    if unsafe { libc::ioctl(stdin, libc::TIOCGWINSZ, &mut ws) } != 0 {
        return; // stdin is no terminal: nothing to follow
    }
    // SAFETY: TIOCSWINSZ reads one winsize from `ws`.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
}

/// The host side of an attached terminal; restores the host terminal on drop.
pub struct Bridge {
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
    master: OwnedFd,
}

impl Bridge {
    /// Raw-modes the host terminal (if stdin is one) and starts copying both ways.
    pub fn start(master: OwnedFd) -> Result<Self> {
        let stdin = io::stdin();
        let saved = match termios::tcgetattr(stdin.as_fd()) {
            Ok(orig) => {
                let mut raw = orig.clone();
                termios::cfmakeraw(&mut raw);
                termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
                    .map_err(Error::sys("put the terminal in raw mode"))?;
                Some(orig)
            }
            Err(_) => None,
        };
        resize(master.as_raw_fd());
        let to_master = master
            .try_clone()
            .map_err(Error::io("duplicate pty master", "ptmx"))?;
        // stdin -> master: detached; it ends with the process (EIO) or with ferry.
        std::thread::spawn(move || {
            let mut m = File::from(to_master);
            let _ = io::copy(&mut io::stdin(), &mut m);
        });
        let from_master = master
            .try_clone()
            .map_err(Error::io("duplicate pty master", "ptmx"))?;
        let output = std::thread::spawn(move || {
            let mut m = File::from(from_master);
            let mut buf = [0u8; 8192];
            let mut out = io::stdout();
            loop {
                match m.read(&mut buf) {
                    Ok(0) | Err(_) => break, // EIO once every slave fd is closed
                    Ok(n) => {
                        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Bridge {
            saved,
            output: Some(output),
            master,
        })
    }

    /// The master's raw fd (for resizing).
    pub fn master_fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Let the output copier drain what the process wrote last; a descendant that keeps the
        // slave open must not hold ferry forever.
        if let Some(t) = self.output.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        if let Some(orig) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, orig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::{IoSlice, Seek};
    use std::os::unix::net::UnixStream;

    #[test]
    fn receiver_takes_the_fd_sent_over_its_socket() {
        let recv = Receiver::listen().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"master").unwrap();
        let conn = UnixStream::connect(recv.path()).unwrap();
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = File::from(recv.master().unwrap());
        // Same open file description: the offset written through `file` is seen through `got`.
        let mut got = got;
        assert_eq!(got.stream_position().unwrap(), 6);
    }

    #[test]
    fn a_connection_without_fd_is_an_error() {
        let recv = Receiver::listen().unwrap();
        let mut conn = UnixStream::connect(recv.path()).unwrap();
        conn.write_all(b"no fd").unwrap();
        drop(conn);
        assert!(recv.master().is_err());
    }
}

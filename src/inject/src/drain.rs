//! Draining a task's memory through a pipe, without copying it through ptrace.
//!
//! Kernel mechanism: the parasite creates a pipe in the task (`pipe2`, enlarged with
//! F_SETPIPE_SZ up to the 1 MiB an unprivileged pipe may have), and ferry takes its read end
//! with `pidfd_getfd` (allowed to a tracer, and independent of the task's mount and pid
//! namespaces, which an open of `/proc/<ferry>/fd` from inside a container would not be). The
//! parasite then `vmsplice`s ranges of the task's memory into the write end: the pipe holds
//! references to the task's pages, not copies, and ferry `splice`s them from the read end into
//! the image file. Both run at once: vmsplice blocks when the pipe is full until ferry empties it.
//! The task is frozen in the parasite meanwhile, so the pages cannot change under the transfer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use ferry_blob_abi::{
    CloseFdArgs, Command, DrainArgs, DrainResult, Iovec, OpenPipeArgs, PipeResult, MAX_DRAIN_IOVS,
};

use crate::parasite::{Parasite, ParasiteError};

type Result<T> = std::result::Result<T, ParasiteError>;

/// A pipe whose write end lives in the task and whose read end ferry holds.
#[derive(Debug)]
pub struct TaskPipe {
    rd: OwnedFd,
    wr: i32,
    size: u32,
}

impl TaskPipe {
    /// ferry's read end.
    pub fn reader(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.rd.as_fd()
    }

    /// The write end's number in the task's fd table.
    pub fn task_fd(&self) -> i32 {
        self.wr
    }

    /// Capacity the kernel granted.
    pub fn capacity(&self) -> u32 {
        self.size
    }
}

fn local_err(pid: i32, what: &'static str) -> impl FnOnce(io::Error) -> ParasiteError {
    move |source| ParasiteError::Local { pid, what, source }
}

/// Takes a copy of the task's fd `fd` into ferry's table.
fn pidfd_getfd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `pidfd` is a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Parasite {
    /// Creates a pipe of (at least the default, at most) `size` bytes for [`Parasite::drain`].
    pub fn open_pipe(&mut self, size: u32) -> Result<TaskPipe> {
        self.write_args(&OpenPipeArgs { size, pad: 0 });
        let r: PipeResult = self.result(Command::OpenPipe)?;
        self.task_fds.extend([r.rd, r.wr]);
        let rd = pidfd_getfd(self.pid(), r.rd)
            .map_err(local_err(self.pid(), "pidfd_getfd of the pipe's read end"))?;
        self.close_task_fd(r.rd)?;
        Ok(TaskPipe {
            rd,
            wr: r.wr,
            size: r.size,
        })
    }

    /// Closes the task's end of `pipe`.
    pub fn close_pipe(&mut self, pipe: TaskPipe) -> Result<()> {
        self.close_task_fd(pipe.wr)
    }

    fn close_task_fd(&mut self, fd: i32) -> Result<()> {
        self.write_args(&CloseFdArgs { fd, pad: 0 });
        self.call(Command::CloseFd)?;
        self.task_fds.retain(|&f| f != fd);
        Ok(())
    }

    /// Moves the task memory in `ranges` into `out` (at `offset`, advanced, or at the file
    /// position if `None`) and returns the byte count. On error the parasite may still be
    /// inside vmsplice: only [`Parasite::cure`] (or drop) is valid afterwards.
    pub fn drain(
        &mut self,
        pipe: &TaskPipe,
        ranges: &[Iovec],
        out: BorrowedFd<'_>,
        mut offset: Option<&mut i64>,
    ) -> Result<u64> {
        let mut total = 0;
        for chunk in ranges.chunks(MAX_DRAIN_IOVS) {
            let r = self.drain_chunk(pipe, chunk, out, offset.as_deref_mut());
            match r {
                Ok(n) => total += n,
                Err(e) => {
                    if let Ok(fd) = pipe.rd.try_clone() {
                        self.keepalive.push(fd);
                    }
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    fn drain_chunk(
        &mut self,
        pipe: &TaskPipe,
        chunk: &[Iovec],
        out: BorrowedFd<'_>,
        mut offset: Option<&mut i64>,
    ) -> Result<u64> {
        let pid = self.pid();
        let cmd = Command::DrainPages;
        let mut args = DrainArgs {
            fd: pipe.wr,
            nr: chunk.len() as u32,
            iovs: [Iovec::default(); MAX_DRAIN_IOVS],
        };
        args.iovs[..chunk.len()].copy_from_slice(chunk);
        let want: u64 = chunk.iter().map(|v| v.len).sum();
        self.write_args(&args);
        let seq = self.post(cmd);
        let mut moved = 0u64;
        let mut deadline = Instant::now() + self.timeout();
        while moved < want {
            let off_ptr = offset
                .as_deref_mut()
                .map_or(std::ptr::null_mut(), |o| o as *mut i64);
            let len = (want - moved) as usize;
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
            // SAFETY: both fds are valid for the call; `off_ptr` is null or points to an i64
            // the caller lent us.
            let n = unsafe {
                libc::splice(
                    pipe.rd.as_raw_fd(),
                    std::ptr::null_mut(),
                    out.as_raw_fd(),
                    off_ptr,
                    len,
                    flags,
                )
            };
            if n > 0 {
                moved += n as u64;
                deadline = Instant::now() + self.timeout();
                continue;
            }
            let err = io::Error::last_os_error();
            if n == 0 || err.raw_os_error() != Some(libc::EAGAIN) {
                // EOF means every writer is gone: the task died; let watch() say so.
                self.watch(cmd)?;
                let source = if n == 0 {
                    io::Error::from(io::ErrorKind::UnexpectedEof)
                } else {
                    err
                };
                return Err(ParasiteError::Local {
                    pid,
                    what: "splice from the task's pipe",
                    source,
                });
            }
            if self.acked(seq) {
                // The parasite finished early: an error, or fewer bytes than asked for.
                self.wait_ack(cmd, seq)?;
                let source =
                    io::Error::other(format!("parasite stopped after {moved} of {want} bytes"));
                return Err(ParasiteError::Local {
                    pid,
                    what: "drain",
                    source,
                });
            }
            let mut pfd = libc::pollfd {
                fd: pipe.rd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10) };
            self.watch(cmd)?;
            if Instant::now() > deadline {
                return Err(ParasiteError::Timeout {
                    pid,
                    cmd,
                    timeout: self.timeout(),
                });
            }
        }
        let size = self.wait_ack(cmd, seq)?;
        let r: DrainResult = self.read_result(cmd, size)?;
        if r.bytes != want {
            let source = io::Error::other(format!(
                "parasite spliced {} bytes, ferry read {want}",
                r.bytes
            ));
            return Err(ParasiteError::Local {
                pid,
                what: "drain",
                source,
            });
        }
        Ok(want)
    }
}

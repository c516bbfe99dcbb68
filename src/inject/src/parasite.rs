//! Loading the parasite blob into a task, talking to it, and curing the task afterwards.
//!
//! Kernel mechanism: through remote syscalls the task maps an anonymous scratch area, writes the
//! memfd name there, calls `memfd_create`, sizes the memfd and maps it `MAP_SHARED|MAP_FIXED`
//! over the scratch area, read-write-execute. ferry opens the same memfd through
//! `/proc/PID/fd/N` and maps it too, so both address spaces see the same pages: ferry copies the
//! blob in, applies the RELATIVE relocations for the task's base address, and exchanges commands
//! and results through the control block without any copying through ptrace. The task then
//! closes its fd (the mapping keeps the memfd alive), and the parasite runs on the task's thread
//! with its own stack, serving commands until `Fini` traps it on `int3`. Curing unmaps the area
//! with a remote `munmap` and restores registers, XSAVE state and signal mask (see
//! [`crate::session`]), so /proc/PID/maps, registers and mask end exactly as they were.
//!
//! Layout of the memfd (offsets from the task's base): `[blob | control area | stack]`, see
//! [`ferry_blob_abi::Layout`] and docs/blob-abi.md.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_blob_abi::{
    Command, Control, HelloResult, ItimersResult, Layout, MiscResult, SigactionsResult,
    ThreadResult, ABI_VERSION, PARASITE_MAGIC, PAYLOAD_OFFSET, STATE_BAD_HEADER,
};

use crate::blob::{PARASITE_BLOB, PARASITE_RELOCS};
use crate::mem::{self, MemError};
use crate::ptrace::{Polled, PtraceError, Running, StopKind, Stopped};
use crate::session::{Session, SessionError};

/// Errors of parasite loading, commands and cure.
#[derive(Debug, thiserror::Error)]
pub enum ParasiteError {
    /// A session step (ptrace, remote syscall, restore) failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Remote memory access failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// A remote syscall of the loader returned an error.
    #[error("task {pid}: remote {what} failed: {source}")]
    Remote {
        pid: i32,
        what: &'static str,
        source: io::Error,
    },
    /// A host-side step of the loader failed.
    #[error("task {pid}: {what}: {source}")]
    Local {
        pid: i32,
        what: &'static str,
        source: io::Error,
    },
    /// The parasite rejected the control header (magic or ABI version mismatch).
    #[error("task {pid}: parasite rejected the control block (ABI version {ABI_VERSION})")]
    BadHeader { pid: i32 },
    /// The parasite answered a command with an error.
    #[error("task {pid}: parasite command {cmd:?} failed: {source}")]
    Command {
        pid: i32,
        cmd: Command,
        source: io::Error,
    },
    /// The task stopped while the parasite was running (a fault in the blob, or a trap).
    #[error("task {pid}: stopped during parasite command {cmd:?} with {stop:?} at rip {rip:#x} (blob at {base:#x})")]
    Stopped {
        pid: i32,
        cmd: Command,
        stop: StopKind,
        rip: u64,
        base: u64,
    },
    /// The parasite did not answer in time.
    #[error("task {pid}: parasite command {cmd:?} timed out after {timeout:?}")]
    Timeout {
        pid: i32,
        cmd: Command,
        timeout: Duration,
    },
    /// The result did not have the size the ABI fixes.
    #[error("task {pid}: parasite command {cmd:?} returned {got} bytes, expected {want}")]
    ResultSize {
        pid: i32,
        cmd: Command,
        got: u32,
        want: usize,
    },
}

impl From<PtraceError> for ParasiteError {
    fn from(e: PtraceError) -> Self {
        ParasiteError::Session(e.into())
    }
}

type Result<T> = std::result::Result<T, ParasiteError>;

const MFD_NAME: &[u8] = b"ferry-parasite\0";

/// ferry's own mapping of the shared memfd.
#[derive(Debug)]
struct LocalMap {
    ptr: *mut u8,
    len: usize,
}

impl Drop for LocalMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows the mapping past
        // the owning Parasite.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn futex(word: &AtomicU32, op: i32, val: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live u32 in a MAP_SHARED mapping; a shared (non-PRIVATE) futex keys on
    // the memfd page, which is what the parasite waits on/wakes too. `ts_ptr` is null or valid.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            ts_ptr,
            0usize,
            0u32,
        )
    };
}

/// A parasite living in a seized task.
#[derive(Debug)]
pub struct Parasite {
    pid: i32,
    session: Option<Session>,
    running: Option<Running>,
    base: u64,
    pub(crate) layout: Layout,
    local: LocalMap,
    seq: u32,
    timeout: Duration,
    unmapped: bool,
    /// fds the parasite opened in the task and has not closed yet; closed remotely at cure.
    pub(crate) task_fds: Vec<i32>,
    /// Read ends kept open until cure, so a parasite left inside vmsplice by an error never
    /// writes into a reader-less pipe (which would queue SIGPIPE for the task).
    pub(crate) keepalive: Vec<std::os::fd::OwnedFd>,
}

fn remote_ok(pid: i32, what: &'static str, ret: i64) -> Result<u64> {
    if (-4095..0).contains(&ret) {
        let source = io::Error::from_raw_os_error(-ret as i32);
        return Err(ParasiteError::Remote { pid, what, source });
    }
    Ok(ret as u64)
}

impl Parasite {
    /// Maps the parasite into the session's task and starts it. On error everything mapped so
    /// far is unmapped again and the session restores the task when dropped.
    pub fn inject(mut session: Session) -> Result<Parasite> {
        let pid = session.pid();
        let layout = Layout::for_blob(PARASITE_BLOB.len());
        let total = layout.total as u64;
        let prot_rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let r = session.syscall(libc::SYS_mmap, &[0, total, prot_rw, anon, u64::MAX, 0])?;
        let base = remote_ok(pid, "mmap of the scratch area", r)?;
        let mut fd = None;
        match Self::map_shared(&mut session, base, total, &mut fd) {
            Ok(local) => {
                let mut p = Parasite {
                    pid,
                    session: Some(session),
                    running: None,
                    base,
                    layout,
                    local,
                    seq: 0,
                    timeout: Duration::from_secs(10),
                    unmapped: false,
                    task_fds: Vec::new(),
                    keepalive: Vec::new(),
                };
                p.load();
                p.start()?;
                Ok(p)
            }
            Err(e) => {
                if let Some(fd) = fd {
                    let _ = session.syscall(libc::SYS_close, &[fd]);
                }
                let _ = session.syscall(libc::SYS_munmap, &[base, total]);
                Err(e)
            }
        }
    }

    fn map_shared(
        session: &mut Session,
        base: u64,
        total: u64,
        fd_out: &mut Option<u64>,
    ) -> Result<LocalMap> {
        let pid = session.pid();
        mem::write(pid, base, MFD_NAME)?;
        let r = session.syscall(libc::SYS_memfd_create, &[base, libc::MFD_CLOEXEC as u64])?;
        let fd = remote_ok(pid, "memfd_create", r)?;
        *fd_out = Some(fd);
        let r = session.syscall(libc::SYS_ftruncate, &[fd, total])?;
        remote_ok(pid, "ftruncate of the memfd", r)?;
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
        let r = session.syscall(libc::SYS_mmap, &[base, total, prot, flags, fd, 0])?;
        if remote_ok(pid, "mmap of the memfd", r)? != base {
            let source = io::Error::other(format!("mapped at {r:#x}, wanted {base:#x}"));
            return Err(ParasiteError::Remote {
                pid,
                what: "mmap of the memfd",
                source,
            });
        }
        let path = format!("/proc/{pid}/fd/{fd}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| ParasiteError::Local {
                pid,
                what: "open of the task's memfd",
                source,
            })?;
        // SAFETY: a fresh shared mapping of a file we hold open; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            return Err(ParasiteError::Local {
                pid,
                what: "mmap of the memfd in ferry",
                source,
            });
        }
        let local = LocalMap {
            ptr: ptr.cast(),
            len: total as usize,
        };
        // The mapping keeps the memfd alive in the task: its fd table ends as it was.
        let r = session.syscall(libc::SYS_close, &[fd])?;
        remote_ok(pid, "close of the memfd", r)?;
        *fd_out = None;
        Ok(local)
    }

    /// Copies the blob in, relocates it for the task's base, and initialises the control block.
    fn load(&mut self) {
        // SAFETY: the local mapping is `layout.total` bytes, larger than the blob plus control
        // area; only ferry writes to it while the parasite is not running.
        let mem = unsafe { std::slice::from_raw_parts_mut(self.local.ptr, self.local.len) };
        mem[..PARASITE_BLOB.len()].copy_from_slice(PARASITE_BLOB);
        for &(off, addend) in PARASITE_RELOCS {
            let off = off as usize;
            mem[off..off + 8].copy_from_slice(&(self.base + addend).to_le_bytes());
        }
        let ctl = self.layout.control;
        mem[ctl..ctl + PAYLOAD_OFFSET].fill(0);
        mem[ctl..ctl + 4].copy_from_slice(&PARASITE_MAGIC.to_le_bytes());
        mem[ctl + 4..ctl + 8].copy_from_slice(&ABI_VERSION.to_le_bytes());
    }

    fn control(&self) -> &Control {
        // SAFETY: the control area lies inside the mapping, is 4096-aligned, and Control is
        // repr(C) with atomics for the fields both sides touch concurrently.
        unsafe { &*(self.local.ptr.add(self.layout.control) as *const Control) }
    }

    fn session(&mut self) -> Result<&mut Session> {
        let pid = self.pid;
        self.session
            .as_mut()
            .ok_or(SessionError::Lost { pid }.into())
    }

    fn start(&mut self) -> Result<()> {
        let (base, layout) = (self.base, self.layout);
        let session = self.session()?;
        let mut regs = session.saved().regs;
        regs.rip = base;
        regs.rsp = base + layout.stack_top as u64;
        regs.rdi = base + layout.control as u64;
        regs.orig_rax = u64::MAX;
        let task = session.take()?;
        if let Err(e) = task.set_regs(&regs) {
            session.put(task);
            return Err(e.into());
        }
        self.running = Some(task.cont(0)?);
        Ok(())
    }

    /// Sets how long a command may take before it counts as hung (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The task's address of the blob.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size of the area mapped into the task.
    pub fn mapped_len(&self) -> usize {
        self.layout.total
    }

    /// Writes `cmd` into the control block and wakes the parasite; returns the sequence number.
    pub(crate) fn post(&mut self, cmd: Command) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let ctl_ptr = (self.local.ptr as usize + self.layout.control) as *mut Control;
        // SAFETY: the parasite reads `cmd` only after it sees the new `cmd_seq` (Release below).
        unsafe { std::ptr::addr_of_mut!((*ctl_ptr).cmd).write_volatile(cmd as u32) };
        self.control().cmd_seq.store(self.seq, Ordering::Release);
        futex(
            &self.control().cmd_seq,
            libc::FUTEX_WAKE,
            i32::MAX as u32,
            None,
        );
        self.seq
    }

    /// Posts `cmd` and waits for its acknowledgement, watching the task meanwhile.
    pub(crate) fn call(&mut self, cmd: Command) -> Result<u32> {
        let seq = self.post(cmd);
        self.wait_ack(cmd, seq)
    }

    /// Whether the parasite has acknowledged command `seq`.
    pub(crate) fn acked(&self, seq: u32) -> bool {
        self.control().ack_seq.load(Ordering::Acquire) == seq
    }

    /// Waits until command `seq` is acknowledged; returns its result size.
    pub(crate) fn wait_ack(&mut self, cmd: Command, seq: u32) -> Result<u32> {
        let pid = self.pid;
        let deadline = Instant::now() + self.timeout;
        while !self.acked(seq) {
            let ctl = self.control();
            if ctl.state.load(Ordering::Acquire) == STATE_BAD_HEADER {
                return Err(ParasiteError::BadHeader { pid });
            }
            let wait = Some(Duration::from_millis(10));
            futex(&ctl.ack_seq, libc::FUTEX_WAIT, seq.wrapping_sub(1), wait);
            if self.acked(seq) {
                break;
            }
            self.watch(cmd)?;
            if Instant::now() > deadline {
                let timeout = self.timeout;
                return Err(ParasiteError::Timeout { pid, cmd, timeout });
            }
        }
        let ctl_ptr = (self.local.ptr as usize + self.layout.control) as *const Control;
        // SAFETY: written by the parasite before it published `ack_seq` (Acquire in `acked`).
        let (status, size) = unsafe {
            (
                std::ptr::addr_of!((*ctl_ptr).status).read_volatile(),
                std::ptr::addr_of!((*ctl_ptr).result_size).read_volatile(),
            )
        };
        if status != 0 {
            let source = io::Error::from_raw_os_error(-status);
            return Err(ParasiteError::Command { pid, cmd, source });
        }
        Ok(size)
    }

    /// Copies a command's arguments into the payload (before [`Parasite::post`]).
    pub(crate) fn write_args<T: Copy>(&mut self, args: &T) {
        const { assert!(std::mem::size_of::<T>() <= ferry_blob_abi::PAYLOAD_SIZE) };
        // SAFETY: the payload has PAYLOAD_SIZE bytes (asserted above), is 8-aligned, and the
        // parasite does not touch it until the command is posted.
        unsafe {
            let dst = self.local.ptr.add(self.layout.control + PAYLOAD_OFFSET) as *mut T;
            dst.write(*args);
        }
    }

    /// Fails if the task stopped or died while the parasite should be running.
    /// The mapped area as ferry sees it (blob, control areas, stacks).
    pub(crate) fn shared_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`; callers only write
        // areas the parasite is not using at the time.
        unsafe { std::slice::from_raw_parts_mut(self.local.ptr, self.local.len) }
    }

    /// The task's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How long one command may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn watch(&mut self, cmd: Command) -> Result<()> {
        let pid = self.pid;
        let running = self.running.take().ok_or(SessionError::Lost { pid })?;
        match running.poll_in_session("parasite command")? {
            Polled::Running(r) => {
                self.running = Some(r);
                Ok(())
            }
            Polled::Stopped(s) => {
                let stop = s.kind();
                let rip = s.regs().map(|r| r.rip).unwrap_or(0);
                self.session()?.put(s);
                Err(ParasiteError::Stopped {
                    pid,
                    cmd,
                    stop,
                    rip,
                    base: self.base,
                })
            }
        }
    }

    pub(crate) fn result<T: Copy>(&mut self, cmd: Command) -> Result<T> {
        let size = self.call(cmd)?;
        self.read_result(cmd, size)
    }

    /// Reads a `T` result of `size` bytes from the daemon's payload.
    pub(crate) fn read_result<T: Copy>(&self, cmd: Command, size: u32) -> Result<T> {
        self.read_payload(self.layout.control, cmd, size)
    }

    /// Reads a `T` result of `size` bytes from the payload of the control area at `ctl_off`.
    pub(crate) fn read_payload<T: Copy>(
        &self,
        ctl_off: usize,
        cmd: Command,
        size: u32,
    ) -> Result<T> {
        let want = std::mem::size_of::<T>();
        if size as usize != want {
            return Err(ParasiteError::ResultSize {
                pid: self.pid,
                cmd,
                got: size,
                want,
            });
        }
        // SAFETY: the payload holds a complete `T` (size checked, written before the ack); all
        // result types are plain integers, so any bytes are a valid value.
        Ok(unsafe { std::ptr::read(self.local.ptr.add(ctl_off + PAYLOAD_OFFSET) as *const T) })
    }

    /// pid and tid as the task sees them.
    pub fn hello(&mut self) -> Result<HelloResult> {
        self.result(Command::Hello)
    }

    /// Every signal's disposition (index n-1 = signal n).
    pub fn sigactions(&mut self) -> Result<SigactionsResult> {
        self.result(Command::DumpSigactions)
    }

    /// The three interval timers.
    pub fn itimers(&mut self) -> Result<ItimersResult> {
        self.result(Command::DumpItimers)
    }

    /// personality, umask, dumpable, pdeath signal.
    pub fn misc(&mut self) -> Result<MiscResult> {
        self.result(Command::DumpMisc)
    }

    /// Per-thread state of the thread running the parasite.
    pub fn thread(&mut self) -> Result<ThreadResult> {
        self.result(Command::DumpThread)
    }

    /// Ends the parasite and cures the task: blob unmapped, registers, XSAVE state and signal
    /// mask restored. Returns the task still stopped, to be detached or dumped further.
    pub fn cure(mut self) -> Result<Stopped> {
        let first = self.finish().err();
        let cured = self.cure_inner();
        match (first, cured) {
            (None, Ok(())) => Ok(self.session.take().expect("cured session").end()?),
            // A cleanup error never hides the first error.
            (Some(e), _) | (None, Err(e)) => Err(e),
        }
    }

    /// Sends Fini and waits for the parasite's int3.
    fn finish(&mut self) -> Result<()> {
        let pid = self.pid;
        // No ack to wait for: the parasite's int3 right after it is the answer.
        self.post(Command::Fini);
        let deadline = Instant::now() + self.timeout;
        loop {
            let running = self.running.take().ok_or(SessionError::Lost { pid })?;
            match running.poll_in_session("parasite fini")? {
                Polled::Running(r) => self.running = Some(r),
                Polled::Stopped(s) => {
                    let stop = s.kind();
                    let rip = s.regs()?.rip;
                    self.session()?.put(s);
                    let in_blob = rip > self.base && rip <= self.base + PARASITE_BLOB.len() as u64;
                    if stop == StopKind::Signal(libc::SIGTRAP) && in_blob {
                        return Ok(());
                    }
                    return Err(ParasiteError::Stopped {
                        pid,
                        cmd: Command::Fini,
                        stop,
                        rip,
                        base: self.base,
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(ParasiteError::Timeout {
                    pid,
                    cmd: Command::Fini,
                    timeout: self.timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the task wherever the parasite is and unmaps the blob area.
    fn cure_inner(&mut self) -> Result<()> {
        if let Some(running) = self.running.take() {
            let stopped = running.stop_now()?;
            self.session()?.put(stopped);
        }
        if self.unmapped {
            return Ok(());
        }
        // Leave the fd table as it was: close what the parasite opened and never closed.
        while let Some(fd) = self.task_fds.pop() {
            let r = self.session()?.syscall(libc::SYS_close, &[fd as u64])?;
            remote_ok(self.pid, "close of a parasite fd", r)?;
        }
        let (base, total) = (self.base, self.layout.total as u64);
        let r = self.session()?.syscall(libc::SYS_munmap, &[base, total])?;
        remote_ok(self.pid, "munmap of the parasite", r)?;
        self.unmapped = true;
        self.keepalive.clear();
        Ok(())
    }
}

impl Drop for Parasite {
    fn drop(&mut self) {
        // Error path: cure as far as possible; the session restores and detaches when dropped.
        if self.session.is_some() {
            let _ = self.cure_inner();
        }
    }
}

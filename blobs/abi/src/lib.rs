//! The binary interface between ferry (the host) and its parasite blob.
//!
//! Both sides compile this crate: the host with std, the blob with `#![no_std]`. Everything here is
//! `repr(C)` with fixed-width fields and explicit padding, and every size and offset the other side
//! relies on is pinned by a `const` assertion, so a layout change breaks the build instead of a dump.
//! docs/blob-abi.md draws the byte layouts.
//!
//! The control channel is a [`Control`] block in a memfd mapped `MAP_SHARED` by both ferry and the
//! task. The host writes a command and its arguments, bumps `cmd_seq` and wakes the futex on it; the
//! parasite runs the command, writes `status` and the result, copies `cmd_seq` into `ack_seq` and
//! wakes the futex on that. Shared (non-private) futexes key on the memfd page, so the same word
//! works in both address spaces.
#![no_std]

use core::mem::{offset_of, size_of};
use core::sync::atomic::AtomicU32;

pub mod restorer;

/// `Control::magic`: "FRYP" little-endian.
pub const PARASITE_MAGIC: u32 = u32::from_le_bytes(*b"FRYP");
/// Bumped on any incompatible change of this crate's types.
pub const ABI_VERSION: u32 = 2;

/// Page size the layout is built on (x86_64).
pub const PAGE_SIZE: usize = 4096;
/// Size of the control area: the [`Control`] header followed by the argument/result payload.
pub const CONTROL_AREA_SIZE: usize = 2 * PAGE_SIZE;
/// Offset of the payload inside the control area.
pub const PAYLOAD_OFFSET: usize = 64;
/// Bytes available for one command's arguments or result.
pub const PAYLOAD_SIZE: usize = CONTROL_AREA_SIZE - PAYLOAD_OFFSET;
/// The parasite's own stack, placed right after the control area.
pub const PARASITE_STACK_SIZE: usize = 32 * 1024;
/// Highest signal number on x86_64 Linux.
pub const SIG_MAX: usize = 64;

/// Commands the host may send. Travels as a raw `u32` in [`Control::cmd`]; the parasite answers an
/// unknown value with `-ENOSYS` rather than trusting it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Liveness check; result [`HelloResult`].
    Hello = 1,
    /// `rt_sigaction` of every signal but SIGKILL/SIGSTOP; result [`SigactionsResult`].
    DumpSigactions = 2,
    /// `getitimer` of ITIMER_REAL/VIRTUAL/PROF; result [`ItimersResult`].
    DumpItimers = 3,
    /// personality, umask, dumpable, pdeath signal; result [`MiscResult`].
    DumpMisc = 4,
    /// Per-thread state (tid, sigaltstack, pdeath signal); result [`ThreadResult`].
    DumpThread = 5,
    /// End the session: the parasite leaves its loop and stops on `int3` so the host can cure.
    Fini = 6,
    /// Create a pipe in the task (args [`OpenPipeArgs`], result [`PipeResult`]); the host takes
    /// the read end with pidfd_getfd and closes the task's copy with `CloseFd`.
    OpenPipe = 7,
    /// Close one of the task's fds the parasite opened (args [`CloseFdArgs`], no result).
    CloseFd = 8,
    /// vmsplice the listed ranges of the task's memory into a pipe (args [`DrainArgs`], result
    /// [`DrainResult`]); the host splices them out of the other end meanwhile.
    DrainPages = 9,
    /// `timer_gettime` and `timer_getoverrun` of the listed POSIX timers (args
    /// [`PosixTimersArgs`], result [`PosixTimersResult`]).
    DumpPosixTimers = 10,
}

impl Command {
    /// Decodes a raw command word.
    pub const fn from_raw(raw: u32) -> Option<Command> {
        Some(match raw {
            1 => Command::Hello,
            2 => Command::DumpSigactions,
            3 => Command::DumpItimers,
            4 => Command::DumpMisc,
            5 => Command::DumpThread,
            6 => Command::Fini,
            7 => Command::OpenPipe,
            8 => Command::CloseFd,
            9 => Command::DrainPages,
            10 => Command::DumpPosixTimers,
            _ => return None,
        })
    }
}

/// Header of the control area (offset 0 of the area, 64 bytes; payload follows at 64).
#[repr(C)]
pub struct Control {
    /// [`PARASITE_MAGIC`], written by the host before the parasite starts.
    pub magic: u32,
    /// [`ABI_VERSION`], written by the host; the parasite refuses a mismatch.
    pub version: u32,
    /// Host → parasite futex word: incremented once per command posted.
    pub cmd_seq: AtomicU32,
    /// Parasite → host futex word: set to `cmd_seq` when the command's result is complete.
    pub ack_seq: AtomicU32,
    /// A [`Command`] as `u32`.
    pub cmd: u32,
    /// 0 on success, else a negative errno from the failing syscall (or `-ENOSYS`/`-EPROTO`).
    pub status: i32,
    /// Bytes of the payload the result occupies.
    pub result_size: u32,
    /// Parasite lifecycle, see the `STATE_*` constants.
    pub state: AtomicU32,
    /// [`MODE_DAEMON`] or [`MODE_ONESHOT`], written by the host before the parasite starts.
    pub mode: u32,
    /// Reserved, zero.
    pub reserved: [u32; 7],
}

/// `Control::mode`: serve commands until `Fini` (the task's main thread).
pub const MODE_DAEMON: u32 = 0;
/// `Control::mode`: run the one posted command, then stop on `int3` (any other thread, with its
/// own control area and stack).
pub const MODE_ONESHOT: u32 = 1;

/// `Control::state`: the host has not started the parasite yet.
pub const STATE_IDLE: u32 = 0;
/// `Control::state`: the parasite is in its command loop.
pub const STATE_READY: u32 = 1;
/// `Control::state`: the parasite refused the header (bad magic or version) and stopped.
pub const STATE_BAD_HEADER: u32 = 2;
/// `Control::state`: the parasite left its loop after `Fini`.
pub const STATE_DONE: u32 = 3;

const _: () = assert!(size_of::<Control>() == PAYLOAD_OFFSET);
const _: () = assert!(offset_of!(Control, cmd_seq) == 8);
const _: () = assert!(offset_of!(Control, ack_seq) == 12);
const _: () = assert!(offset_of!(Control, cmd) == 16);
const _: () = assert!(offset_of!(Control, status) == 20);
const _: () = assert!(offset_of!(Control, result_size) == 24);
const _: () = assert!(offset_of!(Control, state) == 28);
const _: () = assert!(offset_of!(Control, mode) == 32);

/// Result of [`Command::Hello`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloResult {
    /// `getpid()` as the task sees it (its own pid namespace).
    pub pid: i32,
    /// `gettid()`.
    pub tid: i32,
}
const _: () = assert!(size_of::<HelloResult>() == 8);

/// The kernel's `struct sigaction` on x86_64 (not glibc's): handler, flags, restorer, mask.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KSigaction {
    /// `sa_handler`/`sa_sigaction` (0 = SIG_DFL, 1 = SIG_IGN).
    pub handler: u64,
    /// `sa_flags` (SA_SIGINFO, SA_RESTART, SA_RESTORER, ...).
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`, bit `n-1` for signal `n`.
    pub mask: u64,
}
const _: () = assert!(size_of::<KSigaction>() == 32);
const _: () = assert!(offset_of!(KSigaction, flags) == 8);
const _: () = assert!(offset_of!(KSigaction, restorer) == 16);
const _: () = assert!(offset_of!(KSigaction, mask) == 24);

/// Result of [`Command::DumpSigactions`]: entry `n-1` is signal `n`; SIGKILL and SIGSTOP stay zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigactionsResult {
    /// One entry per signal 1..=64.
    pub actions: [KSigaction; SIG_MAX],
}
const _: () = assert!(size_of::<SigactionsResult>() == 2048);
const _: () = assert!(size_of::<SigactionsResult>() <= PAYLOAD_SIZE);

/// The kernel's `struct timeval` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeval {
    /// Seconds.
    pub sec: i64,
    /// Microseconds.
    pub usec: i64,
}

/// The kernel's `struct itimerval`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Itimerval {
    /// Reload value.
    pub interval: Timeval,
    /// Time to the next expiry (0 = disarmed).
    pub value: Timeval,
}
const _: () = assert!(size_of::<Itimerval>() == 32);

/// Result of [`Command::DumpItimers`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItimersResult {
    /// ITIMER_REAL.
    pub real: Itimerval,
    /// ITIMER_VIRTUAL.
    pub virt: Itimerval,
    /// ITIMER_PROF.
    pub prof: Itimerval,
}
const _: () = assert!(size_of::<ItimersResult>() == 96);
const _: () = assert!(offset_of!(ItimersResult, virt) == 32);
const _: () = assert!(offset_of!(ItimersResult, prof) == 64);

/// Result of [`Command::DumpMisc`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MiscResult {
    /// `personality(0xffffffff)`.
    pub personality: u32,
    /// The umask (read by setting it twice).
    pub umask: u32,
    /// `prctl(PR_GET_DUMPABLE)`.
    pub dumpable: i32,
    /// `prctl(PR_GET_PDEATHSIG)`.
    pub pdeath_sig: i32,
}
const _: () = assert!(size_of::<MiscResult>() == 16);

/// The kernel's `stack_t` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackT {
    /// `ss_sp`.
    pub sp: u64,
    /// `ss_flags` (SS_DISABLE = 2, SS_ONSTACK = 1, SS_AUTODISARM bit 31).
    pub flags: i32,
    /// Padding, zero.
    pub pad: u32,
    /// `ss_size`.
    pub size: u64,
}
const _: () = assert!(size_of::<StackT>() == 24);
const _: () = assert!(offset_of!(StackT, size) == 16);

/// Result of [`Command::DumpThread`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadResult {
    /// `gettid()`.
    pub tid: i32,
    /// `prctl(PR_GET_PDEATHSIG)` of this thread: the parent-death signal is per thread.
    pub pdeath_sig: i32,
    /// `sigaltstack(NULL, &old)`. SS_ONSTACK is relative to the parasite's own stack, so it is
    /// never set here; the host derives it from the saved stack pointer.
    pub altstack: StackT,
}
const _: () = assert!(size_of::<ThreadResult>() == 32);
const _: () = assert!(offset_of!(ThreadResult, pdeath_sig) == 4);
const _: () = assert!(offset_of!(ThreadResult, altstack) == 8);

/// Arguments of [`Command::OpenPipe`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenPipeArgs {
    /// Wanted pipe capacity in bytes (F_SETPIPE_SZ); 0 keeps the default.
    pub size: u32,
    /// Padding, zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<OpenPipeArgs>() == 8);

/// Result of [`Command::OpenPipe`]: fds in the task's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipeResult {
    /// Read end.
    pub rd: i32,
    /// Write end.
    pub wr: i32,
    /// Capacity the kernel granted (F_GETPIPE_SZ).
    pub size: u32,
    /// Padding, zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<PipeResult>() == 16);

/// Arguments of [`Command::CloseFd`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseFdArgs {
    /// The task's fd.
    pub fd: i32,
    /// Padding, zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<CloseFdArgs>() == 8);

/// One range of task memory (the kernel's `struct iovec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iovec {
    /// Start address in the task.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}
const _: () = assert!(size_of::<Iovec>() == 16);

/// Most ranges one [`Command::DrainPages`] carries (the kernel takes at most 1024 per call).
pub const MAX_DRAIN_IOVS: usize = 256;

/// Arguments of [`Command::DrainPages`]. The parasite consumes `iovs` in place (advancing
/// `base`/`len` on partial vmsplices), so the host must not reuse them after the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DrainArgs {
    /// Write end of the pipe, in the task's fd table.
    pub fd: i32,
    /// Number of valid entries in `iovs`.
    pub nr: u32,
    /// The ranges, page-aligned by convention.
    pub iovs: [Iovec; MAX_DRAIN_IOVS],
}
const _: () = assert!(size_of::<DrainArgs>() == 8 + 16 * MAX_DRAIN_IOVS);
const _: () = assert!(offset_of!(DrainArgs, iovs) == 8);
const _: () = assert!(size_of::<DrainArgs>() <= PAYLOAD_SIZE);

/// Result of [`Command::DrainPages`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainResult {
    /// Bytes vmspliced into the pipe.
    pub bytes: u64,
}
const _: () = assert!(size_of::<DrainResult>() == 8);

/// Most POSIX timers one [`Command::DumpPosixTimers`] carries.
pub const MAX_POSIX_TIMERS: usize = 128;

/// Arguments of [`Command::DumpPosixTimers`]: timer ids as /proc/PID/timers lists them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PosixTimersArgs {
    /// Number of valid entries in `ids`.
    pub nr: u32,
    /// Padding, zero.
    pub pad: u32,
    /// Kernel timer ids.
    pub ids: [i32; MAX_POSIX_TIMERS],
}
const _: () = assert!(size_of::<PosixTimersArgs>() == 8 + 4 * MAX_POSIX_TIMERS);

/// The kernel's `struct timespec` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: i64,
}

/// One POSIX timer's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosixTimer {
    /// Kernel timer id.
    pub id: i32,
    /// `timer_getoverrun`.
    pub overrun: i32,
    /// `it_interval` of `timer_gettime`.
    pub interval: Timespec,
    /// `it_value` of `timer_gettime` (time to the next expiry, 0 = disarmed).
    pub value: Timespec,
}
const _: () = assert!(size_of::<PosixTimer>() == 40);
const _: () = assert!(offset_of!(PosixTimer, interval) == 8);
const _: () = assert!(offset_of!(PosixTimer, value) == 24);

/// Result of [`Command::DumpPosixTimers`], in the order of the argument ids.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PosixTimersResult {
    /// Number of valid entries in `timers`.
    pub nr: u32,
    /// Padding, zero.
    pub pad: u32,
    /// The timers.
    pub timers: [PosixTimer; MAX_POSIX_TIMERS],
}
const _: () = assert!(size_of::<PosixTimersResult>() == 8 + 40 * MAX_POSIX_TIMERS);
const _: () = assert!(size_of::<PosixTimersResult>() <= PAYLOAD_SIZE);

/// Byte offsets of the pieces of the shared memfd, given the blob's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the daemon's control area (blob rounded up to a page).
    pub control: usize,
    /// Offset one past the daemon stack's highest byte (its initial stack pointer).
    pub stack_top: usize,
    /// Offset of the control area for one-shot runs in other threads.
    pub thread_control: usize,
    /// Initial stack pointer of one-shot runs.
    pub thread_stack_top: usize,
    /// Total size of the memfd and of both mappings.
    pub total: usize,
}

impl Layout {
    /// The layout for a blob of `blob_len` bytes:
    /// `[blob | control | stack | thread control | thread stack]`.
    pub const fn for_blob(blob_len: usize) -> Layout {
        let control = blob_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let stack_top = control + CONTROL_AREA_SIZE + PARASITE_STACK_SIZE;
        let thread_control = stack_top;
        let thread_stack_top = thread_control + CONTROL_AREA_SIZE + PARASITE_STACK_SIZE;
        Layout {
            control,
            stack_top,
            thread_control,
            thread_stack_top,
            total: thread_stack_top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_page_aligned() {
        let l = Layout::for_blob(401);
        assert_eq!(l.control, 4096);
        assert_eq!(l.stack_top, 4096 + 8192 + 32768);
        assert_eq!(l.thread_control, l.stack_top);
        assert_eq!(l.thread_stack_top, l.stack_top + 8192 + 32768);
        assert_eq!(l.total, l.thread_stack_top);
        assert_eq!(l.total % PAGE_SIZE, 0);
        assert_eq!(Layout::for_blob(4096).control, 4096);
    }

    #[test]
    fn command_round_trips() {
        for c in 1..=10 {
            assert_eq!(Command::from_raw(c).map(|c| c as u32), Some(c));
        }
        assert_eq!(Command::from_raw(0), None);
        assert_eq!(Command::from_raw(11), None);
    }
}

//! The restorer's argument block: what ferry's restore coordinator hands the restorer blob.
//!
//! The coordinator (still ordinary Rust in the freshly forked task) maps the blob and this block
//! in an address range free in both its own layout and the task's target layout, stages the
//! task's memory there, and jumps to the blob's entry with `rdi` = the [`RestorerArgs`]. Every
//! pointer in the block is an absolute address inside that range, so the block needs no
//! relocation. The blob unmaps everything but the kept ranges, moves staged mappings into place
//! with `mremap`, applies `madvise`, sets the mm fields with `PR_SET_MM_MAP`, closes the fds it was
//! given, sets per-thread state, reports through the shared stage word and, once released, calls
//! `rt_sigreturn` on the frame prepared for it.

use core::mem::{offset_of, size_of};

/// `RestorerArgs::magic`: "FRYR" little-endian.
pub const RESTORER_MAGIC: u32 = u32::from_le_bytes(*b"FRYR");
/// Bumped on any incompatible change of these types.
pub const RESTORER_VERSION: u32 = 4;
/// Offset of a `syscall; int3` pair in the restorer blob: ferry runs the final `munmap` of the
/// restorer range from here, under ptrace, after the task's `rt_sigreturn`.
pub const RESTORER_SYSCALL_OFFSET: usize = 2;
/// Size of each thread's stack slot; slots are laid out back to back, one per thread.
pub const THREAD_STACK_SIZE: u64 = 64 << 10;

/// An address range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One `mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remap {
    /// Staged address.
    pub from: u64,
    /// Length in bytes.
    pub len: u64,
    /// Final address.
    pub to: u64,
}

/// One `madvise(start, len, advice)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Madvise {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// MADV_* value.
    pub advice: u64,
}

/// The kernel's `struct prctl_mm_map` (PR_SET_MM_MAP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Address of the saved auxv (u64 pairs) inside the restorer range.
    pub auxv: u64,
    /// Bytes of auxv.
    pub auxv_size: u32,
    /// fd of the executable for /proc/PID/exe, or u32::MAX to leave it.
    pub exe_fd: u32,
}

/// Per-thread state the blob sets itself (the rest travels in the sigreturn frame).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadArgs {
    /// The thread's tid (the main thread is the task's pid).
    pub tid: i32,
    /// Non-zero: register rseq at `rseq`.
    pub has_rseq: u32,
    /// Address of the prepared `rt_sigframe`; `rt_sigreturn` runs with `rsp = frame + 8`.
    pub frame: u64,
    /// Top (end) of this thread's own [`THREAD_STACK_SIZE`] slot (16-byte aligned): the blob
    /// runs on `[stack_top - THREAD_STACK_SIZE, stack_top)`, and clone3 gets exactly that slot.
    pub stack_top: u64,
    /// ARCH_SET_FS value.
    pub fs_base: u64,
    /// ARCH_SET_GS value.
    pub gs_base: u64,
    /// set_tid_address value (0: none).
    pub clear_tid_addr: u64,
    /// set_robust_list head (0: none).
    pub robust_list: u64,
    /// set_robust_list length.
    pub robust_len: u64,
    /// rseq area.
    pub rseq: u64,
    /// rseq area length.
    pub rseq_len: u32,
    /// rseq signature.
    pub rseq_sig: u32,
    /// Thread name for PR_SET_NAME (NUL-terminated; all zero: leave it).
    pub comm: [u8; 16],
    /// The thread's own pending signals: `nr_sigs` raw 128-byte siginfos, queued to itself
    /// with rt_tgsigqueueinfo (all signals are blocked until rt_sigreturn).
    pub sigs: u64,
    /// Number of siginfos at `sigs`.
    pub nr_sigs: u32,
    /// PR_SET_PDEATHSIG value of this thread (0: none), set right before its rt_sigreturn; the
    /// parent-death signal is a per-thread attribute.
    pub pdeath_sig: u32,
    /// Address of this thread's [`SeccompArgs`] (0: the thread has no seccomp mode).
    pub seccomp: u64,
}

/// One classic-BPF seccomp program. The first 16 bytes are the kernel's `struct sock_fprog`
/// (`unsigned short len; struct sock_filter *filter`), so the blob passes its address as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompProg {
    /// Number of 8-byte `struct sock_filter` instructions.
    pub len: u16,
    /// Padding of `struct sock_fprog`, zero.
    pub _pad: [u16; 3],
    /// Address of the instructions.
    pub filter: u64,
    /// SECCOMP_FILTER_FLAG_* for `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`.
    pub flags: u64,
}

/// A thread's seccomp state, installed by the thread itself after it is released (`go_word`)
/// and before its capabilities are dropped: the last steps before `rt_sigreturn`. ferry traces
/// the thread with PTRACE_O_SUSPEND_SECCOMP by then, so the filters do not apply to the blob's
/// own remaining syscalls nor to the final munmap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompArgs {
    /// 1: strict (`PR_SET_SECCOMP`, SECCOMP_MODE_STRICT); 2: filter.
    pub mode: u32,
    /// Number of [`SeccompProg`]s at `progs`, oldest first.
    pub nr_progs: u32,
    /// [`SeccompProg`] list.
    pub progs: u64,
    /// The first `nr_tsync` programs are installed with SECCOMP_FILTER_FLAG_TSYNC (main thread
    /// only: the prefix every thread of the task shares, so the threads keep sharing one filter
    /// object as they did when dumped); then the main thread sets `sync_word`.
    pub nr_tsync: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// u32 word in the task's argument arena: non-zero once the shared prefix is installed.
    /// Other threads with `wait_sync != 0` wait for it before installing their own programs.
    pub sync_word: u64,
    /// Non-zero: wait for `sync_word` first (threads other than the main one, when a shared
    /// prefix exists).
    pub wait_sync: u32,
    /// Padding, zero.
    pub _pad2: u32,
}

/// Error codes the blob leaves in `RestorerArgs::error` (`step << 16 | errno`).
pub mod step {
    pub const BAD_HEADER: u32 = 1;
    pub const MUNMAP: u32 = 2;
    pub const MREMAP: u32 = 3;
    pub const MADVISE: u32 = 4;
    pub const PRCTL_MM: u32 = 5;
    pub const CLOSE: u32 = 6;
    pub const ROBUST_LIST: u32 = 7;
    pub const ARCH_PRCTL: u32 = 8;
    pub const RSEQ: u32 = 9;
    pub const CLONE_THREAD: u32 = 10;
    /// rt_sigreturn itself (only reached when the kernel refuses the prepared frame).
    pub const SIGRETURN: u32 = 11;
    pub const CAPSET: u32 = 12;
    pub const PDEATHSIG: u32 = 13;
    pub const SIGQUEUE: u32 = 14;
    /// seccomp(SECCOMP_SET_MODE_FILTER) or prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT).
    pub const SECCOMP: u32 = 15;
    /// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL / PR_CAP_AMBIENT_RAISE).
    pub const AMBIENT: u32 = 16;
}

/// The block at `rdi` when the blob starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestorerArgs {
    pub magic: u32,
    pub version: u32,
    /// Ranges to keep while unmapping everything else below `task_size`; sorted, disjoint.
    pub keep: u64,
    pub nr_keep: u32,
    pub nr_remap: u32,
    /// [`Remap`] list, applied in order.
    pub remap: u64,
    /// [`Madvise`] list.
    pub madv: u64,
    pub nr_madv: u32,
    pub nr_close: u32,
    /// i32 fds to close.
    pub close: u64,
    /// [`ThreadArgs`] list; entry 0 is the main thread, which runs first.
    pub threads: u64,
    pub nr_threads: u32,
    /// Non-zero: apply `mm_map`.
    pub has_mm_map: u32,
    pub mm_map: PrctlMmMap,
    /// u32 in the shared control area: the blob adds 1 per thread ready for sigreturn, and wakes.
    pub ready_word: u64,
    /// u32 in the shared control area: the blob waits until it is non-zero.
    pub go_word: u64,
    /// u32 in the shared control area: first error (`step << 16 | errno`), then wakes
    /// `ready_word` and exits the whole group.
    pub error_word: u64,
    /// Highest user address + 1 (unmapping stops here).
    pub task_size: u64,
    /// Non-zero: `capset` to `caps` after everything that needs privileges.
    pub has_caps: u32,
    /// Padding, zero (the parent-death signal is per thread: [`ThreadArgs::pdeath_sig`]).
    pub _pad: u32,
    /// effective lo/hi, permitted lo/hi, inheritable lo/hi (struct __user_cap_data_struct x2).
    pub caps: [u32; 6],
    /// The ambient set (bit n = capability n), raised in every thread after `capset`: a uid
    /// change away from 0 and a lowered permitted or inheritable set clear it, so it comes last.
    pub ambient: u64,
}

const _: () = assert!(size_of::<Range>() == 16);
const _: () = assert!(size_of::<Remap>() == 24);
const _: () = assert!(size_of::<Madvise>() == 24);
const _: () = assert!(size_of::<PrctlMmMap>() == 104);
const _: () = assert!(size_of::<ThreadArgs>() == 120);
const _: () = assert!(offset_of!(ThreadArgs, seccomp) == 112);
const _: () = assert!(size_of::<SeccompProg>() == 24);
const _: () = assert!(offset_of!(SeccompProg, filter) == 8);
const _: () = assert!(size_of::<SeccompArgs>() == 40);
const _: () = assert!(offset_of!(ThreadArgs, frame) == 8);
const _: () = assert!(offset_of!(ThreadArgs, stack_top) == 16);
const _: () = assert!(offset_of!(RestorerArgs, mm_map) == 72);
const _: () = assert!(offset_of!(RestorerArgs, caps) == 216);
const _: () = assert!(offset_of!(RestorerArgs, ambient) == 240);
const _: () = assert!(size_of::<RestorerArgs>() == 248);

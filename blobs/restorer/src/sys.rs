//! Raw x86_64 Linux syscalls: `syscall` with the number in rax, arguments in
//! rdi/rsi/rdx/r10/r8/r9, result (or -errno) in rax; rcx and r11 are clobbered.

use ferry_blob_abi::restorer::THREAD_STACK_SIZE;

const NR_CLOSE: usize = 3;
const NR_MREMAP: usize = 25;
const NR_MADVISE: usize = 28;
const NR_MUNMAP: usize = 11;
const NR_PRCTL: usize = 157;
const NR_ARCH_PRCTL: usize = 158;
const NR_FUTEX: usize = 202;
const NR_SET_TID_ADDRESS: usize = 218;
const NR_EXIT_GROUP: usize = 231;
const NR_SET_ROBUST_LIST: usize = 273;
const NR_RSEQ: usize = 334;
const NR_CLONE3: usize = 435;
const NR_CAPSET: usize = 126;
const NR_GETPID: usize = 39;
const NR_RT_TGSIGQUEUEINFO: usize = 297;
const NR_SECCOMP: usize = 317;

pub const PR_SET_PDEATHSIG: usize = 1;
pub const PR_CAP_AMBIENT: usize = 47;
pub const PR_CAP_AMBIENT_RAISE: usize = 2;
pub const PR_CAP_AMBIENT_CLEAR_ALL: usize = 4;
pub const PR_SET_NAME: usize = 15;
pub const PR_SET_SECCOMP: usize = 22;
pub const SECCOMP_MODE_STRICT: usize = 1;
const SECCOMP_SET_MODE_FILTER: usize = 1;
pub const SECCOMP_FILTER_FLAG_TSYNC: usize = 1;
pub const PR_SET_MM: usize = 35;
pub const PR_SET_MM_MAP: usize = 14;
pub const ARCH_SET_GS: usize = 0x1001;
pub const ARCH_SET_FS: usize = 0x1002;
const MREMAP_MAYMOVE: usize = 1;
const MREMAP_FIXED: usize = 2;
const FUTEX_WAIT: usize = 0;
const FUTEX_WAKE: usize = 1;

/// CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM.
const THREAD_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;

/// Turns a raw return into `Ok(value)` or `Err(-errno)`.
pub fn check(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// The raw syscall. Callers pass pointers into memory they own.
#[inline(always)]
fn syscall6(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let ret: isize;
    // SAFETY: the syscall instruction clobbers only rax (result), rcx and r11 (declared); the
    // kernel may write memory through pointer arguments, which the callers own.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            in("r8") a5,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

pub fn munmap(addr: u64, len: u64) -> isize {
    syscall6(NR_MUNMAP, addr as usize, len as usize, 0, 0, 0)
}

pub fn mremap(from: u64, len: u64, to: u64) -> isize {
    syscall6(
        NR_MREMAP,
        from as usize,
        len as usize,
        len as usize,
        MREMAP_MAYMOVE | MREMAP_FIXED,
        to as usize,
    )
}

pub fn madvise(addr: u64, len: u64, advice: u64) -> isize {
    syscall6(
        NR_MADVISE,
        addr as usize,
        len as usize,
        advice as usize,
        0,
        0,
    )
}

pub fn prctl(opt: usize, a2: usize, a3: usize, a4: usize) -> isize {
    syscall6(NR_PRCTL, opt, a2, a3, a4, 0)
}

pub fn capset(hdr: usize, data: usize) -> isize {
    syscall6(NR_CAPSET, hdr, data, 0, 0, 0)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, fprog).
pub fn seccomp_filter(flags: usize, fprog: usize) -> isize {
    syscall6(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, fprog, 0, 0)
}

pub fn getpid() -> i32 {
    syscall6(NR_GETPID, 0, 0, 0, 0, 0) as i32
}

pub fn tgsigqueueinfo(tgid: i32, tid: i32, sig: i32, info: u64) -> isize {
    syscall6(
        NR_RT_TGSIGQUEUEINFO,
        tgid as usize,
        tid as usize,
        sig as usize,
        info as usize,
        0,
    )
}

pub fn close(fd: i32) -> isize {
    syscall6(NR_CLOSE, fd as usize, 0, 0, 0, 0)
}

pub fn arch_prctl(code: usize, val: u64) -> isize {
    syscall6(NR_ARCH_PRCTL, code, val as usize, 0, 0, 0)
}

pub fn set_tid_address(addr: u64) -> isize {
    syscall6(NR_SET_TID_ADDRESS, addr as usize, 0, 0, 0, 0)
}

pub fn set_robust_list(head: u64, len: u64) -> isize {
    syscall6(NR_SET_ROBUST_LIST, head as usize, len as usize, 0, 0, 0)
}

pub fn rseq(area: u64, len: u32, sig: u32) -> isize {
    syscall6(NR_RSEQ, area as usize, len as usize, 0, sig as usize, 0)
}

pub fn exit_group(code: i32) -> ! {
    loop {
        let _ = syscall6(NR_EXIT_GROUP, code as usize, 0, 0, 0, 0);
    }
}

/// Sleeps while `*word == val` (a shared futex: the word lives in a MAP_SHARED page).
pub fn futex_wait(word: *mut u32, val: u32) {
    // EAGAIN (value changed) and EINTR are both "look again" for the caller's loop.
    let _ = syscall6(NR_FUTEX, word as usize, FUTEX_WAIT, val as usize, 0, 0);
}

/// Wakes every waiter on `word`.
pub fn futex_wake(word: *mut u32) {
    let _ = syscall6(NR_FUTEX, word as usize, FUTEX_WAKE, i32::MAX as usize, 0, 0);
}

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Clones a thread of this task with tid `tid` on its own stack slot, the [`THREAD_STACK_SIZE`]
/// bytes ending at `stack_top`; the new thread calls `thread_entry(args, t)`. Returns the
/// parent's result (tid or -errno).
pub fn clone_thread(tid: i32, stack_top: u64, args: usize, t: usize) -> isize {
    let want = tid as u64;
    let ca = CloneArgs {
        flags: THREAD_FLAGS,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: 0,
        // clone3 takes the lowest address and the size; the child starts at stack + size.
        stack: stack_top - THREAD_STACK_SIZE,
        stack_size: THREAD_STACK_SIZE,
        tls: 0,
        set_tid: &want as *const u64 as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    let ret: isize;
    // SAFETY: clone3 with CLONE_VM starts the child on its own stack inside the kept range with
    // every other register equal to the parent's; the child never leaves this block (it calls
    // thread_entry, which never returns). The parent continues with rax = tid or -errno.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "and rsp, -16",
            "mov rdi, r12",
            "mov rsi, r13",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym crate::thread_entry,
            inlateout("rax") NR_CLONE3 as isize => ret,
            in("rdi") &ca as *const CloneArgs as usize,
            in("rsi") core::mem::size_of::<CloneArgs>(),
            in("r12") args,
            in("r13") t,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

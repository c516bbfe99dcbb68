//! Raw x86_64 Linux syscalls: `syscall` with the number in rax, arguments in
//! rdi/rsi/rdx/r10/r8/r9, result (or -errno) in rax; rcx and r11 are clobbered.

pub const NR_CLOSE: usize = 3;
pub const NR_RT_SIGACTION: usize = 13;
pub const NR_GETITIMER: usize = 36;
pub const NR_GETPID: usize = 39;
pub const NR_FCNTL: usize = 72;
pub const NR_UMASK: usize = 95;
pub const NR_SIGALTSTACK: usize = 131;
pub const NR_PERSONALITY: usize = 135;
pub const NR_PRCTL: usize = 157;
pub const NR_GETTID: usize = 186;
pub const NR_FUTEX: usize = 202;
pub const NR_TIMER_GETTIME: usize = 224;
pub const NR_TIMER_GETOVERRUN: usize = 225;
pub const NR_VMSPLICE: usize = 278;
pub const NR_PIPE2: usize = 293;

pub const O_CLOEXEC: usize = 0o2000000;
pub const F_SETPIPE_SZ: usize = 1031;
pub const F_GETPIPE_SZ: usize = 1032;
pub const SPLICE_F_GIFT: usize = 8;
/// UIO_MAXIOV: the most iovecs one vmsplice takes.
pub const UIO_MAXIOV: usize = 1024;

pub const SIGKILL: usize = 9;
pub const SIGSTOP: usize = 19;
pub const PR_GET_PDEATHSIG: usize = 2;
pub const PR_GET_DUMPABLE: usize = 3;
pub const ENOSYS: i32 = 38;

const FUTEX_WAIT: usize = 0;
const FUTEX_WAKE: usize = 1;

/// Turns a raw return into `Ok(value)` or `Err(-errno)`.
pub fn check(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(ret as i32)
    } else {
        Ok(ret as usize)
    }
}

#[inline(always)]
pub fn syscall0(nr: usize) -> isize {
    syscall4(nr, 0, 0, 0, 0)
}

#[inline(always)]
pub fn syscall1(nr: usize, a1: usize) -> isize {
    syscall4(nr, a1, 0, 0, 0)
}

#[inline(always)]
pub fn syscall2(nr: usize, a1: usize, a2: usize) -> isize {
    syscall4(nr, a1, a2, 0, 0)
}

/// Every syscall the parasite issues only reads task state or writes into buffers the caller
/// passes, so the wrapper itself is safe to call; the callers pass valid pointers.
#[inline(always)]
pub fn syscall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
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
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Sleeps while `*word == val` (a shared futex: the word lives in a MAP_SHARED memfd page).
pub fn futex_wait(word: *mut u32, val: u32) {
    // EAGAIN (value changed) and EINTR are both "look again" for the caller's loop.
    let _ = syscall4(NR_FUTEX, word as usize, FUTEX_WAIT, val as usize, 0);
}

/// Wakes every waiter on `word`.
pub fn futex_wake(word: *mut u32) {
    let _ = syscall4(NR_FUTEX, word as usize, FUTEX_WAKE, i32::MAX as usize, 0);
}

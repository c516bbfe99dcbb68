//! ferry's restorer: a flat, position-independent blob that a freshly forked task jumps into to
//! become the checkpointed task again.
//!
//! The restore coordinator (ordinary Rust in the same task, before the jump) has mapped this blob,
//! its argument block, its stacks and every staged mapping of the target layout inside one range
//! that is free in both layouts. The blob then owns the task: it unmaps everything outside the kept
//! ranges (that range and the current vDSO/vvar), moves the vDSO and the staged mappings to their
//! final addresses with `mremap` (pages move, nothing is copied), applies `madvise`, sets the mm
//! fields (`PR_SET_MM_MAP`), clones the other threads with their tids (`clone3` + `set_tid`), and
//! in every thread sets the robust list, clear_child_tid, FS/GS base and rseq, reports ready on the
//! shared stage word, waits to be released, installs its seccomp filters (or strict mode) and
//! drops to its own capabilities (ferry traces it by then with seccomp suspended), and calls
//! `rt_sigreturn` on the frame ferry prepared
//! (registers, FPU/XSAVE state, blocked mask, sigaltstack). ferry then unmaps this range from the
//! outside, under ptrace, before the task returns to user space.
//! It never allocates, never formats, and talks to the kernel only through raw `syscall`.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

// Shared with the other blob: the memory intrinsics (blobs/mem.rs).
#[path = "../../mem.rs"]
mod mem;
mod sys;

use core::sync::atomic::{AtomicU32, Ordering};
use ferry_blob_abi::restorer::{
    step, Madvise, Range, Remap, RestorerArgs, SeccompArgs, SeccompProg, ThreadArgs,
    RESTORER_MAGIC, RESTORER_VERSION,
};

// Entry: a short jump over a `syscall; int3` pair at offset 2 (RESTORER_SYSCALL_OFFSET: ferry
// runs the final munmap of this range from there), then align the stack and call the main
// function with rdi = the argument block. Every reference is rip-relative.
core::arch::global_asm!(
    ".pushsection .text._start,\"ax\",@progbits",
    ".globl _start",
    "_start:",
    ".byte 0xeb, 0x03",
    "syscall",
    "int3",
    "and rsp, -16",
    "call {main}",
    "ud2",
    ".popsection",
    main = sym restorer_main,
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: ud2 only raises #UD; nothing is read or written.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// Records the first error for the coordinator, wakes it and ends the whole task.
fn fail(a: &RestorerArgs, st: u32, err: i32) -> ! {
    let code = (st << 16) | (err.unsigned_abs() & 0xffff);
    // SAFETY: `error_word` and `ready_word` are u32 words in the shared control area the
    // coordinator mapped before forking; they stay mapped (inside the kept range).
    let (ew, rw) = unsafe {
        (
            &*(a.error_word as *const AtomicU32),
            &*(a.ready_word as *const AtomicU32),
        )
    };
    let _ = ew.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    sys::futex_wake(a.error_word as *mut u32);
    rw.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(a.ready_word as *mut u32);
    sys::exit_group(1)
}

fn ok(a: &RestorerArgs, st: u32, r: isize) -> usize {
    match sys::check(r) {
        Ok(v) => v,
        Err(e) => fail(a, st, e),
    }
}

/// # Safety
/// `a` must point to a valid argument block whose lists live in the kept range.
unsafe fn slice<'a, T>(ptr: u64, n: u32) -> &'a [T] {
    if n == 0 {
        return &[];
    }
    // SAFETY: the coordinator wrote `n` elements of `T` at `ptr` (caller's contract).
    unsafe { core::slice::from_raw_parts(ptr as *const T, n as usize) }
}

/// The main thread's path. Never returns: it ends in `rt_sigreturn` or `exit_group`.
///
/// # Safety
/// `args` must point at the argument block the coordinator prepared.
unsafe extern "C" fn restorer_main(args: *const RestorerArgs) -> ! {
    // SAFETY: the coordinator passes a valid block (see above).
    let a = unsafe { &*args };
    if a.magic != RESTORER_MAGIC || a.version != RESTORER_VERSION {
        fail(a, step::BAD_HEADER, 0);
    }
    // SAFETY: the lists were written by the coordinator inside the kept range.
    let (keep, remap, madv, close, threads) = unsafe {
        (
            slice::<Range>(a.keep, a.nr_keep),
            slice::<Remap>(a.remap, a.nr_remap),
            slice::<Madvise>(a.madv, a.nr_madv),
            slice::<i32>(a.close, a.nr_close),
            slice::<ThreadArgs>(a.threads, a.nr_threads),
        )
    };

    // 1. Everything below task_size that is not kept goes: the coordinator's heap, libraries,
    //    stack. munmap of holes is harmless.
    let mut at = 0u64;
    for k in keep {
        if k.start > at {
            ok(a, step::MUNMAP, sys::munmap(at, k.start - at));
        }
        at = at.max(k.start + k.len);
    }
    if at < a.task_size {
        ok(a, step::MUNMAP, sys::munmap(at, a.task_size - at));
    }
    // 2. Move the vDSO and every staged mapping into place.
    for r in remap {
        let got = ok(a, step::MREMAP, sys::mremap(r.from, r.len, r.to));
        if got as u64 != r.to {
            fail(a, step::MREMAP, 14);
        }
    }
    for m in madv {
        ok(a, step::MADVISE, sys::madvise(m.start, m.len, m.advice));
    }
    if a.has_mm_map != 0 {
        let size = core::mem::size_of_val(&a.mm_map);
        ok(
            a,
            step::PRCTL_MM,
            sys::prctl(
                sys::PR_SET_MM,
                sys::PR_SET_MM_MAP,
                &a.mm_map as *const _ as usize,
                size,
            ),
        );
    }
    for &fd in close {
        ok(a, step::CLOSE, sys::close(fd));
    }
    for t in threads.iter().skip(1) {
        let r = sys::clone_thread(t.tid, t.stack_top, args as usize, t as *const _ as usize);
        ok(a, step::CLONE_THREAD, r);
    }
    match threads.first() {
        Some(t) => restore_thread(a, t),
        None => fail(a, step::BAD_HEADER, 22),
    }
}

/// Entry of a thread cloned by [`restorer_main`] (called from the clone trampoline on its own
/// stack).
///
/// # Safety
/// Both pointers come from the argument block.
pub(crate) unsafe extern "C" fn thread_entry(args: *const RestorerArgs, t: *const ThreadArgs) -> ! {
    // SAFETY: the trampoline passes the pointers the main thread got from the block.
    unsafe { restore_thread(&*args, &*t) }
}

fn restore_thread(a: &RestorerArgs, t: &ThreadArgs) -> ! {
    if t.robust_list != 0 {
        ok(
            a,
            step::ROBUST_LIST,
            sys::set_robust_list(t.robust_list, t.robust_len),
        );
    }
    let _ = sys::set_tid_address(t.clear_tid_addr);
    if t.comm[0] != 0 {
        // A failed rename is cosmetic: no error for it.
        let _ = sys::prctl(sys::PR_SET_NAME, t.comm.as_ptr() as usize, 0, 0);
    }
    ok(
        a,
        step::ARCH_PRCTL,
        sys::arch_prctl(sys::ARCH_SET_FS, t.fs_base),
    );
    if t.gs_base != 0 {
        ok(
            a,
            step::ARCH_PRCTL,
            sys::arch_prctl(sys::ARCH_SET_GS, t.gs_base),
        );
    }
    if t.nr_sigs != 0 {
        let tgid = sys::getpid();
        for k in 0..t.nr_sigs as u64 {
            let info = t.sigs + k * 128;
            // SAFETY: the coordinator wrote nr_sigs 128-byte siginfos at `sigs`.
            let sig = unsafe { *(info as *const i32) };
            ok(
                a,
                step::SIGQUEUE,
                sys::tgsigqueueinfo(tgid, t.tid, sig, info),
            );
        }
    }
    if t.has_rseq != 0 {
        ok(a, step::RSEQ, sys::rseq(t.rseq, t.rseq_len, t.rseq_sig));
    }
    // SAFETY: the words live in the shared control area, mapped in the kept range.
    let (rw, go) = unsafe {
        (
            &*(a.ready_word as *const AtomicU32),
            &*(a.go_word as *const AtomicU32),
        )
    };
    rw.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(a.ready_word as *mut u32);
    while go.load(Ordering::Acquire) == 0 {
        sys::futex_wait(a.go_word as *mut u32, 0);
    }
    // From here on ferry traces this thread with PTRACE_O_SUSPEND_SECCOMP: the filters installed
    // now apply once it is detached, not to the blob's last syscalls or the final munmap.
    if t.seccomp != 0 {
        // SAFETY: the coordinator wrote a SeccompArgs at `t.seccomp` inside the kept arena.
        restore_seccomp(a, unsafe { &*(t.seccomp as *const SeccompArgs) });
    }
    // Per thread (capabilities are a thread attribute), after seccomp: installing a filter
    // without no_new_privs needs CAP_SYS_ADMIN, which the task may not keep.
    if a.has_caps != 0 {
        // _LINUX_CAPABILITY_VERSION_3 header, then two data structs (eff, prm, inh each).
        let hdr: [u32; 2] = [0x2008_0522, 0];
        let c = a.caps;
        let data: [u32; 6] = [c[0], c[2], c[4], c[1], c[3], c[5]];
        ok(
            a,
            step::CAPSET,
            sys::capset(hdr.as_ptr() as usize, data.as_ptr() as usize),
        );
    }
    // The ambient set needs its capabilities in the permitted and inheritable sets just set; a
    // set the restoring process had of its own is not the task's.
    ok(
        a,
        step::AMBIENT,
        sys::prctl(sys::PR_CAP_AMBIENT, sys::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0),
    );
    for cap in 0..64usize {
        if a.ambient & (1u64 << cap) != 0 {
            ok(
                a,
                step::AMBIENT,
                sys::prctl(sys::PR_CAP_AMBIENT, sys::PR_CAP_AMBIENT_RAISE, cap, 0),
            );
        }
    }
    ok(
        a,
        step::PDEATHSIG,
        sys::prctl(sys::PR_SET_PDEATHSIG, t.pdeath_sig as usize, 0, 0),
    );
    // SAFETY: the frame was prepared by the coordinator at `t.frame`; rt_sigreturn reads it at
    // rsp - 8 and replaces every register, so nothing after the syscall runs on success. On
    // failure (rax = -errno; only rcx/r11 are clobbered) the thread goes back to its own stack
    // slot and reports step SIGRETURN.
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "mov eax, 15",
            "syscall",
            "mov rsp, r12",
            "mov rdi, r13",
            "mov rsi, rax",
            "call {failed}",
            "ud2",
            sp = in(reg) t.frame + 8,
            failed = sym sigreturn_failed,
            in("r12") t.stack_top,
            in("r13") a as *const RestorerArgs as usize,
            options(noreturn),
        )
    }
}

/// Installs a thread's seccomp mode: strict, or its filter chain oldest first (the prefix the
/// whole task shares with TSYNC from the main thread, the rest by each thread itself).
fn restore_seccomp(a: &RestorerArgs, s: &SeccompArgs) {
    if s.mode == 1 {
        ok(
            a,
            step::SECCOMP,
            sys::prctl(sys::PR_SET_SECCOMP, sys::SECCOMP_MODE_STRICT, 0, 0),
        );
        return;
    }
    // SAFETY: the coordinator wrote nr_progs programs at `progs` inside the kept arena.
    let progs = unsafe { slice::<SeccompProg>(s.progs, s.nr_progs) };
    // SAFETY: `sync_word` (when set) is a u32 in the task's arena, shared by its threads.
    let sync = (s.sync_word != 0).then(|| unsafe { &*(s.sync_word as *const AtomicU32) });
    if s.wait_sync != 0 {
        if let Some(w) = sync {
            while w.load(Ordering::Acquire) == 0 {
                sys::futex_wait(s.sync_word as *mut u32, 0);
            }
        }
    }
    for (k, p) in progs.iter().enumerate() {
        let tsync = if (k as u32) < s.nr_tsync {
            sys::SECCOMP_FILTER_FLAG_TSYNC
        } else {
            0
        };
        let r = sys::seccomp_filter(p.flags as usize | tsync, p as *const _ as usize);
        // TSYNC reports a thread it could not synchronise as a positive tid.
        if r > 0 {
            fail(a, step::SECCOMP, 16);
        }
        ok(a, step::SECCOMP, r);
        if k as u32 + 1 == s.nr_tsync {
            if let Some(w) = sync {
                w.store(1, Ordering::Release);
                sys::futex_wake(s.sync_word as *mut u32);
            }
        }
    }
}

/// Reached only when the kernel refused the prepared frame.
///
/// # Safety
/// `a` is the argument block the thread ran with.
unsafe extern "C" fn sigreturn_failed(a: *const RestorerArgs, ret: isize) -> ! {
    // SAFETY: the asm above passes the block pointer it was given.
    let a = unsafe { &*a };
    fail(a, step::SIGRETURN, (-ret) as i32)
}

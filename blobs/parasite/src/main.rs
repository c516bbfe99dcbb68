//! ferry's parasite: a flat, position-independent blob that ferry-inject maps into a seized task
//! and runs on the task's own threads to read state only the task itself can see.
//!
//! Entry is at offset 0 (`_start`, placed first by parasite.ld). The host enters with `rsp` at the
//! top of the parasite stack and `rdi` pointing at the [`Control`] block; signals are all blocked
//! by the host (PTRACE_SETSIGMASK) for the whole session. In daemon mode (the main thread) the
//! parasite serves commands over the control block's futex words until `Fini`; in one-shot mode
//! (any other thread, with its own control block and stack) it runs the one posted command.
//! Either way it then stops on `int3` so the host can take the thread back.
//! It never allocates, never formats, and talks to the kernel only through raw `syscall`.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

// Shared with the other blob: the memory intrinsics (blobs/mem.rs).
#[path = "../../mem.rs"]
mod mem;
mod sys;

use core::ptr::{addr_of_mut, write_volatile};
use core::sync::atomic::Ordering;
use ferry_blob_abi::{
    CloseFdArgs, Command, Control, DrainArgs, DrainResult, HelloResult, ItimersResult, Itimerval,
    KSigaction, MiscResult, OpenPipeArgs, PipeResult, PosixTimersArgs, PosixTimersResult,
    SigactionsResult, StackT, ThreadResult, ABI_VERSION, MAX_DRAIN_IOVS, MAX_POSIX_TIMERS,
    MODE_ONESHOT, PARASITE_MAGIC, PAYLOAD_OFFSET, PAYLOAD_SIZE, SIG_MAX, STATE_BAD_HEADER,
    STATE_DONE, STATE_READY,
};

// The entry point: align the stack, call the command loop, stop on int3 when it returns. The
// `call` is rip-relative, so it needs no relocation.
core::arch::global_asm!(
    ".pushsection .text._start,\"ax\",@progbits",
    ".globl _start",
    "_start:",
    "and rsp, -16",
    "call {main}",
    "int3",
    "2: jmp 2b",
    ".popsection",
    main = sym parasite_main,
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // No formatting in a blob: fault so the host sees SIGILL at a parasite address.
    // SAFETY: ud2 only raises #UD; nothing is read or written.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// The command loop. `ctl` is the control block the host prepared in the shared memfd.
///
/// # Safety
/// `ctl` must point to a writable control area of `CONTROL_AREA_SIZE` bytes.
unsafe extern "C" fn parasite_main(ctl: *mut Control) {
    // SAFETY: the host guarantees `ctl` points at the control area (see above).
    let c = unsafe { &*ctl };
    // SAFETY: plain reads of fields the host wrote before starting us.
    let (magic, version) = unsafe { ((*ctl).magic, (*ctl).version) };
    if magic != PARASITE_MAGIC || version != ABI_VERSION {
        c.state.store(STATE_BAD_HEADER, Ordering::Release);
        sys::futex_wake(c.state.as_ptr());
        return;
    }
    // SAFETY: written by the host before it started us.
    let oneshot = unsafe { (*ctl).mode } == MODE_ONESHOT;
    c.state.store(STATE_READY, Ordering::Release);
    let mut last = c.ack_seq.load(Ordering::Acquire);
    loop {
        let seq = c.cmd_seq.load(Ordering::Acquire);
        if seq == last && !oneshot {
            sys::futex_wait(c.cmd_seq.as_ptr(), last);
            continue;
        }
        last = seq;
        // SAFETY: the host wrote `cmd` before publishing `cmd_seq` with Release.
        let raw = unsafe { (*ctl).cmd };
        // SAFETY: the payload follows the header inside the control area.
        let payload = unsafe { (ctl as *mut u8).add(PAYLOAD_OFFSET) };
        let cmd = Command::from_raw(raw);
        let (status, size) = match cmd {
            // SAFETY: `payload` has PAYLOAD_SIZE writable bytes, enough for every result type.
            Some(cmd) => unsafe { run(cmd, payload) },
            None => (-sys::ENOSYS, 0),
        };
        // SAFETY: the host reads these only after it sees `ack_seq == seq` (Acquire).
        unsafe {
            write_volatile(addr_of_mut!((*ctl).status), status);
            write_volatile(addr_of_mut!((*ctl).result_size), size as u32);
        }
        let done = oneshot || cmd == Some(Command::Fini);
        if done {
            c.state.store(STATE_DONE, Ordering::Release);
        }
        c.ack_seq.store(seq, Ordering::Release);
        sys::futex_wake(c.ack_seq.as_ptr());
        if done {
            // Back to _start, whose int3 hands the thread back to the host.
            return;
        }
    }
}

/// Runs one command, writing its result at `payload`. Returns (status, result size).
///
/// # Safety
/// `payload` must have `PAYLOAD_SIZE` writable bytes, 8-aligned.
unsafe fn run(cmd: Command, payload: *mut u8) -> (i32, usize) {
    const _: () = assert!(PAYLOAD_OFFSET.is_multiple_of(8) && PAYLOAD_SIZE >= 2048);
    // SAFETY: in every arm, each result type fits PAYLOAD_SIZE (asserted in the abi crate) and the
    // payload is 8-aligned, which is every result type's alignment.
    unsafe {
        match cmd {
            Command::Hello => fill(payload.cast::<HelloResult>(), hello()),
            Command::DumpSigactions => fill_with(payload.cast::<SigactionsResult>(), sigactions),
            Command::DumpItimers => fill_with(payload.cast::<ItimersResult>(), itimers),
            Command::DumpMisc => fill(payload.cast::<MiscResult>(), misc()),
            Command::DumpThread => fill(payload.cast::<ThreadResult>(), thread()),
            Command::Fini => (0, 0),
            Command::OpenPipe => {
                let args = payload.cast::<OpenPipeArgs>().read();
                fill(payload.cast::<PipeResult>(), open_pipe(args))
            }
            Command::CloseFd => {
                let args = payload.cast::<CloseFdArgs>().read();
                match sys::check(sys::syscall1(sys::NR_CLOSE, args.fd as usize)) {
                    Ok(_) => (0, 0),
                    Err(e) => (e, 0),
                }
            }
            Command::DumpPosixTimers => {
                // The result overlaps the ids: take them out first.
                let args = payload.cast::<PosixTimersArgs>().read();
                let out = payload.cast::<PosixTimersResult>();
                core::ptr::write_bytes(out, 0, 1);
                match posix_timers(&args, &mut *out) {
                    Ok(()) => (0, core::mem::size_of::<PosixTimersResult>()),
                    Err(e) => (e, 0),
                }
            }
            Command::DrainPages => {
                let r = drain(&mut *payload.cast::<DrainArgs>());
                fill(payload.cast::<DrainResult>(), r)
            }
        }
    }
}

/// Writes a result produced by value.
///
/// # Safety
/// `dst` must be valid for a write of `T`.
unsafe fn fill<T>(dst: *mut T, r: Result<T, i32>) -> (i32, usize) {
    match r {
        Ok(v) => {
            // SAFETY: guaranteed by the caller.
            unsafe { dst.write(v) };
            (0, core::mem::size_of::<T>())
        }
        Err(e) => (e, 0),
    }
}

/// Zeroes `dst` and lets `f` fill it in place (for results too big to build on the stack twice).
///
/// # Safety
/// `dst` must be valid for writes of `T`, and all-zero bytes must be a valid `T`.
unsafe fn fill_with<T>(dst: *mut T, f: fn(&mut T) -> Result<(), i32>) -> (i32, usize) {
    // SAFETY: guaranteed by the caller; after zeroing, `dst` holds a valid `T`.
    let r = unsafe {
        core::ptr::write_bytes(dst, 0, 1);
        f(&mut *dst)
    };
    match r {
        Ok(()) => (0, core::mem::size_of::<T>()),
        Err(e) => (e, 0),
    }
}

fn hello() -> Result<HelloResult, i32> {
    Ok(HelloResult {
        pid: sys::check(sys::syscall0(sys::NR_GETPID))? as i32,
        tid: sys::check(sys::syscall0(sys::NR_GETTID))? as i32,
    })
}

fn sigactions(out: &mut SigactionsResult) -> Result<(), i32> {
    for sig in 1..=SIG_MAX {
        if sig == sys::SIGKILL || sig == sys::SIGSTOP {
            continue;
        }
        let act: *mut KSigaction = &mut out.actions[sig - 1];
        // rt_sigaction(sig, NULL, &old, sizeof(sigset_t)) only reads the disposition.
        sys::check(sys::syscall4(sys::NR_RT_SIGACTION, sig, 0, act as usize, 8))?;
    }
    Ok(())
}

fn itimers(out: &mut ItimersResult) -> Result<(), i32> {
    let slots: [*mut Itimerval; 3] = [&mut out.real, &mut out.virt, &mut out.prof];
    for (which, slot) in slots.into_iter().enumerate() {
        sys::check(sys::syscall2(sys::NR_GETITIMER, which, slot as usize))?;
    }
    Ok(())
}

fn misc() -> Result<MiscResult, i32> {
    let personality = sys::check(sys::syscall1(sys::NR_PERSONALITY, 0xffff_ffff))? as u32;
    // umask cannot be read without writing it: set 0, read the old value, put it back.
    let umask = sys::check(sys::syscall1(sys::NR_UMASK, 0))?;
    sys::check(sys::syscall1(sys::NR_UMASK, umask))?;
    let dumpable = sys::check(sys::syscall2(sys::NR_PRCTL, sys::PR_GET_DUMPABLE, 0))? as i32;
    let mut pdeath_sig: i32 = 0;
    let p: *mut i32 = &mut pdeath_sig;
    sys::check(sys::syscall2(
        sys::NR_PRCTL,
        sys::PR_GET_PDEATHSIG,
        p as usize,
    ))?;
    Ok(MiscResult {
        personality,
        umask: umask as u32,
        dumpable,
        pdeath_sig,
    })
}

fn thread() -> Result<ThreadResult, i32> {
    let mut altstack = StackT::default();
    let p: *mut StackT = &mut altstack;
    sys::check(sys::syscall2(sys::NR_SIGALTSTACK, 0, p as usize))?;
    let mut pdeath_sig: i32 = 0;
    let p: *mut i32 = &mut pdeath_sig;
    sys::check(sys::syscall2(
        sys::NR_PRCTL,
        sys::PR_GET_PDEATHSIG,
        p as usize,
    ))?;
    Ok(ThreadResult {
        tid: sys::check(sys::syscall0(sys::NR_GETTID))? as i32,
        pdeath_sig,
        altstack,
    })
}

fn open_pipe(args: OpenPipeArgs) -> Result<PipeResult, i32> {
    let mut fds = [0i32; 2];
    let p: *mut i32 = fds.as_mut_ptr();
    sys::check(sys::syscall2(sys::NR_PIPE2, p as usize, sys::O_CLOEXEC))?;
    let (rd, wr) = (fds[0] as usize, fds[1] as usize);
    let sized = if args.size != 0 {
        sys::check(sys::syscall4(
            sys::NR_FCNTL,
            wr,
            sys::F_SETPIPE_SZ,
            args.size as usize,
            0,
        ))
    } else {
        Ok(0)
    };
    let size = sized.and_then(|_| sys::check(sys::syscall2(sys::NR_FCNTL, wr, sys::F_GETPIPE_SZ)));
    match size {
        Ok(size) => Ok(PipeResult {
            rd: fds[0],
            wr: fds[1],
            size: size as u32,
            pad: 0,
        }),
        Err(e) => {
            // Leave the task's fd table as it was.
            sys::syscall1(sys::NR_CLOSE, rd);
            sys::syscall1(sys::NR_CLOSE, wr);
            Err(e)
        }
    }
}

/// vmsplices every range into the pipe, advancing the ranges in place on partial transfers
/// (the pipe fills up until the host splices it out).
fn drain(args: &mut DrainArgs) -> Result<DrainResult, i32> {
    let nr = (args.nr as usize).min(MAX_DRAIN_IOVS);
    let mut idx = 0;
    let mut bytes = 0u64;
    while idx < nr {
        if args.iovs[idx].len == 0 {
            idx += 1;
            continue;
        }
        let count = (nr - idx).min(sys::UIO_MAXIOV);
        let iov = &args.iovs[idx] as *const _ as usize;
        let fd = args.fd as usize;
        let mut done = sys::check(sys::syscall4(
            sys::NR_VMSPLICE,
            fd,
            iov,
            count,
            sys::SPLICE_F_GIFT,
        ))? as u64;
        if done == 0 {
            return Err(-5); // EIO: the pipe took nothing
        }
        bytes += done;
        while done > 0 && idx < nr {
            let v = &mut args.iovs[idx];
            if done >= v.len {
                done -= v.len;
                v.len = 0;
                idx += 1;
            } else {
                v.base += done;
                v.len -= done;
                done = 0;
            }
        }
    }
    Ok(DrainResult { bytes })
}

fn posix_timers(args: &PosixTimersArgs, out: &mut PosixTimersResult) -> Result<(), i32> {
    let nr = (args.nr as usize).min(MAX_POSIX_TIMERS);
    for (id, t) in args.ids[..nr].iter().zip(out.timers.iter_mut()) {
        t.id = *id;
        // struct itimerspec is { it_interval, it_value }: exactly `interval` then `value`.
        let spec = &mut t.interval as *mut _ as usize;
        sys::check(sys::syscall2(sys::NR_TIMER_GETTIME, *id as usize, spec))?;
        t.overrun = sys::check(sys::syscall1(sys::NR_TIMER_GETOVERRUN, *id as usize))? as i32;
    }
    out.nr = nr as u32;
    Ok(())
}

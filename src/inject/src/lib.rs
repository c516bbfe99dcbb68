//! ferry-inject: compel's job. Seizes tasks with typed ptrace handles, runs syscalls inside them,
//! loads the parasite blob, talks to it, and cures the task so it runs on as if nothing happened.
//!
//! Kernel mechanism, in order of use:
//! - [`ptrace`]: PTRACE_SEIZE + PTRACE_INTERRUPT stop a task without a signal; GETREGS,
//!   GETREGSET(NT_X86_XSTATE) and GETSIGMASK read what must be put back.
//! - [`session`]: remote syscalls jump to an existing `syscall` instruction with PTRACE_SYSCALL;
//!   the session blocks every signal and restores registers, FPU state and mask at its end.
//! - [`parasite`]: a memfd created by the task and mapped by both sides carries the blob,
//!   the control block and the parasite stack; commands and results cross it through futexes.
//! - [`drain`]: the parasite vmsplices task memory into a pipe whose read end ferry took with
//!   pidfd_getfd, and ferry splices it into the image file at the same time.
//! - [`threads`]: other threads run the blob once each, on their own control area and stack.
//! - [`timers`]: POSIX timer ids from /proc, their state through the parasite.
//! - [`mem`]: remote memory through process_vm_readv/writev, /proc/PID/mem as the fallback.
//!
//! The blob is built and checked by build.rs (see docs/blob-abi.md); the ABI lives in
//! `ferry_blob_abi`, shared with the blob.

pub mod drain;
pub mod mem;
pub mod parasite;
pub mod ptrace;
pub mod session;
pub mod threads;
pub mod timers;

#[cfg(test)]
mod elfcheck;

/// The parasite blob built by build.rs, and its relocation table.
pub mod blob {
    include!(concat!(env!("OUT_DIR"), "/parasite_blob.rs"));
}

pub use drain::TaskPipe;
pub use ferry_blob_abi as abi;
pub use parasite::{Parasite, ParasiteError};
pub use ptrace::{seize, PtraceError, Running, SeizedState, StopKind, Stopped};
pub use session::{Session, SessionError};

#[cfg(test)]
mod tests {
    use crate::abi::{Layout, CONTROL_AREA_SIZE, PAGE_SIZE, PARASITE_STACK_SIZE};
    use crate::blob::{PARASITE_BLOB, PARASITE_RELOCS};

    #[test]
    fn layout_of_the_real_blob() {
        let l = Layout::for_blob(PARASITE_BLOB.len());
        assert!(l.control >= PARASITE_BLOB.len() && l.control % PAGE_SIZE == 0);
        assert_eq!(
            l.stack_top,
            l.control + CONTROL_AREA_SIZE + PARASITE_STACK_SIZE
        );
        assert_eq!(l.thread_control, l.stack_top);
        assert_eq!(l.total, l.thread_stack_top);
        assert!(l.stack_top % 16 == 0 && l.thread_stack_top % 16 == 0);
        // Entry at 0: `and rsp, -16` opens _start.
        assert_eq!(&PARASITE_BLOB[..4], &[0x48, 0x83, 0xe4, 0xf0]);
        for &(off, addend) in PARASITE_RELOCS {
            assert!(
                off as usize + 8 <= PARASITE_BLOB.len() && (addend as usize) < PARASITE_BLOB.len()
            );
        }
    }
}

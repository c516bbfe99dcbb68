//! Stage synchronisation between the restore coordinator and the tasks it forks, in the spirit
//! of CRIU's CR_STATE_* stages.
//!
//! The coordinator maps one shared area (a memfd, `MAP_SHARED`) before forking; every task inherits
//! it at the same address (it lies inside the restore range the restorer keeps), and each task
//! owns one [`Slot`]: its stage, a ready counter its restorer threads bump before `rt_sigreturn`,
//! a go word they wait on (futex), and the first error, as a code from the blob or a text from
//! the task's Rust half. The coordinator polls the slots with a deadline and watches for tasks
//! that die, so any failure or hang becomes a clean abort naming the task and the stage.
//! A process that did not fork the tree (the outside half of an in-place restore) maps the same
//! memfd anywhere ([`Ctl::attach`]): futexes on a shared file mapping are keyed by the file and
//! offset, so its wake-ups reach the tasks' waits.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use thiserror::Error;

/// Bytes per slot.
pub const SLOT_SIZE: usize = 1024;
const MSG_LEN: usize = SLOT_SIZE - 32;
/// `error` while a text error is being written (claimed, not yet readable).
const TEXT_PENDING: u32 = u32::MAX - 1;

/// Stages a task passes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Stage {
    /// Not forked yet.
    None = 0,
    /// Forked with its pid; session and group set.
    Forked = 1,
    /// Children forked, files opened, memory staged, signals and timers set.
    Prepared = 2,
    /// Running in the restorer blob.
    Restorer = 3,
}

impl Stage {
    /// Name of the stage a task is in once it has reached `v`, for messages.
    pub fn name(v: u32) -> &'static str {
        match v {
            0 => "fork",
            1 => "prepare (files, memory, signals)",
            _ => "restorer",
        }
    }
}

/// One task's slot in the shared area.
#[repr(C)]
pub struct Slot {
    /// [`Stage`] reached.
    pub stage: AtomicU32,
    /// Threads of the task ready for rt_sigreturn (bumped by the blob).
    pub ready: AtomicU32,
    /// Non-zero releases the task's threads into rt_sigreturn.
    pub go: AtomicU32,
    /// First error code from the blob (`step << 16 | errno`), or `u32::MAX` for a text error.
    pub error: AtomicU32,
    /// The pid the task got.
    pub pid: AtomicU32,
    _pad: [u32; 3],
    msg: [u8; MSG_LEN],
}

/// Errors of the stage area.
#[derive(Debug, Error)]
pub enum StageError {
    /// mmap of the shared area failed.
    #[error("stage area: mmap of {len} bytes at {addr:#x}: {source}")]
    Map {
        /// Address asked for.
        addr: u64,
        /// Length.
        len: usize,
        /// Why.
        source: std::io::Error,
    },
}

/// The shared stage area.
#[derive(Debug)]
pub struct Ctl {
    base: *mut Slot,
    n: usize,
    fd: OwnedFd,
    /// Mapped by [`Ctl::attach`] (unmapped on drop); the coordinator's own mapping lives as
    /// long as the restore range it sits in.
    attached: bool,
}

impl Ctl {
    /// Bytes needed for `n` slots, page aligned.
    pub fn size_for(n: usize) -> usize {
        (n * SLOT_SIZE).div_ceil(4096) * 4096
    }

    /// Maps the area at `addr` (inside the reserved restore range, replacing it), backed by a
    /// new memfd.
    pub fn map(addr: u64, n: usize) -> Result<Self, StageError> {
        let len = Self::size_for(n);
        let err = |source| StageError::Map { addr, len, source };
        // SAFETY: memfd_create with a static NUL-terminated name; the result is a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"ferry-restore-stages".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: the fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: MAP_FIXED over the range the coordinator reserved for exactly this; no Rust
        // object lives there.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Self {
            base: p as *mut Slot,
            n,
            fd,
            attached: false,
        })
    }

    /// Maps the area of `n` slots held by `fd` (the memfd of [`Ctl::fd`], received from the
    /// coordinator) at any address.
    pub fn attach(fd: OwnedFd, n: usize) -> Result<Self, StageError> {
        let len = Self::size_for(n);
        // SAFETY: fstat into a local.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one stat into `st`.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 || (st.st_size as usize) < len {
            return Err(StageError::Map {
                addr: 0,
                len,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the stage memfd holds {} bytes, {n} slots need {len}",
                        st.st_size
                    ),
                ),
            });
        }
        // SAFETY: a new shared mapping of the memfd where the kernel chooses; nothing of ours
        // is replaced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(StageError::Map {
                addr: 0,
                len,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            base: p as *mut Slot,
            n,
            fd,
            attached: true,
        })
    }

    /// The memfd behind the area (for [`Ctl::attach`] in another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the area has no slot.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Slot `i`.
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.n, "stage slot {i} of {}", self.n);
        // SAFETY: the area holds `n` zero-initialised slots (fresh anonymous memory), and Slot
        // is plain atomics and bytes, valid for any bit pattern.
        unsafe { &*self.base.add(i) }
    }

    /// Address of a slot's field, for the blob.
    pub fn addr_of(&self, i: usize, field: &AtomicU32) -> u64 {
        let _ = self.slot(i);
        field.as_ptr() as u64
    }

    /// Records a stage; the coordinator polls the slots, so nothing is woken.
    pub fn set_stage(&self, i: usize, st: Stage) {
        self.slot(i).stage.store(st as u32, Ordering::Release);
    }

    /// Records a text error (first one wins).
    pub fn fail(&self, i: usize, msg: &str) {
        let s = self.slot(i);
        if s.error
            .compare_exchange(0, TEXT_PENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let b = msg.as_bytes();
            let n = b.len().min(MSG_LEN - 1);
            // SAFETY: msg is inside the slot; only this task writes it, once (guarded above).
            unsafe {
                let dst = std::ptr::addr_of!(s.msg) as *mut u8;
                std::ptr::copy_nonoverlapping(b.as_ptr(), dst, n);
                *dst.add(n) = 0;
            }
            // Published only once the text is complete: a reader never sees half a message.
            s.error.store(u32::MAX, Ordering::Release);
        }
    }

    /// The text error of slot `i`, if any.
    pub fn message(&self, i: usize) -> Option<String> {
        let s = self.slot(i);
        match s.error.load(Ordering::Acquire) {
            0 | TEXT_PENDING => None,
            u32::MAX => {
                let end = s.msg.iter().position(|&c| c == 0).unwrap_or(MSG_LEN);
                Some(String::from_utf8_lossy(&s.msg[..end]).into_owned())
            }
            code => Some(format!(
                "restorer failed at step {} ({}): errno {}",
                code >> 16,
                blob_step_name(code >> 16),
                code & 0xffff
            )),
        }
    }

    /// Releases a task's threads into rt_sigreturn.
    pub fn release(&self, i: usize) {
        let s = self.slot(i);
        s.go.store(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE on a word of this shared mapping; no memory is written.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                s.go.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                0usize,
            );
        }
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if self.attached {
            // SAFETY: unmaps the mapping attach() made; the borrow checker ends every &Slot
            // handed out before the Ctl is dropped.
            unsafe { libc::munmap(self.base.cast(), Self::size_for(self.n)) };
        }
    }
}

fn blob_step_name(step: u32) -> &'static str {
    use ferry_blob_abi::restorer::step as s;
    match step {
        s::BAD_HEADER => "argument block",
        s::MUNMAP => "munmap of the coordinator's memory",
        s::MREMAP => "mremap of a mapping into place",
        s::MADVISE => "madvise",
        s::PRCTL_MM => "prctl(PR_SET_MM_MAP)",
        s::CLOSE => "close",
        s::ROBUST_LIST => "set_robust_list",
        s::ARCH_PRCTL => "arch_prctl (FS/GS base)",
        s::RSEQ => "rseq registration",
        s::CLONE_THREAD => "clone3 of a thread with its tid",
        s::SIGRETURN => "rt_sigreturn into the prepared frame",
        s::CAPSET => "capset",
        s::PDEATHSIG => "PR_SET_PDEATHSIG",
        s::SIGQUEUE => "rt_tgsigqueueinfo of a thread's pending signal",
        s::SECCOMP => "seccomp filter or strict mode install",
        s::AMBIENT => "prctl(PR_CAP_AMBIENT) of the ambient capabilities",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::blob_step_name;

    #[test]
    fn every_blob_step_has_a_name() {
        use ferry_blob_abi::restorer::step as s;
        for st in [
            s::BAD_HEADER,
            s::MUNMAP,
            s::MREMAP,
            s::MADVISE,
            s::PRCTL_MM,
            s::CLOSE,
            s::ROBUST_LIST,
            s::ARCH_PRCTL,
            s::RSEQ,
            s::CLONE_THREAD,
            s::SIGRETURN,
            s::CAPSET,
            s::PDEATHSIG,
            s::SIGQUEUE,
            s::SECCOMP,
            s::AMBIENT,
        ] {
            assert_ne!(blob_step_name(st), "unknown", "step {st}");
        }
        assert_eq!(blob_step_name(0), "unknown");
    }
}

//! signalfd (SIGNALFD entries).
//!
//! Kernel mechanism: a signalfd holds a signal mask; fdinfo shows it as `sigmask` (hex, the
//! signals the fd reads). Pending signals are task state, dumped with the task's core, so the
//! fd itself carries only the mask and flags. A restore calls `signalfd(-1, mask, flags)`.

use std::os::fd::OwnedFd;

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, RestoreError};

// ---- dump ----

/// The SIGNALFD entry of an fd.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let mask = super::field(&fd.info, "sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| fd.state("signalfd", "fdinfo has no sigmask"))?;
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Signalfd as i32,
        id,
        sgfd: Some(pb::SignalfdEntry {
            id,
            flags: fd.flags,
            fown: fd.fown,
            sigmask: mask,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// A new signalfd with the entry's mask and O_NONBLOCK.
pub fn open(pid: u32, fd: u32, e: &pb::SignalfdEntry) -> Result<OwnedFd, RestoreError> {
    // The kernel's sigset for signalfd is 8 bytes (signal n is bit n-1).
    let mask = e.sigmask;
    let flags = libc::SFD_CLOEXEC | (e.flags as i32 & libc::O_NONBLOCK);
    // SAFETY: signalfd4 reads exactly `sizeof mask` = 8 bytes from a valid u64.
    let n = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            std::mem::size_of::<u64>(),
            flags,
        )
    } as i32;
    owned(n, "signalfd", &format!("task {pid} fd {fd}"))
}

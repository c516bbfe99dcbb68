//! eventfd (EVENTFD entries).
//!
//! Kernel mechanism: an eventfd is a 64-bit counter; fdinfo shows it as `eventfd-count` (hex)
//! and, on recent kernels, `eventfd-semaphore`. A restore creates `eventfd(count, flags)`.
//! CRIU's entry has no field for semaphore mode; ferry carries EFD_SEMAPHORE (1) in bit 0 of
//! `flags`, a bit an eventfd's open flags never have (they are always O_RDWR), so the entry
//! stays CRIU's and CRIU, which passes the flags to eventfd(2), gets the same mode back.

use std::os::fd::OwnedFd;

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, RestoreError};

const EFD_SEMAPHORE: u32 = 1;

// ---- dump ----

/// The EVENTFD entry of an fd.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let count = super::field(&fd.info, "eventfd-count")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| fd.state("eventfd", "fdinfo has no eventfd-count"))?;
    let sem = super::field(&fd.info, "eventfd-semaphore") == Some("1");
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Eventfd as i32,
        id,
        efd: Some(pb::EventfdFileEntry {
            id,
            flags: fd.flags | if sem { EFD_SEMAPHORE } else { 0 },
            fown: fd.fown,
            counter: count,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// A new eventfd with the entry's count, mode and O_NONBLOCK.
pub fn open(pid: u32, fd: u32, e: &pb::EventfdFileEntry) -> Result<OwnedFd, RestoreError> {
    let flags =
        libc::EFD_CLOEXEC | (e.flags as i32 & libc::O_NONBLOCK) | (e.flags & EFD_SEMAPHORE) as i32;
    // eventfd(2) takes an unsigned int; a larger count is added with a write afterwards.
    let init = e.counter.min(u64::from(u32::MAX)) as u32;
    // SAFETY: eventfd with integer arguments; returns a new fd.
    let n = unsafe { libc::eventfd(init, flags) };
    let efd = owned(n, "eventfd", &format!("task {pid} fd {fd}"))?;
    let rest = e.counter - u64::from(init);
    if rest > 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        let w = unsafe { libc::write(efd.as_raw_fd(), (&rest as *const u64).cast(), 8) };
        if w != 8 {
            return Err(RestoreError::State {
                pid,
                fd,
                kind: "eventfd",
                what: format!(
                    "setting count {}: {}",
                    e.counter,
                    std::io::Error::last_os_error()
                ),
            });
        }
    }
    Ok(efd)
}

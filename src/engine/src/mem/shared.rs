//! Shared memory objects of a restore: memfd-backed shmem (memfds), anonymous shared memory
//! (`/dev/zero (deleted)`), both made and filled once in the coordinator for every task that maps
//! them, and SysV attachments, staged by each task itself.
//!
//! Kernel mechanism: a SysV segment's pages live in a shmem file the kernel keeps per segment;
//! `shmat` maps the whole segment, and the mapping stays an attachment when moved with `mremap`
//! or trimmed with `munmap` (each VMA counts in `shm_nattch`, `shmdt` takes the one starting at
//! the address). So a VMA that covers part of a segment is staged by attaching the segment,
//! moving the VMA's part into the staging slot and unmapping the rest; the restorer's `mremap`
//! then puts it at its address, as it does every staged VMA.

use std::fs::File;
use std::os::fd::AsRawFd;

use ferry_images::pagemap::Pagemap;
use ferry_images::{pb, ImageDir};

use super::restore::{img_err, parent_pages, read_full, MemError, PAGE};

/// Stages a SysV shared memory VMA at `at`: attaches segment `shmid` (which the IPC namespace
/// restore, or the namespace itself, holds), keeps the VMA's part of the attachment and moves it
/// to `at`. The restorer's mremap then puts it in place, still an attachment of the segment
/// (shmdt works on it, shm_nattch counts it).
pub(super) fn attach_sysv(pid: u32, v: &pb::VmaEntry, at: u64) -> Result<(), MemError> {
    let size = v.end - v.start;
    let id = v.shmid as i32;
    let fail = |op: &'static str| {
        let e = std::io::Error::last_os_error();
        MemError::Sys {
            pid,
            op,
            start: v.start,
            end: v.end,
            source: std::io::Error::new(e.kind(), format!("SysV shm id {id}: {e}")),
        }
    };
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT into the struct above.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } != 0 {
        return Err(fail(
            "shmctl(IPC_STAT) (the segment must exist in the restoring IPC namespace)",
        ));
    }
    let seg = (ds.shm_segsz as u64).next_multiple_of(PAGE);
    if v.pgoff.checked_add(size).is_none_or(|e| e > seg) {
        return Err(MemError::Sys {
            pid,
            op: "attach of the SysV segment",
            start: v.start,
            end: v.end,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "SysV shm id {id} is {} bytes, the VMA needs {} at offset {}",
                    ds.shm_segsz, size, v.pgoff
                ),
            ),
        });
    }
    let mut flags = 0;
    if v.prot & libc::PROT_WRITE as u32 == 0 {
        flags |= libc::SHM_RDONLY;
    }
    if v.prot & libc::PROT_EXEC as u32 != 0 {
        flags |= libc::SHM_EXEC;
    }
    // SAFETY: the kernel picks a free address; nothing of ours lives there.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        return Err(fail("shmat"));
    }
    let base = p as u64;
    // SAFETY: moves part of the attachment made above onto the staging slot inside this task's
    // restore range, which holds no Rust object.
    let q = unsafe {
        libc::mremap(
            (base + v.pgoff) as *mut libc::c_void,
            size as usize,
            size as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            at as *mut libc::c_void,
        )
    };
    let moved = q != libc::MAP_FAILED;
    let err = (!moved).then(|| fail("mremap of the SysV attachment"));
    // The rest of the attachment goes (all of it when the move failed).
    let rest = if moved {
        [
            (base, v.pgoff),
            (base + v.pgoff + size, seg - v.pgoff - size),
        ]
    } else {
        [(base, seg), (0, 0)]
    };
    for (a, l) in rest.into_iter().filter(|&(_, l)| l > 0) {
        // SAFETY: unmaps only what is left of the attachment made above.
        unsafe { libc::munmap(a as *mut libc::c_void, l as usize) };
    }
    if let Some(e) = err {
        return Err(e);
    }
    // SAFETY: changes protection of the staged attachment only (PROT_NONE parts, say).
    if unsafe { libc::mprotect(at as *mut libc::c_void, size as usize, v.prot as i32) } != 0 {
        return Err(fail("mprotect of the SysV attachment"));
    }
    Ok(())
}

/// Creates and fills the memfd for one piece of shared memory (`pagemap-shmem-ID.img`), in the
/// coordinator, once for every task that maps it.
/// `sealing` makes a memfd that takes seals (MFD_ALLOW_SEALING); the caller adds them once
/// every mapping is in place.
pub fn shmem_memfd(
    dir: &ImageDir,
    shmid: u64,
    size: u64,
    name: &str,
    sealing: bool,
) -> Result<File, MemError> {
    let what = format!("pagemap-shmem-{shmid}.img");
    let cname = std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default();
    let flags = libc::MFD_CLOEXEC | if sealing { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: memfd_create with a valid C string; returns a new fd we own.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(img_err(0, what)(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh fd we own.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size).map_err(img_err(0, what.clone()))?;
    let span = size.next_multiple_of(PAGE);
    if !dir.has(&what) || span == 0 {
        return Ok(f);
    }
    // Read straight into a shared mapping of the memfd: one copy, no file growth (the tail of
    // the last page lies past EOF but inside the mapped page).
    // SAFETY: a fresh shared mapping of the memfd made above; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(img_err(0, what)(std::io::Error::last_os_error()));
    }
    let r = fill(dir, &what, p as u64, span);
    // SAFETY: unmaps only the mapping made above; the content lives on in the memfd.
    unsafe { libc::munmap(p, span as usize) };
    r?;
    Ok(f)
}

/// Creates and fills anonymous shared memory (`MAP_SHARED | MAP_ANONYMOUS`, a shmem object the
/// kernel names "/dev/zero (deleted)") for `shmid`, in the coordinator, and returns an fd to the
/// object through /proc/self/map_files, so every task maps the same object under the same name
/// as before the dump.
pub fn anon_shmem(dir: &ImageDir, shmid: u64, size: u64) -> Result<File, MemError> {
    let what = format!("pagemap-shmem-{shmid}.img");
    let size = size.next_multiple_of(PAGE);
    // SAFETY: a fresh shared anonymous mapping; nothing else refers to this range.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(img_err(0, what)(std::io::Error::last_os_error()));
    }
    let base = p as u64;
    let result = (|| {
        if dir.has(&what) {
            fill(dir, &what, base, size)?;
        }
        let path = format!("/proc/self/map_files/{base:x}-{:x}", base + size);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(img_err(0, path))
    })();
    // SAFETY: unmaps only the mapping made above; the object lives on through the fd.
    unsafe { libc::munmap(p, size as usize) };
    result
}

/// Reads the pages of shared memory object `what` (`pagemap-shmem-ID.img`) into its mapping at
/// `base`, `span` bytes long, in runs: each lands where it belongs with a single read.
fn fill(dir: &ImageDir, what: &str, base: u64, span: u64) -> Result<(), MemError> {
    let what = what.to_string();
    let data = dir.read(&what).map_err(img_err(0, what.clone()))?;
    let pm = Pagemap::read(&what, &data).map_err(img_err(0, what.clone()))?;
    parent_pages(0, &what, &pm)?;
    let pages_name = pm.pages_file();
    let ppath = dir.path().join(&pages_name);
    let plen = std::fs::metadata(&ppath)
        .map_err(img_err(0, pages_name.clone()))?
        .len();
    let runs = pm
        .runs(&what, &pages_name, plen)
        .map_err(img_err(0, what.clone()))?;
    let pages = File::open(&ppath).map_err(img_err(0, pages_name.clone()))?;
    for r in runs {
        let len = r.nr_pages * PAGE;
        if r.vaddr.checked_add(len).is_none_or(|e| e > span) {
            return Err(img_err(0, what.clone())(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("pages at {:#x} lie past the object's {span} bytes", r.vaddr),
            )));
        }
        // SAFETY: inside the mapping of `span` bytes at `base` (checked above).
        let buf =
            unsafe { std::slice::from_raw_parts_mut((base + r.vaddr) as *mut u8, len as usize) };
        read_full(&pages, buf, r.file_offset).map_err(|e| {
            img_err(0, pages_name.clone())(e.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "pages file too short")
            }))
        })?;
    }
    Ok(())
}

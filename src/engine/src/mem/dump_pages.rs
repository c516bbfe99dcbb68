//! Dump half, page contents: which pages are present, and moving them into pages-N.img.
//!
//! Kernel mechanism: /proc/PID/pagemap has one u64 per virtual page: bit 63 present, bit 62
//! swapped, bit 61 "file page or shared anonymous", bits 0..54 the PFN (visible to root). A
//! present page whose PFN is the kernel's shared zero page holds only zeros and is skipped; a
//! page of a private file mapping with bit 61 set was never copied-on-write and is restored from
//! the file. The pages that remain are drained by the parasite: it vmsplices them into a pipe
//! while ferry splices the pipe into the pages file, so the task and ferry run on two cores and
//! no page is copied through user space. VMAs without PROT_READ (vmsplice would fault) are read
//! through /proc/PID/mem, which may read them (FOLL_FORCE). Shared anonymous memory is a shmem
//! file: opened through /proc/PID/map_files, its allocated ranges found with SEEK_DATA/SEEK_HOLE,
//! and copied once per object into pagemap-shmem-INO.img and its own pages file.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use ferry_images::pb;
use ferry_inject::abi::Iovec;
use ferry_inject::{Parasite, ParasiteError};

use super::dump::{Contents, Vma};

/// Page size.
pub const PAGE: u64 = 4096;
const PME_PRESENT: u64 = 1 << 63;
const PME_SWAP: u64 = 1 << 62;
const PME_FILE: u64 = 1 << 61;
const PFN_MASK: u64 = (1 << 55) - 1;
/// pagemap_entry flags.
pub const PE_LAZY: u32 = 1 << 1;
/// pagemap_entry flags.
pub const PE_PRESENT: u32 = 1 << 2;

/// Errors of the page dump.
#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    /// I/O on a /proc file or the image.
    #[error("task {pid}: {op} {path}: {source}")]
    Io {
        pid: i32,
        op: &'static str,
        path: String,
        source: io::Error,
    },
    /// The parasite failed while draining.
    #[error("task {pid}: draining pages into {path}: {source}")]
    Drain {
        pid: i32,
        path: String,
        source: ParasiteError,
    },
}

type Result<T> = std::result::Result<T, PagesError>;

/// A run of pages to dump, in address order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First address.
    pub start: u64,
    /// Pages.
    pub nr: u64,
    /// PE_LAZY allowed.
    pub lazy: bool,
    /// Readable by the parasite (else through /proc/PID/mem).
    pub readable: bool,
}

/// Counters for stats-dump.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageStats {
    /// Pages looked at.
    pub scanned: u64,
    /// Pages written.
    pub written: u64,
    /// Zero pages skipped.
    pub zero: u64,
    /// Lazy-capable pages written.
    pub lazy: u64,
    /// Drain commands (pipes CRIU would count).
    pub pipes: u64,
}

/// The PFN of the kernel's shared zero page, found by reading a fresh anonymous page of ours.
pub fn zero_pfn() -> io::Result<u64> {
    // SAFETY: a fresh private anonymous page, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p` is a readable page we just mapped; the read faults in the zero page.
    let _ = unsafe { std::ptr::read_volatile(p as *const u8) };
    let f = File::open("/proc/self/pagemap");
    let mut b = [0u8; 8];
    let r = f.and_then(|f| f.read_exact_at(&mut b, (p as u64 / PAGE) * 8));
    // SAFETY: unmapping exactly what we mapped.
    unsafe { libc::munmap(p, PAGE as usize) };
    r?;
    let pme = u64::from_le_bytes(b);
    if pme & PME_PRESENT == 0 || pme & PFN_MASK == 0 {
        return Err(io::Error::other(
            "pagemap shows no PFN (CAP_SYS_ADMIN needed)",
        ));
    }
    Ok(pme & PFN_MASK)
}

/// Scans pagemap for the private pages of `vmas` worth dumping.
pub fn scan(pid: i32, vmas: &[Vma], zero: u64, stats: &mut PageStats) -> Result<Vec<Run>> {
    let path = format!("/proc/{pid}/pagemap");
    let io_err = |op, source| PagesError::Io {
        pid,
        op,
        path: path.clone(),
        source,
    };
    let f = File::open(&path).map_err(|e| io_err("open", e))?;
    let mut runs: Vec<Run> = Vec::new();
    let mut buf = vec![0u8; 8 * 32768];
    for v in vmas {
        let Contents::Private { lazy, file } = v.contents else {
            continue;
        };
        let readable = v.readable();
        let mut addr = v.start();
        while addr < v.end() {
            let n = ((v.end() - addr) / PAGE).min(32768) as usize;
            let b = &mut buf[..n * 8];
            f.read_exact_at(b, addr / PAGE * 8)
                .map_err(|e| io_err("read", e))?;
            stats.scanned += n as u64;
            for (i, c) in b.chunks_exact(8).enumerate() {
                let pme = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                let present = pme & PME_PRESENT != 0;
                let dump = if pme & PME_SWAP != 0 {
                    true
                } else if !present || (file && pme & PME_FILE != 0) {
                    false
                } else if pme & PFN_MASK == zero {
                    stats.zero += 1;
                    false
                } else {
                    true
                };
                if !dump {
                    continue;
                }
                let page = addr + i as u64 * PAGE;
                match runs.last_mut() {
                    Some(r)
                        if r.start + r.nr * PAGE == page
                            && r.lazy == lazy
                            && r.readable == readable =>
                    {
                        r.nr += 1
                    }
                    _ => runs.push(Run {
                        start: page,
                        nr: 1,
                        lazy,
                        readable,
                    }),
                }
            }
            addr += n as u64 * PAGE;
        }
    }
    Ok(runs)
}

/// pagemap_entry list for `runs` (after the pagemap_head).
pub fn entries(runs: &[Run]) -> Vec<pb::PagemapEntry> {
    runs.iter()
        .map(|r| pb::PagemapEntry {
            vaddr: r.start,
            compat_nr_pages: Some(0),
            in_parent: None,
            flags: Some(PE_PRESENT | if r.lazy { PE_LAZY } else { 0 }),
            nr_pages: Some(r.nr),
        })
        .collect()
}

/// Below this many bytes the helper thread is not worth starting.
const SPLIT_MIN: u64 = 8 << 20;

/// Splits `runs` at byte `at` of the pages file: (head, tail with file offsets).
fn split(runs: &[Run], at: u64) -> (Vec<Run>, Vec<(Run, u64)>) {
    let (mut head, mut tail, mut off) = (Vec::new(), Vec::new(), 0u64);
    for r in runs {
        let len = r.nr * PAGE;
        if off + len <= at {
            head.push(*r);
        } else if off >= at {
            tail.push((*r, off));
        } else {
            let n = (at - off) / PAGE;
            head.push(Run { nr: n, ..*r });
            let rest = Run {
                start: r.start + n * PAGE,
                nr: r.nr - n,
                ..*r
            };
            tail.push((rest, at));
        }
        off += len;
    }
    (head, tail)
}

/// Moves the pages of `runs` into `out` (a fresh pages file) in order; returns bytes written.
///
/// Both cores work: the first half goes through the parasite (it vmsplices on the task's
/// thread while this thread splices), the second half is copied by a helper thread with
/// process_vm_readv straight into a shared mapping of the same file.
pub fn write(
    parasite: &mut Parasite,
    runs: &[Run],
    out: &File,
    out_path: &str,
    stats: &mut PageStats,
) -> Result<u64> {
    let pid = parasite.pid();
    let total: u64 = runs.iter().map(|r| r.nr * PAGE).sum();
    let io_err = |op, source| PagesError::Io {
        pid,
        op,
        path: out_path.to_string(),
        source,
    };
    out.set_len(total).map_err(|e| io_err("size", e))?;
    let at = if total >= SPLIT_MIN {
        (total / 2) & !(PAGE - 1)
    } else {
        total
    };
    let (head, tail) = split(runs, at);
    std::thread::scope(|s| -> Result<()> {
        let helper = (!tail.is_empty()).then(|| s.spawn(|| copy_tail(pid, &tail, out, out_path)));
        let r = write_head(parasite, &head, out, out_path, stats);
        let h = helper.map(|h| h.join().expect("page copy thread panicked"));
        r?;
        h.unwrap_or(Ok(()))
    })?;
    for r in runs {
        stats.written += r.nr;
        if r.lazy {
            stats.lazy += r.nr;
        }
    }
    Ok(total)
}

/// The helper thread's share: task memory read into a shared mapping of the pages file.
fn copy_tail(pid: i32, tail: &[(Run, u64)], out: &File, out_path: &str) -> Result<()> {
    let first = tail[0].1;
    let last = tail.last().map(|(r, o)| o + r.nr * PAGE).unwrap_or(first);
    let len = (last - first) as usize;
    // SAFETY: a fresh shared mapping of our own file region [first, last), page aligned; no
    // one else maps it, and the other thread writes only below `first`.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(out),
            first as i64,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(PagesError::Io {
            pid,
            op: "mmap",
            path: out_path.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    let mut res = Ok(());
    for (r, off) in tail {
        let n = (r.nr * PAGE) as usize;
        // SAFETY: [off-first, off-first+n) lies inside the mapping, and runs do not overlap.
        let buf = unsafe {
            std::slice::from_raw_parts_mut((map as *mut u8).add((off - first) as usize), n)
        };
        if let Err(e) = ferry_inject::mem::read(pid, r.start, buf) {
            res = Err(PagesError::Io {
                pid,
                op: "copy task memory into",
                path: out_path.to_string(),
                source: io::Error::other(e.to_string()),
            });
            break;
        }
    }
    // SAFETY: unmapping exactly the mapping made above.
    unsafe { libc::munmap(map, len) };
    res
}

/// Splices what is left in the pipe into `out` up to `end`; fails if the pipe runs dry first.
fn finish_from_pipe(
    p: &ferry_inject::TaskPipe,
    out: &File,
    offset: &mut i64,
    end: i64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    while *offset < end {
        // SAFETY: both fds are valid; `offset` is ours.
        let n = unsafe {
            libc::splice(
                p.reader().as_raw_fd(),
                std::ptr::null_mut(),
                out.as_raw_fd(),
                offset,
                (end - *offset) as usize,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n <= 0 {
            return Err(io::Error::other(
                "pipe ran dry before the drain was complete",
            ));
        }
    }
    Ok(())
}

/// The parasite's share (runs in file order from offset 0).
fn write_head(
    parasite: &mut Parasite,
    runs: &[Run],
    out: &File,
    out_path: &str,
    stats: &mut PageStats,
) -> Result<()> {
    let pid = parasite.pid();
    let mut offset: i64 = 0;
    let mut pipe = None;
    let mut i = 0;
    while i < runs.len() {
        if !runs[i].readable {
            let r = runs[i];
            let len = (r.nr * PAGE) as usize;
            let mut buf = vec![0u8; len];
            ferry_inject::mem::read(pid, r.start, &mut buf).map_err(|e| PagesError::Io {
                pid,
                op: "read",
                path: format!("/proc/{pid}/mem at {:#x}", r.start),
                source: io::Error::other(e.to_string()),
            })?;
            out.write_all_at(&buf, offset as u64)
                .map_err(|source| PagesError::Io {
                    pid,
                    op: "write",
                    path: out_path.to_string(),
                    source,
                })?;
            offset += len as i64;
            i += 1;
            continue;
        }
        let j = runs[i..]
            .iter()
            .position(|r| !r.readable)
            .map_or(runs.len(), |k| i + k);
        let iovs: Vec<Iovec> = runs[i..j]
            .iter()
            .map(|r| Iovec {
                base: r.start,
                len: r.nr * PAGE,
            })
            .collect();
        let drain_err = |source| PagesError::Drain {
            pid,
            path: out_path.to_string(),
            source,
        };
        if pipe.is_none() {
            pipe = Some(parasite.open_pipe(1 << 20).map_err(drain_err)?);
        }
        let p = pipe.as_ref().expect("pipe just opened");
        // One drain command per call, so a lost race (below) can be finished chunk by chunk.
        for chunk in iovs.chunks(ferry_inject::abi::MAX_DRAIN_IOVS) {
            let end = offset + chunk.iter().map(|v| v.len as i64).sum::<i64>();
            match parasite.drain(p, chunk, out.as_fd(), Some(&mut offset)) {
                Ok(_) => {}
                // ferry-inject's drain can see the parasite's acknowledgement before the last
                // bytes it vmspliced: it then reports a short drain although the parasite
                // succeeded and the bytes wait in the pipe. Take them; anything really missing
                // still fails.
                Err(ParasiteError::Local { what: "drain", .. })
                    if finish_from_pipe(p, out, &mut offset, end).is_ok() => {}
                Err(e) => return Err(drain_err(e)),
            }
            stats.pipes += 1;
        }
        i = j;
    }
    if let Some(p) = pipe {
        parasite.close_pipe(p).map_err(|source| PagesError::Drain {
            pid,
            path: out_path.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Copies the allocated pages of the shmem object mapped at `vma` of `pid` into `out`;
/// returns the pagemap entries (vaddr = offset in the object) and the page count.
pub fn shmem(
    pid: i32,
    vma: &Vma,
    out: &File,
    out_path: &str,
) -> Result<(Vec<pb::PagemapEntry>, u64)> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start(), vma.end());
    let io_err = |op, p: &str, source| PagesError::Io {
        pid,
        op,
        path: p.to_string(),
        source,
    };
    let f = File::open(&path).map_err(|e| io_err("open", &path, e))?;
    let size = f.metadata().map_err(|e| io_err("stat", &path, e))?.len();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut entries = Vec::new();
    let (mut pos, mut written) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(io_err("SEEK_DATA", &path, e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io_err("SEEK_HOLE", &path, io::Error::last_os_error()));
        }
        let (start, end) = (
            data as u64 & !(PAGE - 1),
            (hole as u64).div_ceil(PAGE) * PAGE,
        );
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)
                .map_err(|e| io_err("read", &path, e))?;
            out.write_all_at(&buf[..n], written * PAGE + (at - start))
                .map_err(|e| io_err("write", out_path, e))?;
            at += n as u64;
        }
        let nr = (end - start) / PAGE;
        entries.push(pb::PagemapEntry {
            vaddr: start,
            compat_nr_pages: Some(0),
            in_parent: None,
            flags: Some(PE_PRESENT),
            nr_pages: Some(nr),
        });
        written += nr;
        pos = end;
    }
    Ok((entries, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_zero_page() {
        let z = zero_pfn().unwrap();
        assert!(z > 0);
        assert_eq!(zero_pfn().unwrap(), z);
    }

    #[test]
    fn split_cuts_a_run_at_the_byte() {
        let runs = [
            Run {
                start: 0x1000,
                nr: 2,
                lazy: true,
                readable: true,
            },
            Run {
                start: 0x9000,
                nr: 4,
                lazy: false,
                readable: true,
            },
        ];
        let (h, t) = split(&runs, 3 * PAGE);
        assert_eq!(
            h,
            vec![
                runs[0],
                Run {
                    start: 0x9000,
                    nr: 1,
                    ..runs[1]
                }
            ]
        );
        assert_eq!(
            t,
            vec![(
                Run {
                    start: 0xa000,
                    nr: 3,
                    ..runs[1]
                },
                3 * PAGE
            )]
        );
        let (h, t) = split(&runs, 6 * PAGE);
        assert_eq!((h.len(), t.len()), (2, 0));
    }

    #[test]
    fn entries_carry_flags() {
        let runs = [
            Run {
                start: 0x1000,
                nr: 2,
                lazy: true,
                readable: true,
            },
            Run {
                start: 0x9000,
                nr: 1,
                lazy: false,
                readable: true,
            },
        ];
        let e = entries(&runs);
        assert_eq!(e[0].flags, Some(PE_PRESENT | PE_LAZY));
        assert_eq!(
            (e[1].vaddr, e[1].nr_pages, e[1].flags),
            (0x9000, Some(1), Some(PE_PRESENT))
        );
    }
}

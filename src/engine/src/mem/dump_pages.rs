//! Dump half, page contents: which pages are present, and moving them into pages-N.img.
//!
//! Kernel mechanism: /proc/PID/pagemap has one u64 per virtual page: bit 63 present, bit 62
//! swapped, bit 61 "file page or shared anonymous", bits 0..54 the PFN (visible to root). A
//! present page whose PFN is the kernel's shared zero page holds only zeros and is skipped; a
//! page of a private file mapping with bit 61 set was never copied-on-write and is restored from
//! the file. The pages that remain are cut into chunks of the pages file that two sides take
//! from one cursor: the parasite vmsplices a chunk into a pipe while ferry splices the pipe into
//! the file at the chunk's offset (no copy through user space), and a helper thread copies its
//! chunks with process_vm_readv into a small buffer and pwrite()s them, so both cores copy and
//! the faster side does more. Writes into one file take its inode lock in turn, so on tmpfs the
//! page allocation inside each write is the serial part: the pages file is allocated before the
//! freeze where it can be ([`super::reserve`]) and the frozen copy only fills it. VMAs without
//! PROT_READ (vmsplice would fault) are read through /proc/PID/mem, which may read them
//! (FOLL_FORCE). Shared anonymous memory is a shmem file: opened through /proc/PID/map_files,
//! its allocated ranges found with SEEK_DATA/SEEK_HOLE, and copied once per object into
//! pagemap-shmem-INO.img and its own pages file.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
/// Work unit the two sides take turns on: small enough that the faster side ends up doing more
/// (and both finish together), large enough that a drain command's round trip is noise.
const CHUNK: u64 = 8 << 20;
/// The helper's bounce buffer: stays in the cache between the read and the write.
const HELPER_BUF: usize = 1 << 20;

/// Pages of the pages file's byte range [off, off + CHUNK) and where they start in the file.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    off: u64,
    runs: Vec<Run>,
}

/// Cuts `runs` (in file order) into chunks of `size` bytes of the pages file.
fn chunks(runs: &[Run], size: u64) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut off = 0u64;
    for r in runs {
        let mut r = *r;
        while r.nr > 0 {
            let k = off / size;
            if out.last().is_none_or(|c| c.off / size != k) {
                out.push(Chunk {
                    off,
                    runs: Vec::new(),
                });
            }
            let room = ((k + 1) * size - off) / PAGE;
            let n = r.nr.min(room);
            out.last_mut()
                .expect("chunk pushed above")
                .runs
                .push(Run { nr: n, ..r });
            r.start += n * PAGE;
            r.nr -= n;
            off += n * PAGE;
        }
    }
    out
}

/// Moves the pages of `runs` into `out` (a fresh or reserved pages file, sized here to the
/// pages) in order; returns bytes written.
///
/// Both cores work: the file is cut into chunks which two sides take from one cursor, each
/// writing its chunk at the chunk's offset. This thread drains its chunks through the parasite
/// (it vmsplices on the task's thread while this thread splices); a helper thread copies its
/// chunks with process_vm_readv into a small buffer and pwrite()s them. The faster side simply
/// takes more chunks.
pub fn write(
    parasite: &mut Parasite,
    runs: &[Run],
    out: &File,
    out_path: &str,
    stats: &mut PageStats,
) -> Result<u64> {
    let pid = parasite.pid();
    let total: u64 = runs.iter().map(|r| r.nr * PAGE).sum();
    out.set_len(total).map_err(|source| PagesError::Io {
        pid,
        op: "size",
        path: out_path.to_string(),
        source,
    })?;
    let work = chunks(runs, CHUNK);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Both sides stop taking chunks once either failed.
    let take = || {
        if failed.load(Ordering::Relaxed) {
            return None;
        }
        work.get(next.fetch_add(1, Ordering::Relaxed))
    };
    std::thread::scope(|s| -> Result<()> {
        let helper = (total >= SPLIT_MIN).then(|| {
            s.spawn(|| {
                let mut buf = vec![0u8; HELPER_BUF];
                while let Some(c) = take() {
                    if let Err(e) = copy_chunk(pid, c, out, out_path, &mut buf) {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            })
        });
        let mut pipe = None;
        let mut r = Ok(());
        while let Some(c) = take() {
            r = drain_chunk(parasite, &mut pipe, c, out, out_path, stats);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
                break;
            }
        }
        if let (Ok(()), Some(p)) = (&r, pipe) {
            r = parasite.close_pipe(p).map_err(|source| PagesError::Drain {
                pid,
                path: out_path.to_string(),
                source,
            });
        }
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

/// The helper thread's share: task memory read through a bounce buffer into the pages file.
fn copy_chunk(pid: i32, c: &Chunk, out: &File, out_path: &str, buf: &mut [u8]) -> Result<()> {
    let mut off = c.off;
    for r in &c.runs {
        let (mut addr, end) = (r.start, r.start + r.nr * PAGE);
        while addr < end {
            let n = ((end - addr) as usize).min(buf.len());
            let b = &mut buf[..n];
            ferry_inject::mem::read(pid, addr, b).map_err(|e| PagesError::Io {
                pid,
                op: "read",
                path: format!("/proc/{pid}/mem at {addr:#x}"),
                source: io::Error::other(e.to_string()),
            })?;
            out.write_all_at(b, off).map_err(|source| PagesError::Io {
                pid,
                op: "write",
                path: out_path.to_string(),
                source,
            })?;
            addr += n as u64;
            off += n as u64;
        }
    }
    Ok(())
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

/// The parasite's share: one chunk, drained through `pipe` (opened on first use).
fn drain_chunk(
    parasite: &mut Parasite,
    pipe: &mut Option<ferry_inject::TaskPipe>,
    c: &Chunk,
    out: &File,
    out_path: &str,
    stats: &mut PageStats,
) -> Result<()> {
    let pid = parasite.pid();
    let runs = &c.runs;
    let mut offset = c.off as i64;
    let mut i = 0;
    while i < runs.len() {
        if !runs[i].readable {
            // vmsplice would fault on it: read it through /proc/PID/mem.
            let r = runs[i];
            let mut buf = vec![0u8; (r.nr * PAGE) as usize];
            let one = Chunk {
                off: offset as u64,
                runs: vec![r],
            };
            copy_chunk(pid, &one, out, out_path, &mut buf)?;
            offset += buf.len() as i64;
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
            *pipe = Some(parasite.open_pipe(1 << 20).map_err(drain_err)?);
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
    fn chunks_cut_runs_at_the_boundaries() {
        let run = |start, nr, readable| Run {
            start,
            nr,
            lazy: false,
            readable,
        };
        let runs = [
            run(0x1000, 2, true),
            run(0x9000, 5, false),
            run(0x20000, 1, true),
        ];
        let c = chunks(&runs, 3 * PAGE);
        assert_eq!(
            c,
            vec![
                Chunk {
                    off: 0,
                    runs: vec![run(0x1000, 2, true), run(0x9000, 1, false)]
                },
                Chunk {
                    off: 3 * PAGE,
                    runs: vec![run(0xa000, 3, false)]
                },
                Chunk {
                    off: 6 * PAGE,
                    runs: vec![run(0xd000, 1, false), run(0x20000, 1, true)]
                },
            ]
        );
        assert!(chunks(&[], 3 * PAGE).is_empty());
        // Every page lands once, in file order.
        let flat: Vec<u64> = c
            .iter()
            .flat_map(|c| {
                c.runs
                    .iter()
                    .flat_map(|r| (0..r.nr).map(|i| r.start + i * PAGE))
            })
            .collect();
        let want: Vec<u64> = runs
            .iter()
            .flat_map(|r| (0..r.nr).map(move |i| r.start + i * PAGE))
            .collect();
        assert_eq!(flat, want);
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

//! Restore half of the address space.
//!
//! The task's target layout comes from mm-PID.img (VMAs) and pagemap-PID.img + pages-N.img
//! (contents). Before the restorer runs, the task's Rust half *stages* every VMA inside its
//! restore range: an anonymous private VMA is mapped fresh there and its pages are `pread` into
//! it (the only copy the data ever makes), a file VMA is mapped from the fd the coordinator opened
//! (private ones get their dumped pages written over, which makes exactly those pages COW copies),
//! and shared memory comes from the memfd the coordinator created and filled once for all tasks
//! (a memfd mapping maps the very memfd its fds reopen; a mapping of an unlinked file maps the
//! re-created ghost, unlinked again before any task runs); a SysV attachment is made by the task
//! itself ([`super::shared`]).
//! Each staged mapping is placed at the same offset modulo 2 MiB as its target so huge pages can
//! move whole. The restorer then `mremap`s each staged mapping to its target address: page tables
//! move, no data is copied. The kernel's current vDSO/vvar/vvar_vclock are moved to where the image
//! had them (same kernel: same sizes, checked before anything is forked).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ferry_blob_abi::restorer::{Madvise, Range, Remap};
use ferry_images::pagemap::{PageRun, Pagemap};
use ferry_images::{pb, ImageDir};
use thiserror::Error;

pub use super::shared::{anon_shmem, shmem_memfd};

/// Page size.
pub const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;

/// VMA status bits (CRIU's VMA_AREA_* / VMA_*).
pub mod status {
    pub const REGULAR: u32 = 1 << 0;
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const FILE_PRIVATE: u32 = 1 << 6;
    pub const FILE_SHARED: u32 = 1 << 7;
    pub const ANON_SHARED: u32 = 1 << 8;
    pub const ANON_PRIVATE: u32 = 1 << 9;
    pub const SYSVIPC: u32 = 1 << 10;
    pub const SOCKET: u32 = 1 << 11;
    pub const VVAR: u32 = 1 << 12;
    pub const AIORING: u32 = 1 << 13;
    pub const MEMFD: u32 = 1 << 14;
    pub const SHSTK: u32 = 1 << 15;
    pub const UPROBES: u32 = 1 << 17;
    pub const UNSUPP: u32 = 1 << 31;
}

/// Errors of the memory restore, naming task, VMA and file.
#[derive(Debug, Error)]
pub enum MemError {
    /// An image could not be read or is inconsistent.
    #[error("task {pid}: {what}: {source}")]
    Image {
        /// Task.
        pid: u32,
        /// Which image.
        what: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The layout holds something ferry cannot restore yet.
    #[error("task {pid}: VMA {start:#x}-{end:#x}: {what} is not supported by ferry's restore yet")]
    Unsupported {
        /// Task.
        pid: u32,
        /// VMA start.
        start: u64,
        /// VMA end.
        end: u64,
        /// What.
        what: String,
    },
    /// The image is inconsistent.
    #[error("task {pid}: {problem}")]
    Invalid {
        /// Task.
        pid: u32,
        /// What is wrong.
        problem: InvalidLayout,
    },
    /// A syscall failed while staging.
    #[error("task {pid}: {op} for VMA {start:#x}-{end:#x}: {source}")]
    Sys {
        /// Task.
        pid: u32,
        /// Operation.
        op: &'static str,
        /// VMA start.
        start: u64,
        /// VMA end.
        end: u64,
        /// Why.
        source: std::io::Error,
    },
    /// A pages file ended early.
    #[error("task {pid}: {file} ends before offset {offset} (pages for {vaddr:#x})")]
    ShortPages {
        /// Task.
        pid: u32,
        /// Pages file.
        file: String,
        /// Offset wanted.
        offset: u64,
        /// Page address.
        vaddr: u64,
    },
    /// The kernel's vDSO differs from the image's.
    #[error("task {pid}: vDSO/vvar layout of the image ({image}) differs from this kernel's ({current}); restoring across kernels is not supported yet")]
    Vdso {
        /// Task.
        pid: u32,
        /// Image sizes.
        image: String,
        /// Current sizes.
        current: String,
    },
}

/// A layout problem.
#[derive(Debug, Error)]
pub enum InvalidLayout {
    /// VMA bounds are wrong.
    #[error("VMA {0:#x}-{1:#x} is empty, unaligned or overlaps the previous one")]
    BadVma(u64, u64),
    /// Pages outside any VMA.
    #[error("pagemap run {0:#x} ({1} pages) is not inside a VMA")]
    RunOutside(u64, u64),
    /// A file VMA names a file the images do not have.
    #[error("VMA {0:#x}: file id {1} is not in files.img")]
    NoFile(u64, u64),
}

/// One task's memory image.
#[derive(Debug, Clone)]
pub struct MemImage {
    /// Task pid.
    pub pid: u32,
    /// The mm entry.
    pub mm: pb::MmEntry,
    /// Stored page runs.
    pub runs: Vec<PageRun>,
    /// Its pages file.
    pub pages: PathBuf,
}

pub(super) fn img_err<E: std::error::Error + Send + Sync + 'static>(
    pid: u32,
    what: String,
) -> impl FnOnce(E) -> MemError {
    move |e| MemError::Image {
        pid,
        what,
        source: Box::new(e),
    }
}

/// Reads and checks mm-PID.img and pagemap-PID.img.
pub fn load(dir: &ImageDir, pid: u32) -> Result<MemImage, MemError> {
    let name = format!("mm-{pid}.img");
    let mm: pb::MmEntry = dir.read_one(&name).map_err(img_err(pid, name))?;
    let pname = format!("pagemap-{pid}.img");
    let data = dir.read(&pname).map_err(img_err(pid, pname.clone()))?;
    let pm = Pagemap::read(&pname, &data).map_err(img_err(pid, pname.clone()))?;
    parent_pages(pid, &pname, &pm)?;
    let pages_name = pm.pages_file();
    let pages = dir.path().join(&pages_name);
    let len = std::fs::metadata(&pages)
        .map_err(img_err(pid, pages_name.clone()))?
        .len();
    let runs = pm
        .runs(&pname, &pages_name, len)
        .map_err(img_err(pid, pname))?;
    let img = MemImage {
        pid,
        mm,
        runs,
        pages,
    };
    img.check()?;
    Ok(img)
}

impl MemImage {
    fn check(&self) -> Result<(), MemError> {
        let pid = self.pid;
        let mut prev = 0u64;
        for v in &self.mm.vmas {
            if v.end <= v.start || v.start % PAGE != 0 || v.end % PAGE != 0 || v.start < prev {
                return Err(MemError::Invalid {
                    pid,
                    problem: InvalidLayout::BadVma(v.start, v.end),
                });
            }
            prev = v.end;
            if v.status & status::VSYSCALL == 0 && v.end > TASK_SIZE {
                return Err(MemError::Unsupported {
                    pid,
                    start: v.start,
                    end: v.end,
                    what: "a mapping above the 47-bit address space (5-level paging)".into(),
                });
            }
            let bad = [
                (status::SOCKET, "a packet socket ring"),
                (status::AIORING, "an AIO ring"),
                (status::SHSTK, "a shadow stack"),
                (status::UPROBES, "a uprobes area"),
                (status::UNSUPP, "a mapping CRIU marked unsupported"),
            ];
            for (bit, what) in bad {
                if v.status & bit != 0 {
                    return Err(MemError::Unsupported {
                        pid,
                        start: v.start,
                        end: v.end,
                        what: what.into(),
                    });
                }
            }
        }
        for r in &self.runs {
            // A run may span adjacent VMAs; every page of it must lie in one.
            let end = r.vaddr + r.nr_pages * PAGE;
            let mut at = r.vaddr;
            for v in &self.mm.vmas {
                if v.start <= at && at < v.end {
                    at = v.end.min(end);
                }
            }
            if at < end {
                return Err(MemError::Invalid {
                    pid,
                    problem: InvalidLayout::RunOutside(r.vaddr, r.nr_pages),
                });
            }
        }
        Ok(())
    }

    /// VMAs the task's Rust half stages (everything but vDSO, vvar and vsyscall).
    pub fn staged(&self) -> impl Iterator<Item = &pb::VmaEntry> {
        self.mm.vmas.iter().filter(|v| {
            v.status & (status::VDSO | status::VVAR | status::VSYSCALL) == 0 && v.end <= TASK_SIZE
        })
    }

    /// Bytes of restore range the staging needs (with the 2 MiB congruence padding).
    pub fn staging_size(&self) -> u64 {
        self.staged().map(|v| v.end - v.start + HUGE).sum::<u64>() + HUGE
    }

    /// (vvar block, vdso) of the image: the vvar block spans every VVAR VMA (CRIU merges
    /// `[vvar]` and `[vvar_vclock]`, ferry may list them apart).
    pub fn vdso(&self) -> (Option<Range>, Option<Range>) {
        let span = |bit: u32| {
            let v: Vec<_> = self
                .mm
                .vmas
                .iter()
                .filter(|v| v.status & bit != 0)
                .collect();
            match (v.first(), v.last()) {
                (Some(a), Some(b)) => Some(Range {
                    start: a.start,
                    len: b.end - a.start,
                }),
                _ => None,
            }
        };
        (span(status::VVAR), span(status::VDSO))
    }

    /// Every VMA range below TASK_SIZE (for choosing the restore range).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.mm
            .vmas
            .iter()
            .filter(|v| v.end <= TASK_SIZE)
            .map(|v| (v.start, v.end))
    }
}

/// Refuses pagemap entries whose pages are not in this checkpoint (in a parent checkpoint of an
/// incremental dump, or lazy-only): restoring them as zeros would corrupt the task.
pub(super) fn parent_pages(pid: u32, name: &str, pm: &Pagemap) -> Result<(), MemError> {
    if let Some(it) = pm.items.iter().find(|i| !i.in_pages_file()) {
        let n = it.pages();
        return Err(MemError::Unsupported {
            pid,
            start: it.entry.vaddr,
            end: it.entry.vaddr + n * PAGE,
            what: format!(
                "{name}: pages kept in a parent checkpoint or served lazily (pagemap flags {:#x})",
                it.entry.flags.unwrap_or(0)
            ),
        });
    }
    Ok(())
}

/// Highest user address + 1 with 4-level paging.
pub const TASK_SIZE: u64 = (1 << 47) - PAGE;

/// The coordinator's own special mappings, as found in /proc/self/maps.
#[derive(Debug, Clone, Copy, Default)]
pub struct CurrentVdso {
    /// `[vvar]`.
    pub vvar: Option<Range>,
    /// `[vvar_vclock]` (kernels from 6.13 on).
    pub vclock: Option<Range>,
    /// `[vdso]`.
    pub vdso: Option<Range>,
}

impl CurrentVdso {
    /// Reads /proc/self/maps.
    pub fn read() -> std::io::Result<Self> {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let mut cur = Self::default();
        for line in maps.lines() {
            let mut it = line.split_whitespace();
            let Some(range) = it.next() else { continue };
            let name = it.nth(4).unwrap_or("");
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            let r = Some(Range {
                start: a,
                len: b - a,
            });
            match name {
                "[vvar]" => cur.vvar = r,
                "[vvar_vclock]" => cur.vclock = r,
                "[vdso]" => cur.vdso = r,
                _ => {}
            }
        }
        Ok(cur)
    }

    fn vvar_len(&self) -> u64 {
        self.vvar.map_or(0, |r| r.len) + self.vclock.map_or(0, |r| r.len)
    }

    /// Ranges the restorer must keep until it moves them.
    pub fn keep(&self) -> Vec<Range> {
        [self.vvar, self.vclock, self.vdso]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Bytes of parking space the moves need.
    pub fn park_len(&self) -> u64 {
        self.vvar_len() + self.vdso.map_or(0, |r| r.len)
    }

    /// Checks the image's vDSO/vvar sizes match this kernel's.
    pub fn check(&self, img: &MemImage) -> Result<(), MemError> {
        let (ivvar, ivdso) = img.vdso();
        let ok = match (ivvar, ivdso) {
            (None, None) => true,
            (vv, Some(vd)) => {
                self.vdso.map(|r| r.len) == Some(vd.len)
                    && vv.map_or(0, |r| r.len) == self.vvar_len()
            }
            (Some(_), None) => false,
        };
        if ok {
            return Ok(());
        }
        let show = |vv: Option<u64>, vd: Option<u64>| {
            format!(
                "vvar {} KiB, vdso {} KiB",
                vv.unwrap_or(0) / 1024,
                vd.unwrap_or(0) / 1024
            )
        };
        Err(MemError::Vdso {
            pid: img.pid,
            image: show(ivvar.map(|r| r.len), ivdso.map(|r| r.len)),
            current: show(Some(self.vvar_len()), self.vdso.map(|r| r.len)),
        })
    }

    /// The moves: first park everything inside the restore range at `park` (the targets may
    /// overlap the current places), then put each piece where the image had it. Without a vDSO
    /// in the image nothing is kept or moved (the restorer unmaps the current one).
    pub fn moves(&self, img: &MemImage, park: u64) -> Vec<Remap> {
        let (ivvar, ivdso) = img.vdso();
        let Some(ivdso) = ivdso else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut at = park;
        let mut second = Vec::new();
        let mut vvar_to = ivvar.map_or(0, |r| r.start);
        for r in [self.vvar, self.vclock].into_iter().flatten() {
            out.push(Remap {
                from: r.start,
                len: r.len,
                to: at,
            });
            second.push(Remap {
                from: at,
                len: r.len,
                to: vvar_to,
            });
            vvar_to += r.len;
            at += r.len;
        }
        if let Some(r) = self.vdso {
            out.push(Remap {
                from: r.start,
                len: r.len,
                to: at,
            });
            second.push(Remap {
                from: at,
                len: r.len,
                to: ivdso.start,
            });
        }
        out.extend(second);
        out
    }
}

/// fds the coordinator opened for file-backed and shared mappings, by files.img id (file VMAs)
/// or by shmid (anonymous shared memory).
#[derive(Debug, Default)]
pub struct MapFds {
    /// files.img id -> fd.
    pub by_file: BTreeMap<u64, RawFd>,
    /// shmid -> memfd (anonymous shared memory).
    pub by_shmid: BTreeMap<u64, RawFd>,
}

/// What staging produced for the restorer.
#[derive(Debug, Default)]
pub struct Staged {
    /// mremaps, in order.
    pub remaps: Vec<Remap>,
    /// madvise calls after the moves.
    pub madvise: Vec<Madvise>,
    /// Pages read from the pages file.
    pub pages: u64,
}

fn sys_err(pid: u32, op: &'static str, v: &pb::VmaEntry) -> MemError {
    MemError::Sys {
        pid,
        op,
        start: v.start,
        end: v.end,
        source: std::io::Error::last_os_error(),
    }
}

/// Stages every VMA inside `[base, base + len)` and fills its pages (runs in the forked task).
pub fn stage(img: &MemImage, fds: &MapFds, base: u64, len: u64) -> Result<Staged, MemError> {
    let pid = img.pid;
    let pages = File::open(&img.pages).map_err(|e| MemError::Image {
        pid,
        what: img.pages.display().to_string(),
        source: Box::new(e),
    })?;
    let mut out = Staged::default();
    let mut at = base;
    let mut jobs = Vec::new();
    let mut reprotect = Vec::new();
    for v in img.staged() {
        let size = v.end - v.start;
        // Same offset modulo 2 MiB as the target, so THP-sized pieces can move whole.
        at += (v.start.wrapping_sub(at)) % HUGE;
        if at + size > base + len {
            return Err(sys_err(pid, "staging (restore range too small)", v));
        }
        let growsdown = if v.flags & libc::MAP_GROWSDOWN as u32 != 0 {
            libc::MAP_GROWSDOWN
        } else {
            0
        };
        let prot = v.prot as i32;
        let shared = v.flags & libc::MAP_SHARED as u32 != 0;
        if v.status & status::SYSVIPC != 0 {
            super::shared::attach_sysv(pid, v, at)?;
            out.remaps.push(Remap {
                from: at,
                len: size,
                to: v.start,
            });
            push_madvise(&mut out.madvise, v);
            at += size;
            continue;
        }
        let (fd, staged_prot, flags, off) =
            if v.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0 {
                let fd = *fds.by_file.get(&v.shmid).ok_or(MemError::Invalid {
                    pid,
                    problem: InvalidLayout::NoFile(v.start, v.shmid),
                })?;
                let f = if shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                let sp = if shared {
                    prot
                } else {
                    prot | libc::PROT_WRITE
                };
                (fd, sp, f, v.pgoff as i64)
            } else if v.status & status::ANON_SHARED != 0 {
                let fd = *fds.by_shmid.get(&v.shmid).ok_or(MemError::Invalid {
                    pid,
                    problem: InvalidLayout::NoFile(v.start, v.shmid),
                })?;
                (fd, prot, libc::MAP_SHARED, v.pgoff as i64)
            } else {
                (
                    -1,
                    prot | libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    0,
                )
            };
        // SAFETY: MAP_FIXED inside this task's restore range, which holds no Rust object.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                size as usize,
                staged_prot,
                flags | libc::MAP_FIXED | growsdown,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys_err(pid, "mmap", v));
        }
        if !shared {
            for r in &img.runs {
                // The part of the run inside this VMA.
                let rs = r.vaddr.max(v.start);
                let re = (r.vaddr + r.nr_pages * PAGE).min(v.end);
                if rs >= re {
                    continue;
                }
                // Chunks of at most 16 MiB, so two readers share big VMAs evenly.
                let mut c = rs;
                while c < re {
                    let ce = (c + FILL_CHUNK).min(re);
                    jobs.push(Fill {
                        dst: at + (c - v.start),
                        len: ce - c,
                        off: r.file_offset + (c - r.vaddr),
                        vaddr: c,
                        vma: (v.start, v.end),
                    });
                    c = ce;
                }
                out.pages += (re - rs) / PAGE;
            }
            if staged_prot != prot {
                reprotect.push((at, size, prot, v));
            }
        }
        out.remaps.push(Remap {
            from: at,
            len: size,
            to: v.start,
        });
        push_madvise(&mut out.madvise, v);
        at += size;
    }
    fill(pid, &img.pages, &pages, &jobs)?;
    for (at, size, prot, v) in reprotect {
        // SAFETY: changes protection of a staged mapping made above only.
        if unsafe { libc::mprotect(at as *mut libc::c_void, size as usize, prot) } != 0 {
            return Err(sys_err(pid, "mprotect", v));
        }
    }
    if img.mm.thp_disabled == Some(true) {
        // Applied by the task's Rust half right away: it is a per-mm flag.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    Ok(out)
}

fn push_madvise(out: &mut Vec<Madvise>, v: &pb::VmaEntry) {
    let madv = v.madv.unwrap_or(0);
    for bit in 0..64u64 {
        if madv & (1 << bit) != 0 {
            out.push(Madvise {
                start: v.start,
                len: v.end - v.start,
                advice: bit,
            });
        }
    }
}

const FILL_CHUNK: u64 = 16 << 20;

/// One read of page data into a staged mapping.
#[derive(Debug, Clone, Copy)]
struct Fill {
    dst: u64,
    len: u64,
    off: u64,
    vaddr: u64,
    vma: (u64, u64),
}

/// Reads every job's pages into place; with more than 64 MiB to read, two threads share the
/// work (page faults on fresh memory dominate, and they scale with cores).
fn fill(pid: u32, path: &std::path::Path, pages: &File, jobs: &[Fill]) -> Result<(), MemError> {
    let total: u64 = jobs.iter().map(|j| j.len).sum();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<(), MemError> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(j) = jobs.get(i) else {
                return Ok(());
            };
            // SAFETY: dst..dst+len lies inside a writable staged mapping made by `stage` (runs
            // were checked to lie inside their VMA); jobs never overlap.
            let buf = unsafe { std::slice::from_raw_parts_mut(j.dst as *mut u8, j.len as usize) };
            read_full(pages, buf, j.off).map_err(|e| match e {
                None => MemError::ShortPages {
                    pid,
                    file: path.display().to_string(),
                    offset: j.off + j.len,
                    vaddr: j.vaddr,
                },
                Some(e) => MemError::Sys {
                    pid,
                    op: "read of pages",
                    start: j.vma.0,
                    end: j.vma.1,
                    source: e,
                },
            })?;
        }
    };
    if total <= 64 << 20 {
        return work();
    }
    std::thread::scope(|s| {
        let helper = s.spawn(work);
        let mine = work();
        let theirs = helper.join().unwrap_or(Ok(()));
        mine.and(theirs)
    })
}

/// Reads exactly `buf.len()` bytes at `off`; `Err(None)` at end of file.
pub(super) fn read_full(
    f: &File,
    buf: &mut [u8],
    mut off: u64,
) -> Result<(), Option<std::io::Error>> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off) {
            Ok(0) => return Err(None),
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(())
}

/// The `prctl_mm_map` for the task (auxv placed by the caller).
pub fn mm_map(mm: &pb::MmEntry, auxv: u64, exe_fd: RawFd) -> ferry_blob_abi::restorer::PrctlMmMap {
    ferry_blob_abi::restorer::PrctlMmMap {
        start_code: mm.mm_start_code,
        end_code: mm.mm_end_code,
        start_data: mm.mm_start_data,
        end_data: mm.mm_end_data,
        start_brk: mm.mm_start_brk,
        brk: mm.mm_brk,
        start_stack: mm.mm_start_stack,
        arg_start: mm.mm_arg_start,
        arg_end: mm.mm_arg_end,
        env_start: mm.mm_env_start,
        env_end: mm.mm_env_end,
        auxv,
        auxv_size: (mm.mm_saved_auxv.len() * 8) as u32,
        exe_fd: exe_fd as u32,
    }
}

//! Dump half, address space: every VMA of /proc/PID/smaps classified as CRIU classifies it.
//!
//! Kernel mechanism: /proc/PID/smaps lists each VMA with its protection, sharing, file offset,
//! device/inode, name and `VmFlags` (two-letter kernel vm_flags: `gd` grows-down, `dd`
//! dont-dump, `nh` no-hugepage, ...). For file-backed and shared-anonymous VMAs
//! /proc/PID/map_files/START-END is a link to the very file mapped (also when its path was
//! replaced), so stat through it gives the inode, mode and size CRIU records. Named by maps:
//! `/memfd:NAME (deleted)` is a memfd (VMA_AREA_MEMFD; its MEMFD entry carries the content),
//! `/SYSVKEY (deleted)` a SysV attachment (VMA_AREA_SYSVIPC; the shmem inode number is the
//! segment id, the content is the segment's), `PATH (deleted)` a file unlinked while mapped (a
//! ghost file keeps its content), `/dev/zero (deleted)` shared anonymous memory. [vvar] and
//! [vvar_vclock] are one kernel-provided block (CRIU 4.2 writes them as one VVAR VMA); [vdso] is
//! dumped with its pages so restore can compare it with the running kernel's.

use std::os::unix::fs::MetadataExt;

use ferry_images::pb;

/// Errors of the VMA dump.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// A /proc file could not be read.
    #[error("task {pid}: reading {path}: {source}")]
    Proc {
        pid: i32,
        path: String,
        source: std::io::Error,
    },
    /// A smaps line did not parse.
    #[error("task {pid}: /proc/{pid}/smaps: cannot parse {line:?}")]
    Parse { pid: i32, line: String },
    /// A VMA kind ferry cannot dump yet.
    #[error("task {pid}: VMA {start:#x}-{end:#x} ({name}): unsupported mapping: {what}")]
    Unsupported {
        pid: i32,
        start: u64,
        end: u64,
        name: String,
        what: &'static str,
    },
}

type Result<T> = std::result::Result<T, MemError>;

/// CRIU's VMA status bits (criu/include/image.h).
pub mod status {
    pub const REGULAR: u32 = 1 << 0;
    pub const STACK: u32 = 1 << 1;
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const HEAP: u32 = 1 << 5;
    pub const FILE_PRIVATE: u32 = 1 << 6;
    pub const FILE_SHARED: u32 = 1 << 7;
    pub const ANON_SHARED: u32 = 1 << 8;
    pub const ANON_PRIVATE: u32 = 1 << 9;
    pub const SYSVIPC: u32 = 1 << 10;
    pub const VVAR: u32 = 1 << 12;
    pub const MEMFD: u32 = 1 << 14;
}

/// How a VMA's contents reach the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// Nothing to dump (file-shared, vvar, vsyscall).
    None,
    /// Present private pages, through the parasite (or /proc/PID/mem when not readable).
    Private {
        /// Pages may be restored lazily (anonymous private, not vDSO).
        lazy: bool,
        /// Skip pages still backed by the file (not yet copied-on-write).
        file: bool,
    },
    /// Shared anonymous memory (shmem object `ino`), dumped once per object.
    Shmem {
        /// The shmem inode (CRIU's shmid).
        ino: u64,
    },
}

/// The file behind a VMA, as map_files shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// Path (from maps).
    pub path: String,
    /// st_dev.
    pub dev: u64,
    /// st_ino.
    pub ino: u64,
    /// st_mode.
    pub mode: u32,
    /// st_size.
    pub size: u64,
}

/// What object backs a file VMA, which decides the files.img entry its `shmid` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// No file (anonymous, shared anonymous, SysV, kernel special).
    None,
    /// A file with a path: a REG entry.
    Reg,
    /// A file unlinked while mapped: a REG entry with a ghost file (remap-fpath.img).
    Ghost,
    /// A memfd: a MEMFD entry whose inode (memfd.img) holds the content.
    Memfd,
}

/// One VMA ready for mm-PID.img, plus what dump needs beyond the entry.
#[derive(Debug, Clone)]
pub struct Vma {
    /// The image entry; `shmid` of file VMAs is filled in once the file has an id.
    pub entry: pb::VmaEntry,
    /// Where the contents go.
    pub contents: Contents,
    /// The mapped file of a file-backed VMA.
    pub file: Option<MappedFile>,
    /// Which kind of files.img entry the mapped file gets.
    pub backing: Backing,
    /// Name as /proc shows it.
    pub name: String,
}

impl Vma {
    /// Start address.
    pub fn start(&self) -> u64 {
        self.entry.start
    }
    /// End address.
    pub fn end(&self) -> u64 {
        self.entry.end
    }
    /// PROT_READ set.
    pub fn readable(&self) -> bool {
        self.entry.prot & libc::PROT_READ as u32 != 0
    }
}

/// One parsed smaps record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmapsVma {
    /// Start.
    pub start: u64,
    /// End.
    pub end: u64,
    /// "rwxp".
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Inode.
    pub ino: u64,
    /// Path or pseudo-name.
    pub name: String,
    /// Two-letter VmFlags.
    pub vmflags: Vec<String>,
}

/// Parses /proc/PID/smaps text.
pub fn parse_smaps(pid: i32, text: &str) -> Result<Vec<SmapsVma>> {
    let mut out: Vec<SmapsVma> = Vec::new();
    let bad = |line: &str| MemError::Parse {
        pid,
        line: line.into(),
    };
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("VmFlags:") {
            let v = out.last_mut().ok_or_else(|| bad(line))?;
            v.vmflags = f.split_whitespace().map(String::from).collect();
            continue;
        }
        let head = line.split(' ').next().unwrap_or("");
        let Some((s, e)) = head.split_once('-') else {
            continue; // a "Key: value" line
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        let mut it = line.splitn(6, ' ');
        let _ = it.next();
        let perms = it.next().ok_or_else(|| bad(line))?.to_string();
        let offset =
            u64::from_str_radix(it.next().ok_or_else(|| bad(line))?, 16).map_err(|_| bad(line))?;
        let _dev = it.next();
        let ino = it
            .next()
            .ok_or_else(|| bad(line))?
            .parse()
            .map_err(|_| bad(line))?;
        let name = it.next().unwrap_or("").trim_start().to_string();
        out.push(SmapsVma {
            start,
            end,
            perms,
            offset,
            ino,
            name,
            vmflags: Vec::new(),
        });
    }
    Ok(out)
}

fn prot_of(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut p = 0;
    if b.first() == Some(&b'r') {
        p |= libc::PROT_READ;
    }
    if b.get(1) == Some(&b'w') {
        p |= libc::PROT_WRITE;
    }
    if b.get(2) == Some(&b'x') {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// madvise bits (1 << MADV_*) and extra mmap flags CRIU derives from VmFlags.
fn vmflags(v: &SmapsVma) -> (u64, u32, Option<&'static str>) {
    let (mut madv, mut flags, mut bad) = (0u64, 0u32, None);
    for f in &v.vmflags {
        match f.as_str() {
            "gd" => flags |= libc::MAP_GROWSDOWN as u32,
            "lo" => flags |= libc::MAP_LOCKED as u32,
            "nr" => flags |= libc::MAP_NORESERVE as u32,
            "sr" => madv |= 1 << libc::MADV_SEQUENTIAL,
            "rr" => madv |= 1 << libc::MADV_RANDOM,
            "dc" => madv |= 1 << libc::MADV_DONTFORK,
            "dd" => madv |= 1 << libc::MADV_DONTDUMP,
            "mg" => madv |= 1 << libc::MADV_MERGEABLE,
            "hg" => madv |= 1 << libc::MADV_HUGEPAGE,
            "nh" => madv |= 1 << libc::MADV_NOHUGEPAGE,
            "wf" => madv |= 1 << libc::MADV_WIPEONFORK,
            "ht" => bad = Some("hugetlb mapping (VM_HUGETLB)"),
            "io" => bad = Some("I/O memory (VM_IO)"),
            "pf" => bad = Some("PFN mapping (VM_PFNMAP)"),
            _ => {}
        }
    }
    (madv, flags, bad)
}

fn mapped_file(pid: i32, v: &SmapsVma) -> Result<MappedFile> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let md = std::fs::metadata(&path).map_err(|source| MemError::Proc { pid, path, source })?;
    Ok(MappedFile {
        path: v.name.clone(),
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode(),
        size: md.size(),
    })
}

/// Classifies one smaps record into a CRIU VMA (file ids are assigned later).
pub fn classify(pid: i32, v: &SmapsVma) -> Result<Vma> {
    let unsupported = |what| MemError::Unsupported {
        pid,
        start: v.start,
        end: v.end,
        name: v.name.clone(),
        what,
    };
    let shared = v.perms.as_bytes().get(3) == Some(&b's');
    let prot = prot_of(&v.perms);
    let (madv, extra, bad) = vmflags(v);
    let kernel_special = matches!(
        v.name.as_str(),
        "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]"
    );
    if let (Some(what), false) = (bad, kernel_special) {
        return Err(unsupported(what));
    }
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32 | extra;
    let mut entry = pb::VmaEntry {
        start: v.start,
        end: v.end,
        pgoff: 0,
        shmid: 0,
        prot,
        flags: anon,
        status: status::REGULAR | status::ANON_PRIVATE,
        fd: -1,
        madv: (madv != 0).then_some(madv),
        fdflags: None,
    };
    let mut contents = Contents::Private {
        lazy: true,
        file: false,
    };
    let mut file = None;
    let mut backing = Backing::None;
    match v.name.as_str() {
        "[vsyscall]" => {
            entry.status = status::VSYSCALL | status::ANON_PRIVATE;
            contents = Contents::None;
        }
        "[vdso]" => {
            entry.status |= status::VDSO;
            contents = Contents::Private {
                lazy: false,
                file: false,
            };
        }
        "[vvar]" | "[vvar_vclock]" => {
            entry.status |= status::VVAR;
            contents = Contents::None;
        }
        "[heap]" => entry.status |= status::HEAP,
        n if v.ino == 0 && (n.is_empty() || n.starts_with('[')) => {
            if shared {
                return Err(unsupported("shared mapping without a backing object"));
            }
            if n.starts_with("[uprobes]") {
                return Err(unsupported("uprobes area"));
            }
        }
        // Kernel-internal files that look like unlinked ones.
        n if n.starts_with("/[aio]") => return Err(unsupported("AIO ring")),
        n if n.starts_with("/secretmem") => return Err(unsupported("memfd_secret mapping")),
        n if n.starts_with("/SYSV") => {
            // A SysV segment's shmem file has the segment id as its inode number; its content
            // belongs to the segment (IPC namespace images), not to the task.
            let f = mapped_file(pid, v)?;
            entry.flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32 | extra;
            entry.status = status::REGULAR | status::ANON_SHARED | status::SYSVIPC;
            entry.pgoff = v.offset;
            entry.shmid = f.ino;
            contents = Contents::None;
        }
        n if shared && n.starts_with("/dev/zero") => {
            let f = mapped_file(pid, v)?;
            entry.flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32 | extra;
            entry.status = status::REGULAR | status::ANON_SHARED;
            entry.pgoff = v.offset;
            entry.shmid = f.ino;
            contents = Contents::Shmem { ino: f.ino };
        }
        n if n.starts_with('/') => {
            let f = mapped_file(pid, v)?;
            if f.mode & libc::S_IFMT != libc::S_IFREG {
                return Err(unsupported("mapping of a device or special file"));
            }
            let deleted = n.ends_with(" (deleted)");
            let (kind, extra_status) = if n.starts_with("/memfd:") {
                (Backing::Memfd, status::MEMFD)
            } else if deleted {
                (Backing::Ghost, 0)
            } else {
                (Backing::Reg, 0)
            };
            entry.pgoff = v.offset;
            // VM_MAYWRITE ("mw"): the file was opened for writing, so the mapping may be made
            // writable later (mprotect), and a memfd F_SEAL_WRITE would count it as writable.
            let may_write = v.vmflags.iter().any(|f| f == "mw");
            let writable_shared = shared && (prot & libc::PROT_WRITE as u32 != 0 || may_write);
            entry.fdflags = Some(if writable_shared {
                libc::O_RDWR as u32
            } else {
                libc::O_RDONLY as u32
            });
            if shared {
                entry.flags = libc::MAP_SHARED as u32 | extra;
                entry.status = status::REGULAR | status::FILE_SHARED | extra_status;
                contents = Contents::None;
            } else {
                entry.flags = libc::MAP_PRIVATE as u32 | extra;
                entry.status = status::REGULAR | status::FILE_PRIVATE | extra_status;
                contents = Contents::Private {
                    lazy: false,
                    file: true,
                };
            }
            backing = kind;
            file = Some(f);
        }
        _ => return Err(unsupported("unknown special mapping")),
    }
    Ok(Vma {
        entry,
        contents,
        file,
        backing,
        name: v.name.clone(),
    })
}

/// Reads and classifies every VMA of `pid`; adjacent [vvar] and [vvar_vclock] become one VMA.
pub fn vmas(pid: i32) -> Result<Vec<Vma>> {
    let path = format!("/proc/{pid}/smaps");
    let text =
        std::fs::read_to_string(&path).map_err(|source| MemError::Proc { pid, path, source })?;
    let mut out: Vec<Vma> = Vec::new();
    for v in parse_smaps(pid, &text)? {
        let vma = classify(pid, &v)?;
        if let Some(prev) = out.last_mut() {
            let vvar = status::VVAR;
            if prev.entry.status & vvar != 0
                && vma.entry.status & vvar != 0
                && prev.entry.end == vma.entry.start
            {
                prev.entry.end = vma.entry.end;
                continue;
            }
        }
        out.push(vma);
    }
    Ok(out)
}

/// The mm_* fields of mm-PID.img that /proc/PID/stat carries, and the saved auxv.
#[derive(Debug, Clone, Default)]
pub struct MmFields {
    /// Fields 26, 27, 28, 45..=51 of stat, in CRIU's order.
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// auxv words up to (not including) AT_NULL.
    pub auxv: Vec<u64>,
}

/// Reads the mm fields from /proc/PID/stat and /proc/PID/auxv.
pub fn mm_fields(pid: i32) -> Result<MmFields> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|source| MemError::Proc {
        pid,
        path: path.clone(),
        source,
    })?;
    let (_, f) = crate::freeze::parse_stat(&text).ok_or_else(|| MemError::Parse {
        pid,
        line: text.clone(),
    })?;
    let n = |field: usize| -> Result<u64> {
        f.get(field - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| MemError::Parse {
                pid,
                line: format!("stat field {field}"),
            })
    };
    let apath = format!("/proc/{pid}/auxv");
    let raw = std::fs::read(&apath).map_err(|source| MemError::Proc {
        pid,
        path: apath,
        source,
    })?;
    let mut auxv = Vec::new();
    for pair in raw.chunks_exact(16) {
        let k = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
        if k == 0 {
            break;
        }
        auxv.push(k);
        auxv.push(u64::from_le_bytes(pair[8..].try_into().expect("8 bytes")));
    }
    Ok(MmFields {
        start_code: n(26)?,
        end_code: n(27)?,
        start_stack: n(28)?,
        start_data: n(45)?,
        end_data: n(46)?,
        start_brk: n(47)?,
        arg_start: n(48)?,
        arg_end: n(49)?,
        env_start: n(50)?,
        env_end: n(51)?,
        auxv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str =
        "00400000-00401000 r--p 00000000 fe:00 10117584                           /bin/x\n\
Size:                  4 kB\n\
VmFlags: rd mr mw me dw\n\
7fc3e4e48000-7fc3e4e4c000 r--p 00000000 00:00 0                          [vvar]\n\
VmFlags: rd mr pf io de dd\n\
7ffced618000-7ffced639000 rw-p 00000000 00:00 0                          [stack]\n\
Rss:                 12 kB\n\
VmFlags: rd wr mr mw me gd ac\n";

    /// The smaps record of `addr` in this very process.
    fn own(addr: u64) -> SmapsVma {
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        parse_smaps(me, &text)
            .unwrap()
            .into_iter()
            .find(|v| v.start == addr)
            .expect("the mapping in smaps")
    }

    fn map(fd: i32, len: usize, flags: i32) -> u64 {
        // SAFETY: a fresh mapping the kernel places; the tests only read its smaps record.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    }

    fn unmap(a: u64, len: usize) {
        // SAFETY: unmaps a mapping made by `map` above.
        unsafe { libc::munmap(a as *mut libc::c_void, len) };
    }

    /// memfd, SysV and unlinked-file mappings of this process, classified as CRIU does.
    /// (/proc/PID/map_files needs CAP_SYS_ADMIN: skipped when not root.)
    #[test]
    fn classifies_memfd_sysv_and_unlinked_file_mappings() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let me = std::process::id() as i32;
        let name = c"ferry-classify";
        // SAFETY: memfd_create with a valid C string; the fd is closed below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: ftruncate of the fd made above.
        assert_eq!(unsafe { libc::ftruncate(fd, 8192) }, 0);
        let s = map(fd, 8192, libc::MAP_SHARED);
        let p = map(fd, 8192, libc::MAP_PRIVATE);
        let vs = classify(me, &own(s)).unwrap();
        assert_eq!(
            vs.entry.status,
            status::REGULAR | status::FILE_SHARED | status::MEMFD
        );
        assert_eq!((vs.backing, vs.contents), (Backing::Memfd, Contents::None));
        assert_eq!(vs.entry.fdflags, Some(libc::O_RDWR as u32));
        let vp = classify(me, &own(p)).unwrap();
        assert_eq!(
            vp.entry.status,
            status::REGULAR | status::FILE_PRIVATE | status::MEMFD
        );
        assert_eq!(vp.file.as_ref().unwrap().ino, vs.file.as_ref().unwrap().ino);
        unmap(s, 8192);
        unmap(p, 8192);
        // SAFETY: closes the memfd made above.
        unsafe { libc::close(fd) };

        // SAFETY: plain SysV calls; the segment is removed below.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, 0o600 | libc::IPC_CREAT) };
        assert!(id >= 0);
        // SAFETY: attaches the segment made above at an address the kernel picks.
        let a = unsafe { libc::shmat(id, std::ptr::null(), 0) } as u64;
        // SAFETY: removal is deferred until the attachment goes.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        let v = classify(me, &own(a)).unwrap();
        // SAFETY: detaches the attachment made above.
        unsafe { libc::shmdt(a as *const libc::c_void) };
        assert_eq!(
            v.entry.status,
            status::REGULAR | status::ANON_SHARED | status::SYSVIPC
        );
        assert_eq!((v.entry.shmid, v.contents), (id as u64, Contents::None));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapped");
        std::fs::write(&path, [7u8; 4096]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let g = map(std::os::fd::AsRawFd::as_raw_fd(&f), 4096, libc::MAP_SHARED);
        drop(f);
        std::fs::remove_file(&path).unwrap();
        let v = classify(me, &own(g)).unwrap();
        unmap(g, 4096);
        assert_eq!(v.backing, Backing::Ghost);
        assert_eq!(v.entry.status, status::REGULAR | status::FILE_SHARED);
        assert!(v.name.ends_with(" (deleted)"), "{}", v.name);
    }

    #[test]
    fn parses_and_classifies() {
        let v = parse_smaps(1, SMAPS).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            (v[0].start, v[0].ino, v[0].name.as_str()),
            (0x400000, 10117584, "/bin/x")
        );
        assert_eq!(v[1].vmflags.len(), 6);
        // vvar is VM_PFNMAP|VM_IO but kernel-provided: classified by name, not refused.
        let vv = classify(1, &v[1]).unwrap();
        assert_eq!(
            vv.entry.status,
            status::REGULAR | status::ANON_PRIVATE | status::VVAR
        );
        assert_eq!(vv.entry.madv, Some(1 << 16));
        let st = classify(1, &v[2]).unwrap();
        assert_eq!(st.entry.flags, 0x122);
        assert_eq!(st.entry.status, 513);
        assert_eq!(
            st.contents,
            Contents::Private {
                lazy: true,
                file: false
            }
        );
        for (name, what) in [
            ("/[aio] (deleted)", "AIO ring"),
            ("/secretmem (deleted)", "secretmem"),
        ] {
            let mut m = v[2].clone();
            m.name = name.into();
            m.ino = 9;
            let e = classify(7, &m).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut m = v[2].clone();
        m.vmflags.push("ht".into());
        let e = classify(7, &m).unwrap_err().to_string();
        assert!(e.contains("hugetlb"), "{e}");
        // A mapping of something that is neither a regular file nor a known special mapping.
        let mut m = v[2].clone();
        m.name = "[uprobes]".into();
        let e = classify(7, &m).unwrap_err().to_string();
        assert!(e.contains("task 7") && e.contains("uprobes"), "{e}");
    }
}

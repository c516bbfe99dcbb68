//! memfd files (MEMFD entries + memfd.img inodes, content in pagemap-shmem-N.img).
//!
//! Kernel mechanism: memfd_create gives an unlinked shmem file named `/memfd:NAME (deleted)`;
//! several descriptions and mappings can share its inode. A restore makes one memfd per
//! inode, fills it from its shmem pagemap, and opens every description and mapping on it. The
//! dump reads the content through a fresh open of /proc/PID/fd/N (SEEK_DATA/SEEK_HOLE skip
//! holes) into pagemap-shmem-INO.img and a pages file of its own, as CRIU lays them out; seals
//! come from F_GET_SEALS. A restore makes the memfd sealable when it was and adds the seals only
//! after every task has mapped it (F_SEAL_WRITE/FUTURE_WRITE would forbid the restore's own
//! writable mappings). Mappings of a memfd name a MEMFD entry on the same inode
//! ([`super::mapped`]), so fds and mappings share one file again.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use ferry_images::{pb, ImageDir};

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{img, Opened, Prep, RestoreError};

// ---- dump ----

/// A memfd inode seen in the dump: its memfd.img entry and where its content is, as
/// (offset, length) runs of whole pages (holes stay holes). The content itself is copied from
/// `file` (ferry's own open of the inode) when the images are written, a chunk at a time, so a
/// large memfd is never held in ferry's memory.
#[derive(Debug, Clone)]
pub struct MemfdInode {
    /// The entry.
    pub entry: pb::MemfdInodeEntry,
    /// Page-aligned runs of content: (offset, length).
    pub runs: Vec<(u64, u64)>,
    /// The memfd.
    pub file: std::sync::Arc<File>,
}

const PAGE: u64 = 4096;

/// The MEMFD entry of an fd; the inode's content is read the first time it is seen.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let ino = fd.md.ino();
    let inode_id = match t.memfds.iter().find(|m| m.entry.shmid as u64 == ino) {
        Some(m) => m.entry.inode_id as u32,
        None => {
            let m = read_inode(fd, t.memfds.len() as u64 + 1)?;
            let id = m.entry.inode_id as u32;
            t.memfds.push(m);
            id
        }
    };
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Memfd as i32,
        id,
        memfd: Some(pb::MemfdFileEntry {
            id,
            flags: fd.flags,
            pos: fd.pos,
            fown: fd.fown,
            inode_id,
        }),
        ..Default::default()
    })
}

fn read_inode(fd: &Fd, inode_id: u64) -> Result<MemfdInode, FilesError> {
    let name = fd
        .target
        .strip_prefix("/memfd:")
        .unwrap_or(&fd.target)
        .trim_end_matches(" (deleted)")
        .to_string();
    let f = File::open(&fd.link).map_err(fd.proc_err(&fd.link))?;
    let raw = f.as_raw_fd();
    // SAFETY: F_GET_SEALS on an fd we own.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) }.max(0) as u32;
    if fd.md.blocks() > 0 && fd.md.blksize() > PAGE {
        return Err(fd.state("memfd", "hugetlb memfds are not supported"));
    }
    let size = fd.md.size();
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(raw, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data past pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(raw, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(fd.proc_err(&fd.link)(std::io::Error::last_os_error()));
        }
        let start = data as u64 & !(PAGE - 1);
        let end = (hole as u64).div_ceil(PAGE) * PAGE;
        runs.push((start, end - start));
        pos = end;
    }
    Ok(MemfdInode {
        entry: pb::MemfdInodeEntry {
            name,
            uid: fd.md.uid(),
            gid: fd.md.gid(),
            size,
            shmid: fd.md.ino() as u32,
            seals,
            inode_id,
            hugetlb_flag: None,
            mode: Some(fd.md.mode()),
        },
        runs,
        file: std::sync::Arc::new(f),
    })
}

/// Writes memfd.img and, per inode, pagemap-shmem-SHMID.img with its own pages-N.img.
pub fn write(
    dir: &ImageDir,
    inodes: &[MemfdInode],
    next_pages_id: &mut u32,
) -> Result<(), FilesError> {
    if inodes.is_empty() {
        return Ok(());
    }
    let werr = |image: String| move |source| FilesError::Write { image, source };
    let entries: Vec<pb::MemfdInodeEntry> = inodes.iter().map(|m| m.entry.clone()).collect();
    dir.write_entries("memfd.img", &entries)
        .map_err(werr("memfd.img".into()))?;
    for m in inodes {
        let pages_id = *next_pages_id;
        *next_pages_id += 1;
        let pm: Vec<pb::PagemapEntry> = m
            .runs
            .iter()
            .map(|&(off, len)| pb::PagemapEntry {
                vaddr: off,
                compat_nr_pages: Some(0),
                in_parent: None,
                flags: Some(PE_PRESENT),
                nr_pages: Some(len / PAGE),
            })
            .collect();
        let pname = format!("pages-{pages_id}.img");
        copy_pages(dir, &pname, m).map_err(|source| FilesError::Write {
            image: pname.clone(),
            source: ferry_images::dir::DirError::Io {
                path: format!("{pname} (memfd {})", m.entry.name),
                op: "copy",
                source,
            },
        })?;
        let name = format!("pagemap-shmem-{}.img", m.entry.shmid);
        let mut w = dir.writer(&name).map_err(werr(name.clone()))?;
        let fr = |e: ferry_images::FrameError| FilesError::Write {
            image: name.clone(),
            source: e.into(),
        };
        w.write_entry(&pb::PagemapHead { pages_id }).map_err(fr)?;
        for e in &pm {
            w.write_entry(e).map_err(fr)?;
        }
        let f = w.finish().map_err(fr)?;
        f.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|source| FilesError::Write {
                image: name.clone(),
                source: ferry_images::dir::DirError::Io {
                    path: name.clone(),
                    op: "flush",
                    source,
                },
            })?;
    }
    Ok(())
}

/// Copies the content runs of `m` into pages file `pname` with sendfile (in the kernel, no
/// buffer of ferry's); the tail of the last page past the memfd's size is zeros.
fn copy_pages(dir: &ImageDir, pname: &str, m: &MemfdInode) -> std::io::Result<()> {
    use std::io::Write;
    let size = m.entry.size;
    let mut out = File::create(dir.path().join(pname))?;
    for &(off, len) in &m.runs {
        let data_end = (off + len).min(size);
        let mut at = off as i64;
        while (at as u64) < data_end {
            let n = (data_end - at as u64).min(1 << 30) as usize;
            // SAFETY: sendfile between two fds we own; `at` is a valid offset slot.
            let r = unsafe { libc::sendfile(out.as_raw_fd(), m.file.as_raw_fd(), &mut at, n) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let pad = (off + len - data_end.max(off)) as usize;
        out.write_all(&vec![0u8; pad])?;
    }
    out.sync_all()
}

/// CRIU's PE_PRESENT pagemap flag.
const PE_PRESENT: u32 = 1 << 2;

// ---- restore ----

/// memfd.img by inode id.
#[derive(Debug, Default)]
pub struct Inodes(BTreeMap<u64, pb::MemfdInodeEntry>);

impl Inodes {
    /// Reads memfd.img, if the images have one.
    pub fn load(dir: &ImageDir) -> Result<Inodes, RestoreError> {
        if !dir.has("memfd.img") {
            return Ok(Inodes::default());
        }
        let v: Vec<pb::MemfdInodeEntry> =
            dir.read_entries("memfd.img").map_err(img("memfd.img"))?;
        Ok(Inodes(v.into_iter().map(|m| (m.inode_id, m)).collect()))
    }

    /// One memfd per inode, shared by every fd and mapping of it (a new fd on the same file).
    pub fn get(
        &self,
        dir: &ImageDir,
        inode: u32,
        out: &mut Opened,
    ) -> Result<OwnedFd, RestoreError> {
        let inode = u64::from(inode);
        let key = u64::MAX - inode;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| RestoreError::Sys {
                op: "dup",
                path: format!("memfd inode {inode}"),
                source: e,
            })
        };
        if let Some(fd) = out.shmem.get(&key) {
            return dup(fd);
        }
        let m = self.0.get(&inode).ok_or_else(|| RestoreError::NoFile {
            what: "memfd.img inode".into(),
            id: inode as u32,
        })?;
        if m.seals & !KNOWN_SEALS != 0 {
            return Err(RestoreError::Unsupported {
                pid: 0,
                fd: 0,
                what: format!("memfd {} with unknown seals {:#x}", m.name, m.seals),
            });
        }
        if m.hugetlb_flag.unwrap_or(0) != 0 {
            return Err(RestoreError::Unsupported {
                pid: 0,
                fd: 0,
                what: format!("hugetlb memfd {}", m.name),
            });
        }
        // A memfd made without MFD_ALLOW_SEALING reads F_SEAL_SEAL alone.
        let sealing = m.seals != libc::F_SEAL_SEAL as u32;
        let f = crate::mem::restore::shmem_memfd(dir, u64::from(m.shmid), m.size, &m.name, sealing)
            .map_err(|e| RestoreError::Image {
                what: format!("memfd {}", m.name),
                source: Box::new(e),
            })?;
        // SAFETY: fchown on an fd we own.
        if unsafe { libc::fchown(f.as_raw_fd(), m.uid, m.gid) } != 0 {
            return Err(super::restore::sys("fchown", &format!("memfd {}", m.name)));
        }
        let fd: OwnedFd = f.into();
        if sealing && m.seals != 0 {
            out.memfd_seals.push((dup(&fd)?, m.seals));
        }
        out.shmem.insert(key, dup(&fd)?);
        Ok(fd)
    }
}

/// F_SEAL_SEAL, SHRINK, GROW, WRITE, FUTURE_WRITE, EXEC.
const KNOWN_SEALS: u32 = 0x3f;

/// Adds every restored memfd's seals, once every task has mapped what it maps: F_SEAL_WRITE and
/// F_SEAL_FUTURE_WRITE forbid the writable mappings restore itself makes, and F_SEAL_SEAL goes
/// last by nature (one F_ADD_SEALS call sets all bits at once).
pub fn apply_seals(seals: &[(OwnedFd, u32)]) -> Result<(), RestoreError> {
    for (fd, s) in seals {
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, *s as i32) } != 0 {
            let err = std::io::Error::last_os_error();
            let name = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(RestoreError::Sys {
                op: "F_ADD_SEALS",
                path: format!("{name} (seals {s:#x})"),
                source: err,
            });
        }
    }
    Ok(())
}

/// The file a mapping of memfd inode `inode` maps: the inode's memfd itself when the mapping
/// may write (`flags` O_RDWR), else a read-only reopen of it, so a read-only shared mapping is
/// not counted as writable (it would make F_SEAL_WRITE fail, and could be mprotect'ed to write).
pub fn map_fd(p: &mut Prep, inode: u32, flags: i32) -> Result<OwnedFd, RestoreError> {
    let base = p.memfds.get(p.dir, inode, &mut p.out)?;
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        return Ok(base);
    }
    std::fs::File::open(format!("/proc/self/fd/{}", base.as_raw_fd()))
        .map(OwnedFd::from)
        .map_err(|e| RestoreError::Sys {
            op: "open read-only",
            path: format!("memfd inode {inode}"),
            source: e,
        })
}

/// The description of a MEMFD entry: a new open of the inode's memfd with the entry's flags
/// and position (each entry is its own description, like an open of /proc/self/fd/N).
pub fn open(p: &mut Prep, m: &pb::MemfdFileEntry) -> Result<OwnedFd, RestoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let base = p.memfds.get(p.dir, m.inode_id, &mut p.out)?;
    let flags = m.flags as i32;
    let acc = flags & libc::O_ACCMODE;
    let what = format!("memfd inode {}", m.inode_id);
    let f = std::fs::OpenOptions::new()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(libc::O_CLOEXEC | (flags & (libc::O_APPEND | libc::O_NONBLOCK)))
        .open(format!("/proc/self/fd/{}", base.as_raw_fd()))
        .map_err(|e| RestoreError::Sys {
            op: "open",
            path: what.clone(),
            source: e,
        })?;
    // SAFETY: lseek on an fd we own.
    if unsafe { libc::lseek(f.as_raw_fd(), m.pos as i64, libc::SEEK_SET) } < 0 {
        return Err(super::restore::sys("lseek", &what));
    }
    Ok(f.into())
}

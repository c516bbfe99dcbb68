//! Restore half of file descriptors and of the files memory maps.
//!
//! The coordinator opens every open file description the tree needs once, before forking, so
//! a description shared between tasks (or between an fd and a mapping) is shared again: regular
//! files by path with their flags and position (size, mode and ELF build-id checked against the
//! image: a file changed since the dump is a clear error before any task exists), one pipe per
//! `pipe_id` with its buffered bytes from pipes-data.img written back, memfds refilled from their
//! shmem pagemap, and the caller's terminal for tty fds with `--shell-job`. All of them sit at fd
//! numbers above every number the images use; each forked task inherits them, `dup3`s its own
//! into place and closes every other fd it has.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use ferry_images::{pb, ImageDir, ImageReader};
use thiserror::Error;

/// Errors preparing or installing fds, naming task, fd and path.
#[derive(Debug, Error)]
pub enum FilesError {
    /// An image could not be read.
    #[error("{what}: {source}")]
    Image {
        /// Which image.
        what: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file is not what the image recorded.
    #[error("file {path} changed since the dump: {what}")]
    Changed {
        /// Path.
        path: String,
        /// What differs.
        what: String,
    },
    /// A syscall failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Path or object.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An fd kind ferry cannot restore yet.
    #[error("task {pid}: fd {fd}: {what} is not supported by ferry's restore yet")]
    Unsupported {
        /// Task.
        pid: u32,
        /// fd.
        fd: u32,
        /// What.
        what: String,
    },
    /// The images refer to a file id that does not exist.
    #[error("{what} names file id {id}, which files.img does not have")]
    NoFile {
        /// Who refers to it.
        what: String,
        /// The id.
        id: u32,
    },
}

fn img<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
) -> impl FnOnce(E) -> FilesError + '_ {
    move |e| FilesError::Image {
        what: what.to_string(),
        source: Box::new(e),
    }
}

fn sys(op: &'static str, path: &str) -> FilesError {
    FilesError::Sys {
        op,
        path: path.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// files.img by id.
pub fn load_files(dir: &ImageDir) -> Result<BTreeMap<u32, pb::FileEntry>, FilesError> {
    if !dir.has("files.img") {
        return Ok(BTreeMap::new());
    }
    let v: Vec<pb::FileEntry> = dir.read_entries("files.img").map_err(img("files.img"))?;
    Ok(v.into_iter().map(|f| (f.id, f)).collect())
}

/// Everything the coordinator opened, by files.img id.
#[derive(Debug, Default)]
pub struct Opened {
    /// Descriptions for fds, by files.img id.
    pub fds: BTreeMap<u32, OwnedFd>,
    /// Files for mappings (and the exe), by files.img id.
    pub maps: BTreeMap<u32, OwnedFd>,
    /// Anonymous shared memory, by shmid.
    pub shmem: BTreeMap<u64, OwnedFd>,
}

/// The 20-byte NT_GNU_BUILD_ID of an ELF file, as CRIU stores it (five LE u32 words).
pub fn build_id(f: &File) -> Option<Vec<u32>> {
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0).ok()?;
    if &h[0..4] != b"\x7fELF" || h[4] != 2 {
        return None;
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().ok()?);
    let phentsize = u16::from_le_bytes(h[54..56].try_into().ok()?) as u64;
    let phnum = u16::from_le_bytes(h[56..58].try_into().ok()?) as u64;
    for i in 0..phnum.min(64) {
        let mut ph = [0u8; 56];
        f.read_exact_at(&mut ph, phoff + i * phentsize).ok()?;
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) != 4 {
            continue; // PT_NOTE
        }
        let off = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(ph[32..40].try_into().ok()?).min(4096) as usize;
        let mut n = vec![0u8; size];
        f.read_exact_at(&mut n, off).ok()?;
        let mut p = 0;
        while p + 12 <= n.len() {
            let namesz = u32::from_le_bytes(n[p..p + 4].try_into().ok()?) as usize;
            let descsz = u32::from_le_bytes(n[p + 4..p + 8].try_into().ok()?) as usize;
            let ty = u32::from_le_bytes(n[p + 8..p + 12].try_into().ok()?);
            let name_at = p + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            if desc_at + descsz > n.len() {
                break;
            }
            if ty == 3 && n.get(name_at..name_at + 4) == Some(b"GNU\0") && descsz == 20 {
                return Some(
                    n[desc_at..desc_at + 20]
                        .chunks(4)
                        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                        .collect(),
                );
            }
            p = desc_at + descsz.next_multiple_of(4);
        }
    }
    None
}

/// Opens a regular file as the image recorded it and checks it is the same file.
fn open_reg(r: &pb::RegFileEntry, flags: i32, with_pos: bool) -> Result<File, FilesError> {
    let clean = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
    let f = std::fs::OpenOptions::new()
        .read(clean & libc::O_ACCMODE != libc::O_WRONLY)
        .write(clean & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags((clean & !libc::O_ACCMODE) | libc::O_CLOEXEC)
        .open(&r.name)
        .map_err(|e| FilesError::Sys {
            op: "open",
            path: r.name.clone(),
            source: e,
        })?;
    let md = f.metadata().map_err(|e| FilesError::Sys {
        op: "fstat",
        path: r.name.clone(),
        source: e,
    })?;
    let changed = |what: String| FilesError::Changed {
        path: r.name.clone(),
        what,
    };
    if let Some(mode) = r.mode.filter(|&m| m != 0) {
        if md.mode() != mode {
            return Err(changed(format!("mode {:o}, image {mode:o}", md.mode())));
        }
    }
    if let Some(size) = r.size {
        if md.is_file() && md.len() != size {
            return Err(changed(format!("size {} bytes, image {size}", md.len())));
        }
    }
    if !r.build_id.is_empty() && build_id(&f).as_deref() != Some(&r.build_id[..]) {
        return Err(changed("ELF build-id differs".into()));
    }
    if with_pos && r.pos != 0 {
        // SAFETY: lseek on an fd we own.
        if unsafe { libc::lseek(f.as_raw_fd(), r.pos as i64, libc::SEEK_SET) } < 0 {
            return Err(sys("lseek", &r.name));
        }
    }
    Ok(f)
}

/// Moves an fd to a number >= `min` (close-on-exec); the old number is closed.
fn lift(fd: OwnedFd, min: RawFd, what: &str) -> Result<OwnedFd, FilesError> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the result is a new fd we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if n < 0 {
        return Err(sys("F_DUPFD", what));
    }
    // SAFETY: n is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// What the tree needs opened.
#[derive(Debug, Default)]
pub struct Needs {
    /// (pid, fdinfo) for every fd of every task.
    pub fds: Vec<(u32, pb::FdinfoEntry)>,
    /// files.img ids used by mappings or as exe, with the open flags they need.
    pub maps: BTreeMap<u32, i32>,
    /// shmid -> size for anonymous shared memory.
    pub shmem: BTreeMap<u64, u64>,
}

/// Opens everything in `needs` (coordinator side, before forking).
pub fn prepare(
    dir: &ImageDir,
    files: &BTreeMap<u32, pb::FileEntry>,
    needs: &Needs,
    shell_job: bool,
    min_fd: RawFd,
) -> Result<Opened, FilesError> {
    let mut out = Opened::default();
    let mut pipes: BTreeMap<u32, (OwnedFd, OwnedFd)> = BTreeMap::new();
    let memfds = load_memfds(dir)?;
    for (pid, fi) in &needs.fds {
        if out.fds.contains_key(&fi.id) {
            continue;
        }
        let f = files.get(&fi.id).ok_or_else(|| FilesError::NoFile {
            what: format!("task {pid} fd {}", fi.fd),
            id: fi.id,
        })?;
        let unsupported = |what: String| FilesError::Unsupported {
            pid: *pid,
            fd: fi.fd,
            what,
        };
        let fd: OwnedFd = if let Some(r) = &f.reg {
            open_reg(r, r.flags as i32, true)?.into()
        } else if let Some(p) = &f.pipe {
            if let std::collections::btree_map::Entry::Vacant(e) = pipes.entry(p.pipe_id) {
                e.insert(make_pipe(p.pipe_id)?);
            }
            let (rd, wr) = &pipes[&p.pipe_id];
            let end = if p.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY {
                wr
            } else {
                rd
            };
            let fd = end.try_clone().map_err(|e| FilesError::Sys {
                op: "dup",
                path: format!("pipe:[{}]", p.pipe_id),
                source: e,
            })?;
            // SAFETY: F_SETFL on an fd we own.
            unsafe {
                libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_SETFL,
                    p.flags as i32 & libc::O_NONBLOCK,
                )
            };
            fd
        } else if let Some(m) = &f.memfd {
            let fd = memfd_for(dir, &memfds, u64::from(m.inode_id), &mut out)?;
            // SAFETY: lseek on an fd we own.
            unsafe { libc::lseek(fd.as_raw_fd(), m.pos as i64, libc::SEEK_SET) };
            fd
        } else if f.tty.is_some() {
            if !shell_job {
                return Err(unsupported("a terminal without --shell-job".into()));
            }
            // SAFETY: isatty on fd 0 of this process.
            if unsafe { libc::isatty(0) } != 1 {
                return Err(unsupported(
                    "a terminal with --shell-job, but ferry's stdin is not a terminal".into(),
                ));
            }
            // SAFETY: dup of our own stdin; the result is a new fd we own.
            let n = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
            if n < 0 {
                return Err(sys("dup", "stdin"));
            }
            // SAFETY: n is fresh and ours.
            unsafe { OwnedFd::from_raw_fd(n) }
        } else {
            let kind = pb::FdTypes::try_from(f.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| format!("fd type {}", f.r#type));
            return Err(unsupported(kind));
        };
        out.fds.insert(fi.id, lift(fd, min_fd, "fd")?);
    }
    fill_pipes(dir, &pipes)?;
    for (&id, &flags) in &needs.maps {
        let f = files.get(&id).ok_or_else(|| FilesError::NoFile {
            what: "a mapping".into(),
            id,
        })?;
        let fd: OwnedFd = if let Some(r) = &f.reg {
            open_reg(r, flags, false)?.into()
        } else if let Some(m) = &f.memfd {
            memfd_for(dir, &memfds, u64::from(m.inode_id), &mut out)?
        } else {
            return Err(FilesError::Unsupported {
                pid: 0,
                fd: 0,
                what: format!("a mapping of file id {id} (type {})", f.r#type),
            });
        };
        out.maps.insert(id, lift(fd, min_fd, "mapping")?);
    }
    for (&shmid, &size) in &needs.shmem {
        let f =
            crate::mem::restore::anon_shmem(dir, shmid, size).map_err(|e| FilesError::Image {
                what: format!("shared memory {shmid}"),
                source: Box::new(e),
            })?;
        out.shmem.insert(shmid, lift(f.into(), min_fd, "shmem")?);
    }
    Ok(out)
}

fn make_pipe(id: u32) -> Result<(OwnedFd, OwnedFd), FilesError> {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into a valid array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2", &format!("pipe:[{id}]")));
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn fill_pipes(dir: &ImageDir, pipes: &BTreeMap<u32, (OwnedFd, OwnedFd)>) -> Result<(), FilesError> {
    if !dir.has("pipes-data.img") {
        return Ok(());
    }
    let data = dir.read("pipes-data.img").map_err(img("pipes-data.img"))?;
    let mut r = ImageReader::new("pipes-data.img", &data).map_err(img("pipes-data.img"))?;
    while let Some(e) = r
        .next_entry::<pb::PipeDataEntry>()
        .map_err(img("pipes-data.img"))?
    {
        let bytes = r
            .raw(u64::from(e.bytes), "pipe data")
            .map_err(img("pipes-data.img"))?;
        let Some((_, wr)) = pipes.get(&e.pipe_id) else {
            continue;
        };
        let what = format!("pipe:[{}]", e.pipe_id);
        if let Some(size) = e.size {
            // SAFETY: F_SETPIPE_SZ on a pipe we own.
            unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size as i32) };
        }
        let mut done = 0;
        while done < bytes.len() {
            // SAFETY: write from a valid buffer to a pipe we own (it has room: the data fit
            // in the pipe when it was dumped).
            let n = unsafe {
                libc::write(
                    wr.as_raw_fd(),
                    bytes[done..].as_ptr() as *const libc::c_void,
                    bytes.len() - done,
                )
            };
            if n <= 0 {
                return Err(sys("write of buffered data into", &what));
            }
            done += n as usize;
        }
    }
    Ok(())
}

fn load_memfds(dir: &ImageDir) -> Result<BTreeMap<u64, pb::MemfdInodeEntry>, FilesError> {
    if !dir.has("memfd.img") {
        return Ok(BTreeMap::new());
    }
    let v: Vec<pb::MemfdInodeEntry> = dir.read_entries("memfd.img").map_err(img("memfd.img"))?;
    Ok(v.into_iter().map(|m| (m.inode_id, m)).collect())
}

/// One memfd per inode, shared by every fd and mapping of it.
fn memfd_for(
    dir: &ImageDir,
    inodes: &BTreeMap<u64, pb::MemfdInodeEntry>,
    inode: u64,
    out: &mut Opened,
) -> Result<OwnedFd, FilesError> {
    let key = u64::MAX - inode;
    if let Some(fd) = out.shmem.get(&key) {
        return fd.try_clone().map_err(|e| FilesError::Sys {
            op: "dup",
            path: "memfd".into(),
            source: e,
        });
    }
    let m = inodes.get(&inode).ok_or_else(|| FilesError::NoFile {
        what: "memfd.img inode".into(),
        id: inode as u32,
    })?;
    let f = crate::mem::restore::shmem_memfd(dir, u64::from(m.shmid), m.size, &m.name).map_err(
        |e| FilesError::Image {
            what: format!("memfd {}", m.name),
            source: Box::new(e),
        },
    )?;
    let fd: OwnedFd = f.into();
    let keep = fd.try_clone().map_err(|e| FilesError::Sys {
        op: "dup",
        path: "memfd".into(),
        source: e,
    })?;
    out.shmem.insert(key, keep);
    Ok(fd)
}

/// Puts the task's fds in place and closes every other fd but `keep` (runs in the task).
pub fn install(
    pid: u32,
    fds: &[pb::FdinfoEntry],
    opened: &Opened,
    keep: &BTreeSet<RawFd>,
) -> Result<(), FilesError> {
    let mut mine = keep.clone();
    for fi in fds {
        let src = opened.fds.get(&fi.id).ok_or_else(|| FilesError::NoFile {
            what: format!("task {pid} fd {}", fi.fd),
            id: fi.id,
        })?;
        let cloexec = if fi.flags & libc::FD_CLOEXEC as u32 != 0 {
            libc::O_CLOEXEC
        } else {
            0
        };
        // SAFETY: dup3 from an fd we hold to a target number above which all our own fds sit.
        if unsafe { libc::dup3(src.as_raw_fd(), fi.fd as i32, cloexec) } < 0 {
            return Err(sys("dup3 into place", &format!("task {pid} fd {}", fi.fd)));
        }
        mine.insert(fi.fd as i32);
    }
    let others: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| FilesError::Sys {
            op: "read",
            path: "/proc/self/fd".into(),
            source: e,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|n| !mine.contains(n))
        .collect();
    for n in others {
        // SAFETY: closing an fd of this forked task that it must not keep; no Rust object in
        // this task uses it after this point (the caller only holds `opened`, which it leaks).
        unsafe { libc::close(n) };
    }
    Ok(())
}

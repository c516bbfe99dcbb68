//! Regular files, directories and memory devices (REG entries), including files unlinked while
//! open ("ghost" files).
//!
//! Kernel mechanism: a REG description is re-created by opening its path with its flags and
//! seeking to its position; size, mode and the ELF build-id are checked so a file changed since
//! the dump is refused. A file unlinked while open has no path any more: /proc/PID/fd/N reads
//! `PATH (deleted)` with st_nlink 0, but opening that link still reaches the inode, so its
//! content is copied into ghost-file-N.img (up to the ghost limit) and remap-fpath.img maps the
//! REG entry to it (one ghost per inode, however many descriptions). A restore re-creates the
//! file at its old path, opens every description of it and unlinks it again, so the tasks hold
//! an unlinked file with the same name and content. An unlinked FIFO goes the same way with a
//! ghost of mode S_IFIFO and no content (made again with mknod); its bytes are the FIFO's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use ferry_images::{pb, ImageDir, ImageReader};

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{img, sys, RestoreError};
use crate::mem::dump::MappedFile;

const DELETED: &str = " (deleted)";

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

/// An unlinked file's ghost-file-N.img: its entry and content.
#[derive(Debug, Clone)]
pub struct Ghost {
    /// The entry.
    pub entry: pb::GhostFileEntry,
    /// The content that follows it.
    pub data: Vec<u8>,
}

// ---- dump ----

/// A REG entry for a path-named object not held by an fd (exe, mappings, cwd, root).
pub fn object(t: &mut FileTable, f: &MappedFile, flags: u32, with_build_id: bool) -> u32 {
    let key = (f.dev, f.ino, flags);
    if let Some(id) = t.by_object.get(&key) {
        return *id;
    }
    let id = t.next_id();
    let is_reg = f.mode & libc::S_IFMT == libc::S_IFREG;
    let bid = if with_build_id && is_reg {
        File::open(&f.path)
            .ok()
            .and_then(|file| build_id(&file))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    t.entries.push(pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags,
            pos: 0,
            fown: super::fown(),
            name: f.path.clone(),
            size: is_reg.then_some(f.size),
            mode: Some(f.mode),
            build_id: bid,
            ..Default::default()
        }),
        ..Default::default()
    });
    t.by_object.insert(key, id);
    id
}

/// The REG entry of an fd; an unlinked file also gets its ghost image.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let id = t.next_id();
    let is_reg = fd.md.is_file();
    let mut name = fd.target.clone();
    if fd.md.nlink() == 0 {
        let Some(path) = fd.target.strip_suffix(DELETED) else {
            return Err(fd.state("regular file", "has no links but no (deleted) path"));
        };
        if !is_reg {
            return Err(fd.state("directory", format!("{path} was removed while open")));
        }
        name = path.to_string();
        dump_ghost(t, fd, id)?;
    }
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags: fd.flags,
            pos: fd.pos,
            fown: fd.fown,
            name,
            size: is_reg.then_some(fd.md.size()),
            mode: Some(fd.md.mode()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Records the ghost of the unlinked file `fd` for REG entry `id`; one ghost-file image per
/// inode, shared by every entry (fds and mappings) of it, so a restore makes one file again.
pub(crate) fn dump_ghost(t: &mut FileTable, fd: &Fd, id: u32) -> Result<(), FilesError> {
    if let Some(n) = ghost_of(t, fd) {
        // Another description of the same unlinked file: one ghost, so one file at restore.
        add_remap(t, id, n);
        return Ok(());
    }
    let size = fd.md.size();
    if size > t.ghost_limit {
        return Err(fd.state(
            "unlinked file",
            format!(
                "{} is {size} bytes, above the ghost limit of {} bytes",
                fd.target, t.ghost_limit
            ),
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    File::open(&fd.link)
        .and_then(|f| f.take(size).read_to_end(&mut data))
        .map_err(fd.proc_err(&fd.link))?;
    push_ghost(t, fd, id, data);
    Ok(())
}

/// The ghost-file number already holding the inode of `fd`, if any.
fn ghost_of(t: &FileTable, fd: &Fd) -> Option<u32> {
    t.ghosts
        .iter()
        .position(|g| g.entry.dev == Some(fd.md.dev() as u32) && g.entry.ino == Some(fd.md.ino()))
        .map(|i| i as u32 + 1)
}

fn add_remap(t: &mut FileTable, id: u32, n: u32) {
    if !t.remaps.iter().any(|r| r.orig_id == id) {
        t.remaps.push(pb::RemapFilePathEntry {
            orig_id: id,
            remap_id: n,
            remap_type: Some(pb::RemapType::Ghost as i32),
        });
    }
}

fn push_ghost(t: &mut FileTable, fd: &Fd, id: u32, data: Vec<u8>) {
    let tv = |s: i64, ns: i64| pb::Timeval {
        tv_sec: s as u64,
        tv_usec: (ns / 1000) as u64,
    };
    t.ghosts.push(Ghost {
        entry: pb::GhostFileEntry {
            uid: fd.md.uid(),
            gid: fd.md.gid(),
            mode: fd.md.mode(),
            dev: Some(fd.md.dev() as u32),
            ino: Some(fd.md.ino()),
            atim: Some(tv(fd.md.atime(), fd.md.atime_nsec())),
            mtim: Some(tv(fd.md.mtime(), fd.md.mtime_nsec())),
            ..Default::default()
        },
        data,
    });
    let n = t.ghosts.len() as u32;
    add_remap(t, id, n);
}

/// An unlinked FIFO, as CRIU keeps one: its REG entry (`regf_id`, named by the old path) is
/// remapped to a ghost file of mode S_IFIFO without content; the restore makes the node again
/// with mknod, opens every description and unlinks it. Its bytes go to fifo-data.img.
pub fn ghost_fifo(t: &mut FileTable, fd: &Fd, regf_id: u32) {
    match ghost_of(t, fd) {
        Some(n) => add_remap(t, regf_id, n),
        None => push_ghost(t, fd, regf_id, Vec::new()),
    }
}

/// The path of an unlinked FIFO as its REG entry must name it.
pub fn unlinked_path(fd: &Fd) -> Result<String, FilesError> {
    fd.target
        .strip_suffix(DELETED)
        .map(str::to_string)
        .ok_or_else(|| fd.state("FIFO", "has no links but no (deleted) path"))
}

/// Writes ghost-file-N.img (entry then raw content, no chunks) and remap-fpath.img.
pub fn write_ghosts(
    dir: &ImageDir,
    ghosts: &[Ghost],
    remaps: &[pb::RemapFilePathEntry],
) -> Result<(), FilesError> {
    for (i, g) in ghosts.iter().enumerate() {
        let name = format!("ghost-file-{}.img", i + 1);
        super::dump::write_with_raw(dir, &name, [(&g.entry, &g.data[..])])?;
    }
    if !remaps.is_empty() {
        dir.write_entries("remap-fpath.img", remaps)
            .map_err(|source| FilesError::Write {
                image: "remap-fpath.img".into(),
                source,
            })?;
    }
    Ok(())
}

// ---- restore ----

/// Ghost files re-created for a restore, by files.img id; unlinked once everything is open.
#[derive(Debug, Default)]
pub struct Ghosts {
    /// By files.img id of the REG entry.
    paths: BTreeMap<u32, PathBuf>,
    /// By ghost-file number: several REG entries may name one unlinked inode.
    made: BTreeMap<u32, PathBuf>,
}

impl Ghosts {
    /// Re-creates every ghost file of remap-fpath.img (coordinator, before any open).
    pub fn create(
        dir: &ImageDir,
        files: &BTreeMap<u32, pb::FileEntry>,
    ) -> Result<Ghosts, RestoreError> {
        let mut out = Ghosts::default();
        if !dir.has("remap-fpath.img") {
            return Ok(out);
        }
        let remaps: Vec<pb::RemapFilePathEntry> = dir
            .read_entries("remap-fpath.img")
            .map_err(img("remap-fpath.img"))?;
        for r in remaps {
            if r.remap_type != Some(pb::RemapType::Ghost as i32) {
                return Err(RestoreError::Unsupported {
                    pid: 0,
                    fd: 0,
                    what: format!(
                        "file remap of type {:?} (file id {})",
                        r.remap_type, r.orig_id
                    ),
                });
            }
            let Some(reg) = files.get(&r.orig_id).and_then(|f| f.reg.as_ref()) else {
                return Err(RestoreError::NoFile {
                    what: "remap-fpath.img".into(),
                    id: r.orig_id,
                });
            };
            let path = match out.made.get(&r.remap_id) {
                Some(p) => p.clone(),
                None => {
                    let p = create_ghost(dir, r.remap_id, &reg.name, r.orig_id)?;
                    out.made.insert(r.remap_id, p.clone());
                    p
                }
            };
            out.paths.insert(r.orig_id, path);
        }
        Ok(out)
    }

    /// The path to open for REG entry `id` named `name`: its re-created ghost, if it is one.
    pub fn path_of(&self, id: u32, name: &str) -> PathBuf {
        self.paths
            .get(&id)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// Removes the re-created names: the descriptions opened on them stay.
    pub fn unlink(&mut self) {
        self.paths.clear();
        for p in std::mem::take(&mut self.made).into_values() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Ghosts {
    fn drop(&mut self) {
        self.unlink();
    }
}

fn create_ghost(dir: &ImageDir, n: u32, orig: &str, id: u32) -> Result<PathBuf, RestoreError> {
    let name = format!("ghost-file-{n}.img");
    let data = dir.read(&name).map_err(img(&name))?;
    let mut r = ImageReader::new(&name, &data).map_err(img(&name))?;
    let g: pb::GhostFileEntry =
        r.next_entry()
            .map_err(img(&name))?
            .ok_or_else(|| RestoreError::Image {
                what: name.clone(),
                source: "no ghost_file_entry".into(),
            })?;
    if g.mode & libc::S_IFMT == libc::S_IFIFO {
        return create_fifo(&g, orig, id);
    }
    if g.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(RestoreError::Unsupported {
            pid: 0,
            fd: 0,
            what: format!(
                "unlinked {orig} of mode {:o} (only regular files and FIFOs)",
                g.mode
            ),
        });
    }
    // The old name when it is free (so /proc shows the same path), else a name beside it.
    let mut path = PathBuf::from(orig);
    let mut f = open_new(&path, g.mode);
    if matches!(&f, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
        path = PathBuf::from(format!("{orig}.ferry-ghost.{id}"));
        let _ = std::fs::remove_file(&path);
        f = open_new(&path, g.mode);
    }
    let f = f.map_err(|e| RestoreError::Sys {
        op: "create ghost file",
        path: path.display().to_string(),
        source: e,
    })?;
    let werr = |e| RestoreError::Sys {
        op: "write ghost file",
        path: orig.to_string(),
        source: e,
    };
    if g.chunks == Some(true) {
        while let Some(c) = r.next_entry::<pb::GhostChunkEntry>().map_err(img(&name))? {
            let bytes = r.raw(c.len, "ghost chunk").map_err(img(&name))?;
            f.write_all_at(bytes, c.off).map_err(werr)?;
        }
        if let Some(size) = g.size {
            f.set_len(size).map_err(werr)?;
        }
    } else {
        f.write_all_at(r.rest(), 0).map_err(werr)?;
    }
    // SAFETY: fchown/fchmod/futimens on an fd we own; `ts` is a valid array of two timespecs.
    unsafe {
        libc::fchown(f.as_raw_fd(), g.uid, g.gid);
        libc::fchmod(f.as_raw_fd(), g.mode & 0o7777);
        let t = |tv: &Option<pb::Timeval>| match tv {
            Some(tv) => libc::timespec {
                tv_sec: tv.tv_sec as i64,
                tv_nsec: (tv.tv_usec * 1000) as i64,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        };
        let ts = [t(&g.atim), t(&g.mtim)];
        libc::futimens(f.as_raw_fd(), ts.as_ptr());
    }
    Ok(path)
}

/// The node of an unlinked FIFO, at its old path when free (else beside it), with its owner
/// and mode (mknod's is subject to the umask).
fn create_fifo(g: &pb::GhostFileEntry, orig: &str, id: u32) -> Result<PathBuf, RestoreError> {
    use std::os::unix::ffi::OsStrExt;
    let mknod = |p: &std::path::Path| -> std::io::Result<()> {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: mknod/chown/chmod with a NUL-terminated path we own.
        unsafe {
            if libc::mknod(c.as_ptr(), libc::S_IFIFO | (g.mode & 0o7777), 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::chown(c.as_ptr(), g.uid, g.gid);
            libc::chmod(c.as_ptr(), g.mode & 0o7777);
        }
        Ok(())
    };
    let mut path = PathBuf::from(orig);
    let mut r = mknod(&path);
    if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
        path = PathBuf::from(format!("{orig}.ferry-ghost.{id}"));
        let _ = std::fs::remove_file(&path);
        r = mknod(&path);
    }
    r.map_err(|e| RestoreError::Sys {
        op: "mknod ghost FIFO",
        path: path.display().to_string(),
        source: e,
    })?;
    Ok(path)
}

fn open_new(path: &std::path::Path, mode: u32) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// The key a caller names this file by to inherit it: CRIU's, the path relative to the root.
pub fn inherit_key(r: &pb::RegFileEntry) -> String {
    r.name.trim_start_matches('/').to_string()
}

/// Opens a REG description as the image recorded it and checks it is the same file; a ghost
/// opens its re-created file.
pub fn open(
    r: &pb::RegFileEntry,
    flags: i32,
    with_pos: bool,
    ghosts: &Ghosts,
) -> Result<File, RestoreError> {
    let path = ghosts.path_of(r.id, &r.name);
    let name = path.display().to_string();
    let clean = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
    let f = std::fs::OpenOptions::new()
        .read(clean & libc::O_ACCMODE != libc::O_WRONLY)
        .write(clean & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags((clean & !libc::O_ACCMODE) | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| RestoreError::Sys {
            op: "open",
            path: name.clone(),
            source: e,
        })?;
    let md = f.metadata().map_err(|e| RestoreError::Sys {
        op: "fstat",
        path: name.clone(),
        source: e,
    })?;
    let changed = |what: String| RestoreError::Changed {
        path: name.clone(),
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
            return Err(sys("lseek", &name));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_build_id_of_an_elf() {
        let exe = std::env::current_exe().unwrap();
        // Rust test binaries carry a GNU build-id on Debian's toolchain; skip quietly if not.
        if let Some(b) = build_id(&File::open(exe).unwrap()) {
            assert_eq!(b.len(), 5);
        }
        assert!(build_id(&File::open("/proc/self/status").unwrap()).is_none());
    }
}

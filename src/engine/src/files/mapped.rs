//! Files behind memory mappings: the files.img entry a file VMA's `shmid` names.
//!
//! Kernel mechanism: /proc/PID/map_files/START-END is a link to the very file a VMA maps, also
//! when no fd holds it any more, and opening it reaches that inode (root only). So a mapped file
//! gets its entry as an fd would: a REG entry for a file with a path, a REG entry plus a ghost
//! file (remap-fpath.img) for a file unlinked while mapped, and a MEMFD entry for a memfd, whose
//! inode (memfd.img + pagemap-shmem-INO.img) is the same one the task's memfd fds name, so after
//! a restore mapping and fds share one file again. Entries are shared by every VMA of the same
//! inode opened with the same flags, as CRIU shares them.

use std::os::unix::fs::MetadataExt;

use super::dump::{Fd, FileTable, FilesError};
use crate::mem::dump::{Backing, Vma};

impl FileTable {
    /// The files.img id of the file VMA `v` of task `pid` maps (None: not a file VMA).
    pub fn mapping(&mut self, pid: i32, v: &Vma) -> Result<Option<u32>, FilesError> {
        let Some(f) = &v.file else {
            return Ok(None);
        };
        let flags = v.entry.fdflags.unwrap_or(0);
        match v.backing {
            Backing::None => Ok(None),
            Backing::Reg => Ok(Some(self.reg_object(f, flags, true))),
            Backing::Ghost | Backing::Memfd => {
                if let Some(&id) = self.by_object.get(&(f.dev, f.ino, flags)) {
                    if v.backing == Backing::Ghost && !self.remaps.iter().any(|r| r.orig_id == id) {
                        // The exe's entry (made first, by path): the file is gone, so it
                        // becomes a ghost too, under the path it had.
                        self.ghost_entry(pid, v, id, flags)?;
                    }
                    return Ok(Some(id));
                }
                let fd = map_fd(pid, v, flags)?;
                let id = if v.backing == Backing::Memfd {
                    let e = super::memfd::dump(self, &fd).map_err(|e| in_vma(pid, v, e))?;
                    let id = e.id;
                    self.entries.push(e);
                    id
                } else {
                    let mut plain = f.clone();
                    plain.path = f.path.trim_end_matches(" (deleted)").to_string();
                    // No build-id: the old path may name another file by now.
                    let id = self.reg_object(&plain, flags, false);
                    super::reg::dump_ghost(self, &fd, id).map_err(|e| in_vma(pid, v, e))?;
                    id
                };
                self.by_object.insert((f.dev, f.ino, flags), id);
                Ok(Some(id))
            }
        }
    }
}

/// The mapping seen as an fd on its file (through map_files), for the per-kind dump code.
fn map_fd(pid: i32, v: &Vma, flags: u32) -> Result<Fd, FilesError> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start(), v.end());
    let md = std::fs::metadata(&link).map_err(|e| FilesError::Mapping {
        pid,
        start: v.start(),
        end: v.end(),
        name: v.name.clone(),
        what: format!("reading {link}: {e}"),
    })?;
    if md.nlink() != 0 && v.backing == Backing::Ghost {
        return Err(FilesError::Mapping {
            pid,
            start: v.start(),
            end: v.end(),
            name: v.name.clone(),
            what: "named (deleted) but still has links".into(),
        });
    }
    Ok(Fd {
        pid,
        fd: -1,
        link,
        target: v.name.clone(),
        md,
        info: String::new(),
        pos: 0,
        flags,
        fown: super::fown(),
    })
}

/// An fd-shaped error of the per-kind code, renamed after the VMA it is about.
fn in_vma(pid: i32, v: &Vma, e: FilesError) -> FilesError {
    let what = match e {
        FilesError::State { kind, what, .. } => format!("{kind}: {what}"),
        FilesError::Proc { path, source, .. } => format!("reading {path}: {source}"),
        other => return other,
    };
    FilesError::Mapping {
        pid,
        start: v.start(),
        end: v.end(),
        name: v.name.clone(),
        what,
    }
}

impl FileTable {
    /// Turns REG entry `id` of the unlinked file `v` maps into a ghost: its name loses
    /// " (deleted)", its build-id goes (the path may name another file), its content is stored.
    fn ghost_entry(&mut self, pid: i32, v: &Vma, id: u32, flags: u32) -> Result<(), FilesError> {
        let fd = map_fd(pid, v, flags)?;
        if let Some(r) = self
            .entries
            .iter_mut()
            .find(|e| e.id == id)
            .and_then(|e| e.reg.as_mut())
        {
            r.name = r.name.trim_end_matches(" (deleted)").to_string();
            r.build_id.clear();
        }
        super::reg::dump_ghost(self, &fd, id).map_err(|e| in_vma(pid, v, e))
    }
}

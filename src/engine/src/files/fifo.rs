//! Named pipes (FIFO entries + fifo-data.img).
//!
//! Kernel mechanism: a FIFO is a pipe reached through a path; every open of the path joins the
//! same pipe. CRIU's FIFO entry names the pipe by its inode and links a REG entry holding the
//! path and open flags; unread bytes go to fifo-data.img (laid out like pipes-data). The dump
//! copies the bytes with `tee` as for pipes. A restore first opens the path O_RDWR|O_NONBLOCK
//! (an "anchor" that is both reader and writer, so opening a write-only end never blocks or
//! fails for want of a reader), writes the bytes back through it, opens each description with
//! its own flags and drops the anchor once every description exists. An unlinked FIFO's path
//! goes through the ghost-file machinery of [`super::reg`] (CRIU's remap-fpath): the node is
//! made again, opened, and unlinked after every open.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use ferry_images::{pb, ImageDir, ImageReader};

use super::dump::{Fd, FileTable, FilesError};
use super::pipe::PipeData;
use super::restore::{img, RestoreError};
use crate::mem::dump::MappedFile;

// ---- dump ----

/// The FIFO entry of an fd (and the REG entry of its path); data copied on first sight.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let unlinked = fd.md.nlink() == 0;
    let path = if unlinked {
        super::reg::unlinked_path(fd)?
    } else {
        fd.target.clone()
    };
    let ino = fd.md.ino();
    if t.fifos_seen.insert(ino) {
        if let Some(p) = super::pipe::copy_data(fd.pid, fd.fd, ino)? {
            t.fifo_data.push(p);
        }
    }
    let regf = MappedFile {
        path,
        dev: fd.md.dev(),
        ino,
        mode: fd.md.mode(),
        size: 0,
    };
    let regf_id = t.reg_object(&regf, fd.flags, false);
    if unlinked {
        super::reg::ghost_fifo(t, fd, regf_id);
    }
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Fifo as i32,
        id,
        fifo: Some(pb::FifoEntry {
            id,
            pipe_id: ino as u32,
            regf_id: Some(regf_id),
        }),
        ..Default::default()
    })
}

/// Writes fifo-data.img.
pub fn write_data(dir: &ImageDir, data: &[PipeData]) -> Result<(), FilesError> {
    if data.is_empty() {
        return Ok(());
    }
    super::dump::write_with_raw(
        dir,
        "fifo-data.img",
        data.iter().map(|p| (&p.entry, &p.data[..])),
    )
}

// ---- restore ----

/// The FIFOs of a restore: one anchor per pipe_id, held until every description is open.
#[derive(Debug, Default)]
pub struct Fifos(BTreeMap<u32, OwnedFd>);

impl Fifos {
    /// Opens the description of a FIFO entry (its path and flags from the linked REG entry).
    pub fn open(
        &mut self,
        dir: &ImageDir,
        files: &BTreeMap<u32, pb::FileEntry>,
        ghosts: &super::reg::Ghosts,
        pid: u32,
        fd: u32,
        e: &pb::FifoEntry,
    ) -> Result<OwnedFd, RestoreError> {
        let id = e.regf_id.unwrap_or(0);
        let r =
            files
                .get(&id)
                .and_then(|f| f.reg.as_ref())
                .ok_or_else(|| RestoreError::NoFile {
                    what: format!("task {pid} fd {fd} (FIFO)"),
                    id,
                })?;
        // An unlinked FIFO opens its re-created node (unlinked again once all is open).
        let at = ghosts.path_of(id, &r.name);
        let sys = |op: &'static str| {
            let path = at.display().to_string();
            move |source| RestoreError::Sys { op, path, source }
        };
        if let std::collections::btree_map::Entry::Vacant(v) = self.0.entry(e.pipe_id) {
            let anchor = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&at)
                .map_err(sys("open FIFO"))?;
            let md = anchor.metadata().map_err(sys("fstat"))?;
            if !md.file_type().is_fifo_like() {
                return Err(RestoreError::Changed {
                    path: r.name.clone(),
                    what: "not a FIFO any more".into(),
                });
            }
            fill(dir, e.pipe_id, &anchor)?;
            v.insert(anchor.into());
        }
        let flags = r.flags as i32;
        let acc = flags & libc::O_ACCMODE;
        let f = std::fs::OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&at)
            .map_err(sys("open FIFO"))?;
        // SAFETY: F_SETFL on an fd we own: the entry's own O_NONBLOCK.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & libc::O_NONBLOCK) };
        Ok(f.into())
    }
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

/// Writes the FIFO's bytes from fifo-data.img through the anchor.
fn fill(dir: &ImageDir, pipe_id: u32, anchor: &std::fs::File) -> Result<(), RestoreError> {
    if !dir.has("fifo-data.img") {
        return Ok(());
    }
    let data = dir.read("fifo-data.img").map_err(img("fifo-data.img"))?;
    let mut r = ImageReader::new("fifo-data.img", &data).map_err(img("fifo-data.img"))?;
    while let Some(e) = r
        .next_entry::<pb::PipeDataEntry>()
        .map_err(img("fifo-data.img"))?
    {
        let bytes = r
            .raw(u64::from(e.bytes), "FIFO data")
            .map_err(img("fifo-data.img"))?;
        if e.pipe_id != pipe_id {
            continue;
        }
        if let Some(size) = e.size {
            // SAFETY: F_SETPIPE_SZ on a FIFO we hold open.
            unsafe { libc::fcntl(anchor.as_raw_fd(), libc::F_SETPIPE_SZ, size as i32) };
        }
        let fd: OwnedFd = anchor
            .try_clone()
            .map_err(|e| RestoreError::Sys {
                op: "dup",
                path: format!("FIFO {pipe_id}"),
                source: e,
            })?
            .into();
        super::pipe::write_all(&fd, bytes, &format!("FIFO {pipe_id}"))?;
    }
    Ok(())
}

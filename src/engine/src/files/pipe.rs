//! Pipes (PIPE entries + pipes-data.img).
//!
//! Kernel mechanism: both ends of a pipe share one inode (`pipe:[ino]`); each end's description
//! is dumped once and names the pipe by that inode. Unread bytes are copied without consuming
//! them: ferry opens the pipe afresh through the /proc link (a new reader of the same pipe) and
//! `tee`s the buffer into a pipe of its own. A restore makes one pipe per `pipe_id`, sizes it
//! as it was (F_SETPIPE_SZ) and writes the bytes back before any task runs.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use ferry_images::{pb, ImageDir, ImageReader};

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{img, sys, RestoreError};

/// A pipe's buffered data for pipes-data.img.
#[derive(Debug, Clone)]
pub struct PipeData {
    /// The entry.
    pub entry: pb::PipeDataEntry,
    /// The bytes that follow it.
    pub data: Vec<u8>,
}

// ---- dump ----

/// The PIPE entry of an end; the pipe's data is copied the first time the pipe is seen.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let id = t.next_id();
    let ino = fd.md.ino();
    if t.pipes_seen.insert(ino) {
        if let Some(p) = copy_data(fd.pid, fd.fd, ino)? {
            t.pipes.push(p);
        }
    }
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Pipe as i32,
        id,
        pipe: Some(pb::PipeEntry {
            id,
            pipe_id: ino as u32,
            flags: fd.flags,
            fown: fd.fown,
        }),
        ..Default::default()
    })
}

/// Copies the unread bytes of pipe `ino` (held by `pid` as `fd`) without consuming them.
pub fn copy_data(pid: i32, fd: i32, ino: u64) -> Result<Option<PipeData>, FilesError> {
    let err = |source| FilesError::PipeData {
        pid,
        fd,
        ino,
        source,
    };
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(err)?;
    // SAFETY: fcntl on an fd we own.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let mut p = [0i32; 2];
    // SAFETY: `p` has room for two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < size {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are pipes we hold; tee does not consume the source.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            wr.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let n = if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err(e));
        }
        0
    } else {
        n as usize
    };
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reading into the rest of `data`.
        let r = unsafe { libc::read(rd.as_raw_fd(), data[got..].as_mut_ptr().cast(), n - got) };
        if r <= 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        got += r as usize;
    }
    Ok((n > 0).then_some(PipeData {
        entry: pb::PipeDataEntry {
            pipe_id: ino as u32,
            bytes: n as u32,
            size: Some(size as u32),
        },
        data,
    }))
}

/// Writes pipes-data.img (each entry followed by its bytes).
pub fn write_data(dir: &ImageDir, pipes: &[PipeData]) -> Result<(), FilesError> {
    if pipes.is_empty() {
        return Ok(());
    }
    super::dump::write_with_raw(
        dir,
        "pipes-data.img",
        pipes.iter().map(|p| (&p.entry, &p.data[..])),
    )
}

// ---- restore ----

/// One pipe of a restore: its two ends and whether each was handed out already.
#[derive(Debug)]
struct Ends {
    rd: OwnedFd,
    wr: OwnedFd,
    used: [bool; 2],
}

/// The pipes of a restore, by pipe_id.
#[derive(Debug, Default)]
pub struct Pipes(BTreeMap<u32, Ends>);

impl Pipes {
    /// The end of pipe `p.pipe_id` the entry names, with the entry's O_NONBLOCK.
    pub fn open(&mut self, p: &pb::PipeEntry) -> Result<OwnedFd, RestoreError> {
        let what = format!("pipe:[{}]", p.pipe_id);
        if let std::collections::btree_map::Entry::Vacant(v) = self.0.entry(p.pipe_id) {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two fds into a valid array.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(sys("pipe2", &what));
            }
            // SAFETY: both fds are fresh and ours.
            let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            v.insert(Ends {
                rd,
                wr,
                used: [false; 2],
            });
        }
        let ends = self.0.get_mut(&p.pipe_id).expect("inserted above");
        let w = usize::from(p.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY);
        let end = if w == 1 { &ends.wr } else { &ends.rd };
        let sys_err = |op: &'static str| {
            let what = what.clone();
            move |e| RestoreError::Sys {
                op,
                path: what,
                source: e,
            }
        };
        // The first description of each end is the pipe's own (so its flags are pipe(2)'s);
        // another description of the same end is a new open of it through /proc.
        let fd = if std::mem::replace(&mut ends.used[w], true) {
            reopen(end, p.flags as i32).map_err(sys_err("reopen"))?
        } else {
            end.try_clone().map_err(sys_err("dup"))?
        };
        // SAFETY: F_SETFL on an fd we own.
        unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETFL,
                p.flags as i32 & libc::O_NONBLOCK,
            )
        };
        Ok(fd)
    }

    /// Writes the buffered bytes of pipes-data.img back into their pipes.
    pub fn fill(&self, dir: &ImageDir) -> Result<(), RestoreError> {
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
            let Some(Ends { wr, .. }) = self.0.get(&e.pipe_id) else {
                continue;
            };
            let what = format!("pipe:[{}]", e.pipe_id);
            if let Some(size) = e.size {
                // SAFETY: F_SETPIPE_SZ on a pipe we own.
                unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size as i32) };
            }
            write_all(wr, bytes, &what)?;
        }
        Ok(())
    }
}

/// The key a caller names this pipe by to inherit it (CRIU's `pipe:[INO]`, INO the pipe's id
/// in the images, its inode at dump time).
pub fn inherit_key(p: &pb::PipeEntry) -> String {
    format!("pipe:[{}]", p.pipe_id)
}

/// The description of a pipe end inherited as `src`: a new open of the caller's pipe with the
/// entry's access mode and O_NONBLOCK (CRIU's reopen), so the caller's own description keeps
/// its flags. A pipe that cannot be reopened so (a write end whose readers are all gone answers
/// ENXIO) is shared with the caller instead (a dup, flags as the caller set them).
pub fn open_inherited(src: &OwnedFd, p: &pb::PipeEntry) -> Result<OwnedFd, RestoreError> {
    let what = inherit_key(p);
    let fd = match reopen(src, p.flags as i32) {
        Ok(fd) => fd,
        Err(_) => {
            return src.try_clone().map_err(|e| RestoreError::Sys {
                op: "dup of the inherited fd for",
                path: what,
                source: e,
            })
        }
    };
    // SAFETY: F_SETFL on an fd we own (the new description only).
    if unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            p.flags as i32 & libc::O_NONBLOCK,
        )
    } < 0
    {
        return Err(sys("F_SETFL on the inherited", &what));
    }
    Ok(fd)
}

/// The pipes of the images that have ends of one direction only: their other end was outside
/// the tree (a caller's stdio pipe). Without an inherited fd for them they come back as new
/// pipes nobody else holds: a read sees EOF, a write EPIPE.
pub fn one_sided(files: &BTreeMap<u32, pb::FileEntry>) -> Vec<u32> {
    let mut dirs: BTreeMap<u32, [bool; 2]> = BTreeMap::new();
    for p in files.values().filter_map(|f| f.pipe.as_ref()) {
        let w = usize::from(p.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY);
        dirs.entry(p.pipe_id).or_default()[w] = true;
    }
    dirs.into_iter()
        .filter(|(_, d)| d[0] != d[1])
        .map(|(id, _)| id)
        .collect()
}

/// Writes all of `bytes` into a pipe or FIFO that has room for them.
pub fn write_all(wr: &OwnedFd, bytes: &[u8], what: &str) -> Result<(), RestoreError> {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: write from a valid buffer to a pipe we own (it has room: the data fit in the
        // pipe when it was dumped, and the pipe was sized as it was).
        let n = unsafe {
            libc::write(
                wr.as_raw_fd(),
                bytes[done..].as_ptr() as *const libc::c_void,
                bytes.len() - done,
            )
        };
        if n <= 0 {
            return Err(sys("write of buffered data into", what));
        }
        done += n as usize;
    }
    Ok(())
}

/// A new description of the same pipe end through /proc/self/fd (an open of a pipe's /proc link
/// is a new reader or writer of that pipe), with the access mode of `flags`.
fn reopen(end: &OwnedFd, flags: i32) -> std::io::Result<OwnedFd> {
    let acc = flags & libc::O_ACCMODE;
    let f = std::fs::OpenOptions::new()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        // O_NONBLOCK keeps the open from waiting for a peer; the caller sets the entry's own.
        // O_NOCTTY: an inherited fd may be a terminal where the image had a pipe, and a session
        // leader opening it must not take it as its controlling terminal.
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", end.as_raw_fd()))?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inherited_end_is_a_new_description_of_the_callers_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let entry = pb::PipeEntry {
            pipe_id: 5,
            flags: (libc::O_WRONLY | libc::O_NONBLOCK) as u32,
            ..Default::default()
        };
        let fd = open_inherited(&w, &entry).unwrap();
        // SAFETY: F_GETFL on fds we own.
        let (mine, theirs) = unsafe {
            (
                libc::fcntl(fd.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(w.as_raw_fd(), libc::F_GETFL),
            )
        };
        assert_ne!(mine & libc::O_NONBLOCK, 0, "the entry's O_NONBLOCK");
        assert_eq!(
            theirs & libc::O_NONBLOCK,
            0,
            "the caller's description untouched"
        );
        assert_eq!(mine & libc::O_ACCMODE, libc::O_WRONLY);
        // SAFETY: a write of 3 bytes from a static buffer to our fd.
        let wrote = unsafe { libc::write(fd.as_raw_fd(), b"abc".as_ptr().cast(), 3) };
        assert_eq!(wrote, 3);
        let mut buf = [0u8; 3];
        // SAFETY: reading into `buf`.
        let got = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), 3) };
        assert_eq!(got, 3);
        assert_eq!(&buf, b"abc");
        assert_eq!(inherit_key(&entry), "pipe:[5]");
    }

    #[test]
    fn pipes_with_one_direction_only_are_found() {
        let end = |id, pipe_id, flags: i32| {
            (
                id,
                pb::FileEntry {
                    id,
                    pipe: Some(pb::PipeEntry {
                        id,
                        pipe_id,
                        flags: flags as u32,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        };
        let files: BTreeMap<u32, pb::FileEntry> = [
            end(1, 10, libc::O_RDONLY),
            end(2, 10, libc::O_WRONLY),
            end(3, 11, libc::O_WRONLY),
            end(4, 12, libc::O_RDONLY | libc::O_NONBLOCK),
        ]
        .into_iter()
        .collect();
        assert_eq!(one_sided(&files), vec![11, 12]);
    }

    #[test]
    fn pipe_data_is_copied_not_consumed() {
        let mut p = [0i32; 2];
        // SAFETY: room for two fds.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: writing 5 bytes from a static buffer.
        assert_eq!(unsafe { libc::write(p[1], b"hello".as_ptr().cast(), 5) }, 5);
        let me = std::process::id() as i32;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", p[1]))
            .unwrap()
            .ino();
        let d = copy_data(me, p[1], ino).unwrap().unwrap();
        assert_eq!(d.data, b"hello");
        assert_eq!(d.entry.bytes, 5);
        let mut buf = [0u8; 5];
        // SAFETY: reading into `buf`.
        assert_eq!(unsafe { libc::read(p[0], buf.as_mut_ptr().cast(), 5) }, 5);
        assert_eq!(&buf, b"hello");
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }
}

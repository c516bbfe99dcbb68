//! Pages files allocated before the freeze, so the frozen copy only fills pages.
//!
//! Kernel mechanism: on tmpfs (/dev/shm, the usual image directory for migration) every page
//! written into a fresh file is first allocated and charged by shmem, under the file's inode
//! lock, which every writer into that file takes in turn: allocation is a third of the frozen
//! copy. Before the tree is frozen ferry reads each task's RssAnon (/proc/PID/status, a
//! counter: no page-table walk) and fallocate()s that much in an unnamed O_TMPFILE file of the
//! image directory; the task's dump links it in as its pages-N.img and sizes it exactly
//! (set_len frees what was over-estimated, allocation on write covers what was under). A
//! reserve never linked is freed when its fd closes, even if ferry dies. It is a hint: any
//! failure (no O_TMPFILE, no fallocate, ENOSPC) just leaves that task to allocate as it writes.
//! Only tmpfs is reserved for: that is where allocation was measured to be the cost. Sized for a
//! full dump: one that writes only some pages (dirty ones, against parent images) must not
//! reserve, or the frozen truncate gives back what it should never have taken.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Tasks with less private memory allocate as they write (a reserve saves them little).
const MIN: u64 = 8 << 20;
/// Tasks looked at, at most: a reserve is a hint, not worth a long walk of a huge tree.
const MAX_TASKS: usize = 4096;

/// Unnamed, preallocated pages files by the PID (as ferry sees it) of the task they are for.
#[derive(Debug, Default)]
pub struct Reserve {
    files: HashMap<i32, File>,
    /// Bytes reserved in all.
    pub bytes: u64,
}

impl Reserve {
    /// Reserves a pages file in `dir` for every task of the tree under `root` holding at least
    /// [`MIN`] bytes of private anonymous memory. Best effort: finds nothing on any error.
    pub fn make(root: i32, dir: &Path) -> Reserve {
        let mut r = Reserve::default();
        if !is_tmpfs(dir) {
            return r;
        }
        for pid in tree(root) {
            if r.files.contains_key(&pid) {
                continue;
            }
            let Some(bytes) = rss_anon(pid).filter(|&b| b >= MIN) else {
                continue;
            };
            if let Ok(f) = allocate(dir, bytes) {
                r.files.insert(pid, f);
                r.bytes += bytes;
            }
        }
        r
    }

    /// Tasks reserved for.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when nothing was reserved.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The reserve of `pid` linked in at `path` (a file already there is replaced), or `None`
    /// when there is none or it cannot be linked (the caller creates the file as usual).
    pub fn take(&mut self, pid: i32, path: &Path) -> Option<File> {
        let f = self.files.remove(&pid)?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
        let from = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
        let to = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: two NUL-terminated paths; AT_SYMLINK_FOLLOW links the O_TMPFILE file the
        // magic link names (no CAP_DAC_READ_SEARCH needed, unlike AT_EMPTY_PATH).
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        (rc == 0).then_some(f)
    }
}

fn is_tmpfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs to fill.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}

/// `root` and its descendants (children of every thread), as far as they can be read now.
fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_TASKS {
        let pid = out[i];
        i += 1;
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in threads.flatten() {
            let p = t.path().join("children");
            let Ok(s) = std::fs::read_to_string(p) else {
                continue;
            };
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    out.truncate(MAX_TASKS);
    out
}

/// RssAnon of `pid` in bytes (the mm's counter of private anonymous pages).
fn rss_anon(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// An unnamed file in `dir` with `bytes` allocated.
fn allocate(dir: &Path, bytes: u64) -> io::Result<File> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; O_TMPFILE takes a mode.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    // SAFETY: fallocate on an fd we own; mode 0 allocates and extends the size.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reads_our_own_rss_anon_and_tree() {
        let me = std::process::id() as i32;
        assert!(rss_anon(me).is_some_and(|b| b > 0));
        assert_eq!(tree(me)[0], me);
        assert!(rss_anon(-1).is_none());
    }

    #[test]
    fn a_reserve_is_linked_in_and_the_rest_freed() {
        let dir = Path::new("/dev/shm").join(format!("ferry-reserve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(is_tmpfs(&dir));
        let mut r = Reserve::default();
        r.files.insert(1, allocate(&dir, 3 << 20).unwrap());
        r.files.insert(2, allocate(&dir, 1 << 20).unwrap());
        // Nothing is visible before a take.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let p = dir.join("pages-1.img");
        std::fs::write(&p, b"stale").unwrap();
        let f = r.take(1, &p).expect("linked");
        assert!(r.take(1, &p).is_none(), "taken once");
        assert!(r.take(7, &dir.join("pages-7.img")).is_none());
        // The stale file was replaced by the reserve, whose pages read as zeros until written.
        f.set_len(8192).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"abc", 4096).unwrap();
        let mut got = Vec::new();
        File::open(&p).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 8192);
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert_eq!(&got[4096..4099], b"abc");
        drop(r);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pages-1.img")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn make_reserves_for_a_big_task_on_tmpfs_only() {
        let me = std::process::id() as i32;
        let held = vec![1u8; 32 << 20];
        let shm = Path::new("/dev/shm").join(format!("ferry-reserve-make-{me}"));
        std::fs::create_dir_all(&shm).unwrap();
        let r = Reserve::make(me, &shm);
        assert!(r.files.contains_key(&me), "{r:?}");
        assert!(r.bytes >= 32 << 20);
        assert_eq!(r.len(), 1);
        drop(r);
        std::fs::remove_dir_all(&shm).unwrap();
        // The checkout is on a disk file system here.
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(!is_tmpfs(disk.path()));
        assert!(Reserve::make(me, disk.path()).is_empty());
        assert_eq!(held[held.len() - 1], 1);
    }
}

//! Inherited fds (CRIU's `--inherit-fd fd[N]:KEY`): a file of the images is not re-created but
//! taken from an fd the restoring process was handed.
//!
//! The caller of a restore (a container runtime's caller: conmon, containerd's shim) often
//! holds the far end of the tree's stdio: a pipe it reads, a terminal. Those cannot come back
//! from the images (the old pipe's other end belongs to someone else), so the caller passes a
//! new one and names the image file it stands for by a key, formed as CRIU forms it:
//! `pipe:[INO]` (the pipe's id in the images, its inode at dump time), a regular file's path
//! relative to the root (`tmp/log`; a leading `/` is accepted too), `tty[RDEV:DEV]` (hex, the
//! terminal's tty-info). Every files.img entry whose key matches takes the inherited fd: a pipe
//! end is reopened through `/proc/self/fd/N` (a new description with the image's access mode
//! and O_NONBLOCK, so the caller's own description is not touched; no pipe data is written
//! into it: the bytes still sit in the old pipe, with its old reader), a file or terminal is a
//! dup (the caller's description, position and flags, shared as CRIU shares them). Per-fd
//! flags (close-on-exec) are the fdinfo's, set when the fd is put in place.
//!
//! The inherited fds are duplicated above every fd number of the images as soon as the restore
//! starts: an in-place restore's caller holds them at 0..2, numbers the root's own fds take.
//! A key that matches no file is reported by [`Inherited::unused`] (CRIU just closes it); the
//! restore logs it as a warning, and callers that derive keys from the images themselves
//! (`ferry restore` from descriptors.json) check them first with [`keys_in`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use ferry_images::pb;
use thiserror::Error;

use super::restore::{owned, RestoreError};

/// One `--inherit-fd`: fd `fd` of the restoring process stands for the file named `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    /// The fd in the restoring process.
    pub fd: RawFd,
    /// The image file it replaces (`pipe:[INO]`, a path, `tty[RDEV:DEV]`).
    pub key: String,
}

/// A malformed `--inherit-fd` argument or an fd that is not open.
#[derive(Debug, Error)]
pub enum InheritError {
    /// Not `fd[N]:KEY`.
    #[error("--inherit-fd {arg}: expected fd[N]:KEY (e.g. fd[1]:pipe:[12345]): {why}")]
    Syntax {
        /// The argument.
        arg: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The fd is not open in the restoring process.
    #[error("--inherit-fd fd[{fd}]:{key}: fd {fd} is not open in the restoring process: {source}")]
    NotOpen {
        /// fd.
        fd: RawFd,
        /// Key.
        key: String,
        /// Why.
        source: std::io::Error,
    },
}

impl std::str::FromStr for InheritFd {
    type Err = InheritError;

    /// CRIU's syntax: `fd[N]:KEY`.
    fn from_str(arg: &str) -> Result<Self, InheritError> {
        let bad = |why| InheritError::Syntax {
            arg: arg.to_string(),
            why,
        };
        let rest = arg
            .strip_prefix("fd[")
            .ok_or_else(|| bad("no leading fd["))?;
        let (n, key) = rest
            .split_once("]:")
            .ok_or_else(|| bad("no ]: after the fd"))?;
        let fd: RawFd = n.parse().map_err(|_| bad("the fd is not a number"))?;
        if fd < 0 {
            return Err(bad("the fd is negative"));
        }
        if key.is_empty() {
            return Err(bad("the key is empty"));
        }
        Ok(Self {
            fd,
            key: key.to_string(),
        })
    }
}

/// The inherited fds of one restore, each held as a private copy above the images' fd numbers.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: Vec<(InheritFd, OwnedFd, bool)>,
}

impl Inherited {
    /// Takes a copy (close-on-exec, at `min_fd` or above) of every inherited fd, so the root's
    /// own fds may later be installed over the originals.
    pub fn new(list: &[InheritFd], min_fd: RawFd) -> Result<Self, InheritError> {
        let mut fds = Vec::new();
        for i in list {
            // SAFETY: F_DUPFD_CLOEXEC on a caller-named fd number; it only reads the fd table
            // and returns a new fd we own (or -1 when the number is not open).
            let n = unsafe { libc::fcntl(i.fd, libc::F_DUPFD_CLOEXEC, min_fd) };
            let fd = owned(n, "dup", "inherited fd").map_err(|e| InheritError::NotOpen {
                fd: i.fd,
                key: i.key.clone(),
                source: match e {
                    RestoreError::Sys { source, .. } => source,
                    other => std::io::Error::other(other.to_string()),
                },
            })?;
            fds.push((i.clone(), fd, false));
        }
        Ok(Self { fds })
    }

    /// The inherited fd standing for `key` (the first given, as CRIU takes it); every fd given
    /// for that key counts as used (a caller may name one file on several fds, as runc does
    /// for a terminal on 0, 1 and 2).
    pub fn take(&mut self, key: &str) -> Option<&OwnedFd> {
        let mut first = None;
        for (n, e) in self.fds.iter_mut().enumerate() {
            if key_matches(&e.0.key, key) {
                e.2 = true;
                first.get_or_insert(n);
            }
        }
        first.map(|n| &self.fds[n].1)
    }

    /// Whether an fd stands for `key` (without marking it used).
    pub fn has(&self, key: &str) -> bool {
        self.fds.iter().any(|(i, _, _)| key_matches(&i.key, key))
    }

    /// Whether any fd was inherited at all.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The keys that matched no file of the images.
    pub fn unused(&self) -> Vec<InheritFd> {
        self.fds
            .iter()
            .filter(|(_, _, used)| !used)
            .map(|(i, _, _)| i.clone())
            .collect()
    }
}

/// Whether a given key names the file whose own key is `file_key`: exact, or a path given
/// with its leading `/` (CRIU's keys for paths are relative to the root).
fn key_matches(given: &str, file_key: &str) -> bool {
    given == file_key || (given.starts_with('/') && given.trim_start_matches('/') == file_key)
}

/// The key of one files.img entry, as CRIU forms it, for the kinds that can be inherited.
pub fn key_of(f: &pb::FileEntry, tty_infos: &BTreeMap<u32, pb::TtyInfoEntry>) -> Option<String> {
    if let Some(p) = &f.pipe {
        return Some(super::pipe::inherit_key(p));
    }
    if let Some(r) = &f.reg {
        return Some(super::reg::inherit_key(r));
    }
    if let Some(t) = &f.tty {
        return tty_infos.get(&t.tty_info_id).map(super::tty::inherit_key);
    }
    None
}

/// Every key the fds of the images offer (what a caller may inherit).
pub fn keys_in(dir: &ferry_images::ImageDir) -> Result<BTreeSet<String>, RestoreError> {
    let files = super::restore::load_files(dir)?;
    keys_of(files.values(), dir)
}

/// [`keys_in`] for files.img's entries already read (one per id: the restore keeps the last
/// entry of an id), reading only the terminals' tty-info from `dir`.
pub fn keys_of<'a>(
    files: impl IntoIterator<Item = &'a pb::FileEntry>,
    dir: &ferry_images::ImageDir,
) -> Result<BTreeSet<String>, RestoreError> {
    let ttys = super::restore::load_tty_infos(dir)?;
    Ok(files.into_iter().filter_map(|f| key_of(f, &ttys)).collect())
}

/// The description an entry gets from its inherited fd `src`: a pipe end is reopened with the
/// entry's flags (the caller's description stays as it is), anything else is a dup.
pub fn open(f: &pb::FileEntry, src: &OwnedFd, key: &str) -> Result<OwnedFd, RestoreError> {
    if let Some(p) = &f.pipe {
        return super::pipe::open_inherited(src, p);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we hold; the result is a new fd we own.
    let n = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    owned(n, "dup of the inherited fd for", key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criu_syntax() {
        let i: InheritFd = "fd[1]:pipe:[4242]".parse().unwrap();
        assert_eq!(
            i,
            InheritFd {
                fd: 1,
                key: "pipe:[4242]".into()
            }
        );
        let i: InheritFd = "fd[7]:tty[8800:d]".parse().unwrap();
        assert_eq!((i.fd, i.key.as_str()), (7, "tty[8800:d]"));
        let i: InheritFd = "fd[3]:var/log/x.log".parse().unwrap();
        assert_eq!(i.key, "var/log/x.log");
        for bad in [
            "1:pipe:[1]",
            "fd[x]:pipe:[1]",
            "fd[1]pipe",
            "fd[1]:",
            "fd[-2]:a",
        ] {
            let e = bad.parse::<InheritFd>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn keys_as_criu_forms_them() {
        let pipe = pb::FileEntry {
            pipe: Some(pb::PipeEntry {
                pipe_id: 77,
                ..Default::default()
            }),
            ..Default::default()
        };
        let none = BTreeMap::new();
        assert_eq!(key_of(&pipe, &none).as_deref(), Some("pipe:[77]"));
        let reg = pb::FileEntry {
            reg: Some(pb::RegFileEntry {
                name: "/tmp/out.log".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(key_of(&reg, &none).as_deref(), Some("tmp/out.log"));
        let mut ttys = BTreeMap::new();
        ttys.insert(
            3,
            pb::TtyInfoEntry {
                id: 3,
                rdev: 0x8800,
                dev: Some(0x16),
                ..Default::default()
            },
        );
        let tty = pb::FileEntry {
            tty: Some(pb::TtyFileEntry {
                tty_info_id: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(key_of(&tty, &ttys).as_deref(), Some("tty[8800:16]"));
        assert!(key_matches("/tmp/out.log", "tmp/out.log"));
        assert!(key_matches("tmp/out.log", "tmp/out.log"));
        assert!(!key_matches("pipe:[7]", "pipe:[77]"));
    }

    #[test]
    fn inherited_fds_are_copied_high_and_unused_ones_reported() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let list = vec![
            InheritFd {
                fd: w.as_raw_fd(),
                key: "pipe:[1]".into(),
            },
            InheritFd {
                fd: r.as_raw_fd(),
                key: "pipe:[2]".into(),
            },
        ];
        let mut inh = Inherited::new(&list, 100).unwrap();
        let got = inh.take("pipe:[1]").unwrap().as_raw_fd();
        assert!(inh.has("pipe:[2]") && !inh.has("pipe:[9]"));
        assert!(got >= 100);
        assert_eq!(inh.unused(), vec![list[1].clone()]);
        assert!(inh.take("pipe:[3]").is_none());
        // A closed number is a clear error naming it.
        let e = Inherited::new(
            &[InheritFd {
                fd: 987,
                key: "pipe:[9]".into(),
            }],
            100,
        )
        .unwrap_err();
        assert!(e.to_string().contains("fd 987 is not open"), "{e}");
    }
}

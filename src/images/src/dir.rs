//! An image directory: the files a dump writes (`inventory.img`, `pstree.img`, `core-TID.img`,
//! ..., `pages-N.img`), what each one is, and typed helpers the dump/restore engine uses to write
//! and read them.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::dynamic::{self, Image};
use crate::framing::{FrameError, ImageReader, ImageWriter};
use crate::magic::{self, ImageKind};
use crate::manifest::MANIFEST_NAME;

/// Largest image file read into memory (page files are never read whole).
pub const MAX_IMAGE_FILE: u64 = 256 << 20;

/// Directory-level errors.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// I/O on a path.
    #[error("{path}: {op}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file too large to be a protobuf image.
    #[error("{path}: offset 0: file is {size} bytes, above the {cap}-byte limit for image files")]
    TooLarge {
        /// Path.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        cap: u64,
    },
    /// Framing or decoding.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A file name that maps to no image type.
    #[error("{0}: offset 0: no image type is known for this file name")]
    UnknownName(String),
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> DirError + 'a {
    move |source| DirError::Io {
        path: path.display().to_string(),
        op,
        source,
    }
}

/// Reads a whole image file, refusing files above [`MAX_IMAGE_FILE`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, DirError> {
    let f = File::open(path).map_err(io(path, "open"))?;
    let size = f.metadata().map_err(io(path, "stat"))?.len();
    if size > MAX_IMAGE_FILE {
        return Err(DirError::TooLarge {
            path: path.display().to_string(),
            size,
            cap: MAX_IMAGE_FILE,
        });
    }
    let mut v = Vec::with_capacity(size as usize);
    f.take(MAX_IMAGE_FILE + 1)
        .read_to_end(&mut v)
        .map_err(io(path, "read"))?;
    Ok(v)
}

/// The image type a CRIU file name implies (`core-12.img` -> CORE), if any.
pub fn kind_for_name(name: &str) -> Option<&'static ImageKind> {
    if magic::is_raw_file(name) {
        return None;
    }
    let stem = name.strip_suffix(".img").unwrap_or(name);
    let stem = match stem.rsplit_once('-') {
        // Ids are decimal, except tcp-stream's inode which is hex.
        Some((s, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_hexdigit()) => s,
        _ => stem,
    };
    let k = match stem {
        "inventory" => "INVENTORY",
        "pstree" => "PSTREE",
        "core" => "CORE",
        "ids" => "IDS",
        "mm" => "MM",
        "pagemap" | "pagemap-shmem" => "PAGEMAP",
        "fs" => "FS",
        "fdinfo" => "FDINFO",
        "files" => "FILES",
        "stats-dump" | "stats-restore" => "STATS",
        "irmap-cache" => "IRMAP_CACHE",
        "seccomp" => "SECCOMP",
        "timens" => "TIMENS",
        "utsns" => "UTSNS",
        "ipcns-var" => "IPC_VAR",
        "ipcns-shm" => "IPCNS_SHM",
        "ipcns-msg" => "IPCNS_MSG",
        "ipcns-sem" => "IPCNS_SEM",
        "mountpoints" => "MNTS",
        "cgroup" => "CGROUP",
        "netdev" => "NETDEV",
        "netns" => "NETNS",
        "userns" => "USERNS",
        "pidns" => "PIDNS",
        "pipes-data" => "PIPES_DATA",
        "fifo-data" => "FIFO_DATA",
        "sk-queues" => "SK_QUEUES",
        "tcp-stream" => "TCP_STREAM",
        "ghost-file" => "GHOST_FILE",
        "remap-fpath" => "REMAP_FPATH",
        "memfd" => "MEMFD_INODE",
        "filelocks" | "file-locks" => "FILE_LOCKS",
        "tty-info" => "TTY_INFO",
        "tty-data" => "TTY_DATA",
        "creds" => "CREDS",
        "cpuinfo" => "CPUINFO",
        "autofs" => "AUTOFS",
        "binfmt-misc" => "BINFMT_MISC",
        "bpfmap-data" => "BPFMAP_DATA",
        "apparmor" => "APPARMOR",
        "sigacts" => "SIGACT",
        "itimers" => "ITIMERS",
        "posix-timers" => "POSIX_TIMERS",
        "rlimit" => "RLIMIT",
        "vmas" => "VMAS",
        _ => return None,
    };
    ImageKind::by_name(k)
}

/// What a file in an image directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileClass {
    /// A protobuf image of this type (by name).
    Image(&'static ImageKind),
    /// Raw data: pages, archives, logs, runc's JSON.
    Raw,
    /// ferry's integrity manifest.
    Manifest,
    /// A name ferry does not know; checked by its magic.
    Unknown,
}

/// One file of an image directory.
#[derive(Debug, Clone)]
pub struct DirFile {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Classification by name.
    pub class: FileClass,
}

/// An image directory on disk.
///
/// Opening one only checks that the directory can be read: a restore reads a handful of
/// images by name, so the listing (one stat per file) is made on the first [`ImageDir::files`]
/// call, by what walks the whole directory (`ferry image verify`, `show`).
#[derive(Debug, Clone)]
pub struct ImageDir {
    path: PathBuf,
    files: OnceLock<Vec<DirFile>>,
}

impl ImageDir {
    /// Opens an existing directory; fails as listing it would (missing, not a directory, not
    /// readable).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DirError> {
        let path = path.as_ref().to_path_buf();
        // opendir(3) only: the error a listing would give, without reading the entries.
        drop(std::fs::read_dir(&path).map_err(io(&path, "read directory"))?);
        Ok(Self {
            path,
            files: OnceLock::new(),
        })
    }

    /// Lists the regular files of `path`, sorted by name.
    fn list(path: &Path) -> Result<Vec<DirFile>, DirError> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(path).map_err(io(path, "read directory"))? {
            let e = e.map_err(io(path, "read directory"))?;
            let md = e.metadata().map_err(io(&e.path(), "stat"))?;
            if !md.is_file() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let class = if name == MANIFEST_NAME {
                FileClass::Manifest
            } else if magic::is_raw_file(&name) {
                FileClass::Raw
            } else if let Some(k) = kind_for_name(&name) {
                FileClass::Image(k)
            } else {
                FileClass::Unknown
            };
            files.push(DirFile {
                name,
                size: md.len(),
                class,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Creates the directory (if needed) for writing a new checkpoint.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, DirError> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(io(path, "create directory"))?;
        Self::open(path)
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The regular files, sorted by name: listed on the first call (or the first after
    /// [`ImageDir::refresh`]), the same list after.
    pub fn files(&self) -> Result<&[DirFile], DirError> {
        if let Some(f) = self.files.get() {
            return Ok(f);
        }
        let listed = Self::list(&self.path)?;
        Ok(self.files.get_or_init(|| listed))
    }

    /// Forgets the listing: the next [`ImageDir::files`] lists the directory again.
    pub fn refresh(&mut self) -> Result<(), DirError> {
        self.files = OnceLock::new();
        self.files().map(|_| ())
    }

    /// True when `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.path.join(name).is_file()
    }

    /// Size of `name`, if present.
    pub fn size_of(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.path.join(name))
            .ok()
            .map(|m| m.len())
    }

    /// Reads an image file (bounded).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, DirError> {
        read_bounded(&self.path.join(name))
    }

    /// Decodes a file generically, checking its magic against the type its name implies.
    pub fn decode(&self, name: &str) -> Result<Image, DirError> {
        let data = self.read(name)?;
        Ok(dynamic::decode(name, &data, kind_for_name(name))?)
    }

    /// Reads every entry of a plain image as typed messages.
    pub fn read_entries<M: prost::Message + Default>(
        &self,
        name: &str,
    ) -> Result<Vec<M>, DirError> {
        let kind = kind_for_name(name).ok_or_else(|| DirError::UnknownName(name.to_string()))?;
        let data = self.read(name)?;
        let mut r = ImageReader::expect(name, &data, kind)?;
        Ok(r.entries()?)
    }

    /// Reads the single entry of a one-entry image (inventory, core, mm, fs, ids ...).
    pub fn read_one<M: prost::Message + Default>(&self, name: &str) -> Result<M, DirError> {
        let mut v = self.read_entries::<M>(name)?;
        match v.len() {
            1 => Ok(v.remove(0)),
            n => Err(FrameError::Invalid {
                file: name.to_string(),
                offset: 0,
                problem: format!("expected exactly one entry, found {n}"),
            }
            .into()),
        }
    }

    /// Opens a new image file for writing; its type comes from the name.
    pub fn writer(&self, name: &str) -> Result<ImageWriter<BufWriter<File>>, DirError> {
        let kind = kind_for_name(name).ok_or_else(|| DirError::UnknownName(name.to_string()))?;
        let p = self.path.join(name);
        let f = File::create(&p).map_err(io(&p, "create"))?;
        Ok(ImageWriter::new(BufWriter::new(f), name, kind)?)
    }

    /// Writes a whole plain image from typed entries.
    pub fn write_entries<M: prost::Message>(
        &self,
        name: &str,
        entries: &[M],
    ) -> Result<(), DirError> {
        let mut w = self.writer(name)?;
        for e in entries {
            w.write_entry(e)?;
        }
        let f = w.finish()?.into_inner().map_err(|e| DirError::Io {
            path: self.path.join(name).display().to_string(),
            op: "flush",
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io(&self.path.join(name), "fsync"))
    }

    /// Writes ferry's integrity manifest over the directory as it is now (a dump's last step).
    pub fn write_manifest(
        &self,
    ) -> Result<crate::manifest::Manifest, crate::manifest::ManifestError> {
        crate::manifest::write(&self.path)
    }

    /// Checks the manifest: `Ok(None)` without one, else the mismatches (empty when intact).
    pub fn check_manifest(&self) -> Result<Option<Vec<String>>, crate::manifest::ManifestError> {
        crate::manifest::check(&self.path)
    }

    /// Writes a raw file (pages, archives).
    pub fn write_raw(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        let p = self.path.join(name);
        std::fs::write(&p, bytes).map_err(io(&p, "write"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn names_map_to_kinds() {
        let n = |s| kind_for_name(s).map(|k| k.name);
        assert_eq!(n("core-8612.img"), Some("CORE"));
        assert_eq!(n("pagemap-shmem-23525.img"), Some("PAGEMAP"));
        assert_eq!(n("ipcns-var-11.img"), Some("IPC_VAR"));
        assert_eq!(n("stats-dump"), Some("STATS"));
        assert_eq!(n("tcp-stream-1a2f.img"), Some("TCP_STREAM"));
        assert_eq!(n("pipes-data.img"), Some("PIPES_DATA"));
        assert_eq!(n("filelocks.img"), Some("FILE_LOCKS"));
        assert_eq!(n("pages-1.img"), None);
        assert_eq!(n("tmpfs-dev-41.tar.gz.img"), None);
        assert_eq!(n("whatever.img"), None);
    }

    #[test]
    fn open_checks_the_directory_and_lists_on_first_use() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let err = ImageDir::open(&missing).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("read directory"),
            "{err}"
        );
        std::fs::write(t.path().join("plain"), b"x").unwrap();
        let err = ImageDir::open(t.path().join("plain"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("read directory"), "{err}");

        let mut d = ImageDir::open(t.path()).unwrap();
        // Listed at the first call, not at open: a file made in between is seen.
        std::fs::write(t.path().join("pstree.img"), b"").unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        let names: Vec<&str> = d.files().unwrap().iter().map(|f| &*f.name).collect();
        assert_eq!(names, ["plain", "pstree.img"]);
        assert_eq!(
            d.files().unwrap()[1].class,
            FileClass::Image(kind_for_name("pstree.img").unwrap())
        );
        // The same list after, until a refresh.
        std::fs::write(t.path().join("pages-1.img"), b"1234").unwrap();
        assert_eq!(d.files().unwrap().len(), 2);
        d.refresh().unwrap();
        let f = d.files().unwrap();
        assert_eq!(
            (f[0].name.as_str(), f[0].size, &f[0].class),
            ("pages-1.img", 4, &FileClass::Raw)
        );
        // A directory gone after open: the listing fails with its path.
        std::fs::remove_dir_all(t.path()).unwrap();
        let err = d.refresh().unwrap_err().to_string();
        assert!(err.contains("read directory"), "{err}");
    }

    #[test]
    fn typed_write_then_read() {
        let t = tempfile::tempdir().unwrap();
        let d = ImageDir::create(t.path()).unwrap();
        let e = pb::FsEntry {
            cwd_id: 1,
            root_id: 2,
            umask: Some(0o22),
        };
        d.write_entries("fs-7.img", std::slice::from_ref(&e))
            .unwrap();
        assert_eq!(d.read_one::<pb::FsEntry>("fs-7.img").unwrap(), e);
        let err = d
            .read_one::<pb::CoreEntry>("core-7.img")
            .unwrap_err()
            .to_string();
        assert!(err.contains("core-7.img"), "{err}");
        d.write_manifest().unwrap();
        assert_eq!(d.check_manifest().unwrap(), Some(vec![]));
    }
}

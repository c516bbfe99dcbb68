//! ferry's integrity manifest: a separate `ferry-manifest.json` listing every file of a
//! checkpoint with its length and CRC-32C. CRIU's own messages are never touched, so crit and
//! CRIU read the directory unchanged; dump writes the manifest last, restore and
//! `ferry image verify` check it first.

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the manifest inside an image directory.
pub const MANIFEST_NAME: &str = "ferry-manifest.json";
const FORMAT: &str = "ferry-image-manifest";

/// Files that change after a dump by design (logs, restore statistics) are not covered.
pub fn is_covered(name: &str) -> bool {
    name != MANIFEST_NAME
        && !name.ends_with(".log")
        && name != "stats-restore"
        && !name.starts_with(".ferry-manifest")
}

/// Manifest errors.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
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
    /// The manifest itself is unreadable.
    #[error("{path}: offset {offset}: invalid manifest: {problem}")]
    Invalid {
        /// Path.
        path: String,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
}

/// One covered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// File name (no directories).
    pub name: String,
    /// Length in bytes.
    pub size: u64,
    /// CRC-32C (Castagnoli) of the whole file, as `0x%08x`.
    pub crc32c: String,
}

/// The manifest document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `ferry-image-manifest`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Files sorted by name.
    pub files: Vec<FileSum>,
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ManifestError + 'a {
    move |source| ManifestError::Io {
        path: path.display().to_string(),
        op,
        source,
    }
}

/// Length and CRC-32C of one file, streamed in 1 MiB chunks (page files can be large).
pub fn sum_file(path: &Path) -> Result<(u64, u32), ManifestError> {
    let mut f = std::fs::File::open(path).map_err(io(path, "open"))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut crc, mut len) = (0u32, 0u64);
    loop {
        let n = f.read(&mut buf).map_err(io(path, "read"))?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

fn covered_names(dir: &Path) -> Result<Vec<String>, ManifestError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir, "read directory"))? {
        let e = e.map_err(io(dir, "read directory"))?;
        if e.file_type().map_err(io(&e.path(), "stat"))?.is_file() {
            let n = e.file_name().to_string_lossy().into_owned();
            if is_covered(&n) {
                names.push(n);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Computes the manifest of `dir` as it is now.
pub fn compute(dir: &Path) -> Result<Manifest, ManifestError> {
    let mut files = Vec::new();
    for name in covered_names(dir)? {
        let (size, crc) = sum_file(&dir.join(&name))?;
        files.push(FileSum {
            name,
            size,
            crc32c: format!("0x{crc:08x}"),
        });
    }
    Ok(Manifest {
        format: FORMAT.into(),
        version: 1,
        files,
    })
}

/// Computes and writes the manifest atomically (temp file, fsync, rename, fsync directory).
pub fn write(dir: &Path) -> Result<Manifest, ManifestError> {
    let m = compute(dir)?;
    let tmp = dir.join(".ferry-manifest.json.tmp");
    let dst = dir.join(MANIFEST_NAME);
    let mut text = serde_json::to_vec_pretty(&m).map_err(|e| ManifestError::Invalid {
        path: dst.display().to_string(),
        offset: 0,
        problem: e.to_string(),
    })?;
    text.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(&text).map_err(io(&tmp, "write"))?;
    f.sync_all().map_err(io(&tmp, "fsync"))?;
    std::fs::rename(&tmp, &dst).map_err(io(&dst, "rename"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync directory"))?;
    Ok(m)
}

/// Reads the manifest of `dir`, `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
    let p = dir.join(MANIFEST_NAME);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p, "read")(e)),
    };
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| ManifestError::Invalid {
        path: p.display().to_string(),
        offset: byte_offset(&text, e.line(), e.column()),
        problem: e.to_string(),
    })?;
    if m.format != FORMAT || m.version != 1 {
        return Err(ManifestError::Invalid {
            path: p.display().to_string(),
            offset: 0,
            problem: format!(
                "format {:?} version {} is not {FORMAT} version 1",
                m.format, m.version
            ),
        });
    }
    Ok(Some(m))
}

fn byte_offset(text: &[u8], line: usize, col: usize) -> u64 {
    let mut l = 1;
    for (i, b) in text.iter().enumerate() {
        if l == line {
            return (i + col.saturating_sub(1)) as u64;
        }
        if *b == b'\n' {
            l += 1;
        }
    }
    text.len() as u64
}

/// Checks `dir` against its manifest: `Ok(None)` without a manifest, else the list of mismatches
/// (missing, changed or unlisted files), empty when everything matches.
pub fn check(dir: &Path) -> Result<Option<Vec<String>>, ManifestError> {
    let Some(m) = read(dir)? else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    for f in &m.files {
        let p = dir.join(&f.name);
        if f.name.contains('/') || !p.is_file() {
            problems.push(format!("{}: listed in {MANIFEST_NAME} but missing", f.name));
            continue;
        }
        let (size, crc) = sum_file(&p)?;
        if size != f.size {
            problems.push(format!(
                "{}: offset {size}: size is {size} bytes, manifest says {}",
                f.name, f.size
            ));
        } else if format!("0x{crc:08x}") != f.crc32c {
            problems.push(format!(
                "{}: offset 0: crc32c is 0x{crc:08x}, manifest says {}",
                f.name, f.crc32c
            ));
        }
    }
    for n in covered_names(dir)? {
        if !m.files.iter().any(|f| f.name == n) {
            problems.push(format!("{n}: not listed in {MANIFEST_NAME}"));
        }
    }
    Ok(Some(problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_check_detects_changes() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("a.img"), b"hello").unwrap();
        std::fs::write(d.join("pages-1.img"), vec![7u8; 9000]).unwrap();
        std::fs::write(d.join("dump.log"), b"log").unwrap();
        let m = write(d).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            m.files[0].crc32c,
            format!("0x{:08x}", crc32c::crc32c(b"hello"))
        );
        assert_eq!(check(d).unwrap(), Some(vec![]));
        std::fs::write(d.join("dump.log"), b"more log").unwrap();
        assert_eq!(check(d).unwrap(), Some(vec![]));
        std::fs::write(d.join("a.img"), b"hellO").unwrap();
        let p = check(d).unwrap().unwrap();
        assert!(p[0].starts_with("a.img: offset 0: crc32c"), "{p:?}");
        std::fs::write(d.join("a.img"), b"hi").unwrap();
        std::fs::write(d.join("x.img"), b"new").unwrap();
        std::fs::remove_file(d.join("pages-1.img")).unwrap();
        let p = check(d).unwrap().unwrap();
        assert_eq!(p.len(), 3, "{p:?}");
        std::fs::write(d.join(MANIFEST_NAME), b"{\"format\": 3").unwrap();
        let e = check(d).unwrap_err().to_string();
        assert!(e.contains("invalid manifest"), "{e}");
    }

    #[test]
    fn no_manifest_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(check(t.path()).unwrap(), None);
    }
}

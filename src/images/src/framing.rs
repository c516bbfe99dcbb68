//! Strict framing of CRIU v1.1 images: header magics, `u32 LE length + protobuf` entries and the
//! raw payloads that follow some entries.
//!
//! ```text
//! +----------------+----------------+-----------+---------------+-----------+-----
//! | IMG_COMMON u32 | type magic u32 | len u32   | len bytes     | [payload] | len u32 ...
//! +----------------+----------------+-----------+---------------+-----------+-----
//! ```
//!
//! Every length is checked against a cap and against the bytes that remain before anything is
//! sliced or allocated, so a corrupt length can neither panic nor allocate.

use std::io::Write;

use crate::magic::{Header, ImageKind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

/// Largest single protobuf entry accepted (CRIU's largest real entries are a few hundred KiB).
pub const MAX_ENTRY: u32 = 64 << 20;

/// A framing or decoding problem, always naming file and byte offset.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The file could not be read or written.
    #[error("{file}: {op}: {source}")]
    Io {
        /// File name.
        file: String,
        /// What was attempted.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends inside the header.
    #[error("{file}: offset {offset}: file ends inside the image header ({have} bytes), expected {expected}")]
    ShortHeader {
        /// File name.
        file: String,
        /// Byte offset.
        offset: u64,
        /// Bytes present.
        have: u64,
        /// What should be there.
        expected: &'static str,
    },
    /// A magic number is wrong.
    #[error("{file}: offset {offset}: bad magic 0x{found:08x}, expected {expected}")]
    BadMagic {
        /// File name.
        file: String,
        /// Byte offset.
        offset: u64,
        /// The u32 found.
        found: u32,
        /// What was expected.
        expected: String,
    },
    /// The type magic is not in the table.
    #[error("{file}: offset {offset}: unknown image type magic 0x{magic:08x}")]
    UnknownType {
        /// File name.
        file: String,
        /// Byte offset.
        offset: u64,
        /// The u32 found.
        magic: u32,
    },
    /// Fewer than 4 bytes left where an entry length should be.
    #[error("{file}: offset {offset}: truncated entry length prefix ({have} of 4 bytes)")]
    TruncatedLength {
        /// File name.
        file: String,
        /// Byte offset.
        offset: u64,
        /// Bytes present.
        have: u64,
    },
    /// An entry length above [`MAX_ENTRY`].
    #[error("{file}: offset {offset}: entry length {len} exceeds the cap of {cap} bytes")]
    EntryTooLarge {
        /// File name.
        file: String,
        /// Byte offset of the length prefix.
        offset: u64,
        /// Declared length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// An entry or payload runs past the end of the file.
    #[error("{file}: offset {offset}: {what} of {len} bytes runs past the end of the file ({remaining} bytes left)")]
    PastEnd {
        /// File name.
        file: String,
        /// Byte offset where it starts.
        offset: u64,
        /// Entry or payload.
        what: String,
        /// Declared length.
        len: u64,
        /// Bytes that remain.
        remaining: u64,
    },
    /// The protobuf bytes do not parse as the expected message.
    #[error("{file}: offset {offset}: cannot decode {message}: {reason}")]
    BadMessage {
        /// File name.
        file: String,
        /// Byte offset of the entry payload.
        offset: u64,
        /// Expected message type.
        message: String,
        /// Decoder's reason.
        reason: String,
    },
    /// Anything else that makes an entry unusable (bad JSON field, missing payload ...).
    #[error("{file}: offset {offset}: {problem}")]
    Invalid {
        /// File name.
        file: String,
        /// Byte offset.
        offset: u64,
        /// The problem.
        problem: String,
    },
}

/// Result alias for framing.
pub type Result<T> = std::result::Result<T, FrameError>;

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses the header; returns the image type and where entries begin.
pub fn parse_header(file: &str, data: &[u8]) -> Result<(&'static ImageKind, usize)> {
    let short = |have: usize, expected| FrameError::ShortHeader {
        file: file.to_string(),
        offset: have as u64,
        have: have as u64,
        expected,
    };
    let first = u32_at(data, 0).ok_or_else(|| short(data.len(), "a 4-byte magic"))?;
    let (header, magic, start) = match first {
        IMG_COMMON_MAGIC | IMG_SERVICE_MAGIC => {
            let m = u32_at(data, 4).ok_or_else(|| short(data.len(), "an 8-byte v1.1 header"))?;
            let h = if first == IMG_COMMON_MAGIC {
                Header::Common
            } else {
                Header::Service
            };
            (h, m, 8)
        }
        m => (Header::Bare, m, 4),
    };
    let kind = match ImageKind::by_magic(magic) {
        Some(k) => k,
        None if header == Header::Bare => {
            return Err(FrameError::BadMagic {
                file: file.to_string(),
                offset: 0,
                found: first,
                expected: format!(
                    "IMG_COMMON_MAGIC 0x{IMG_COMMON_MAGIC:08x}, IMG_SERVICE_MAGIC 0x{IMG_SERVICE_MAGIC:08x} or INVENTORY_MAGIC 0x58313116"
                ),
            })
        }
        None => {
            return Err(FrameError::UnknownType { file: file.to_string(), offset: 4, magic })
        }
    };
    if kind.header != header {
        let expected = match kind.header {
            Header::Common => format!(
                "IMG_COMMON_MAGIC 0x{IMG_COMMON_MAGIC:08x} before {}",
                kind.name
            ),
            Header::Service => format!(
                "IMG_SERVICE_MAGIC 0x{IMG_SERVICE_MAGIC:08x} before {}",
                kind.name
            ),
            Header::Bare => format!("{} magic 0x{:08x} alone", kind.name, kind.magic),
        };
        return Err(FrameError::BadMagic {
            file: file.to_string(),
            offset: 0,
            found: first,
            expected,
        });
    }
    Ok((kind, start))
}

/// A strict reader over the bytes of one image file.
#[derive(Debug, Clone)]
pub struct ImageReader<'a> {
    file: String,
    data: &'a [u8],
    pos: usize,
    kind: &'static ImageKind,
}

impl<'a> ImageReader<'a> {
    /// Parses the header of `data` (the contents of `file`).
    pub fn new(file: &str, data: &'a [u8]) -> Result<Self> {
        let (kind, pos) = parse_header(file, data)?;
        Ok(Self {
            file: file.to_string(),
            data,
            pos,
            kind,
        })
    }

    /// Like [`ImageReader::new`], but the type magic must be `expected`'s.
    pub fn expect(file: &str, data: &'a [u8], expected: &ImageKind) -> Result<Self> {
        let r = Self::new(file, data).map_err(|e| match e {
            FrameError::UnknownType {
                file,
                offset,
                magic,
            } => FrameError::BadMagic {
                file,
                offset,
                found: magic,
                expected: format!("{} magic 0x{:08x}", expected.name, expected.magic),
            },
            FrameError::BadMagic {
                file,
                offset,
                found,
                ..
            } => FrameError::BadMagic {
                file,
                offset,
                found,
                expected: match expected.header {
                    Header::Bare => format!("{} magic 0x{:08x}", expected.name, expected.magic),
                    Header::Common => format!(
                        "IMG_COMMON_MAGIC 0x{IMG_COMMON_MAGIC:08x} of a {} image",
                        expected.name
                    ),
                    Header::Service => format!(
                        "IMG_SERVICE_MAGIC 0x{IMG_SERVICE_MAGIC:08x} of a {} image",
                        expected.name
                    ),
                },
            },
            e => e,
        })?;
        if r.kind.magic != expected.magic {
            let offset = if expected.header == Header::Bare {
                0
            } else {
                4
            };
            return Err(FrameError::BadMagic {
                file: file.to_string(),
                offset,
                found: r.kind.magic,
                expected: format!(
                    "{} magic 0x{:08x} (found {}'s)",
                    expected.name, expected.magic, r.kind.name
                ),
            });
        }
        Ok(r)
    }

    /// The image type.
    pub fn kind(&self) -> &'static ImageKind {
        self.kind
    }

    /// File name used in errors.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Current byte offset.
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// True at the end of the file.
    pub fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next length-prefixed entry: `(payload offset, payload)`, or `None` at a clean end.
    pub fn next_frame(&mut self) -> Result<Option<(u64, &'a [u8])>> {
        if self.at_end() {
            return Ok(None);
        }
        let at = self.pos;
        let Some(len) = u32_at(self.data, at) else {
            return Err(FrameError::TruncatedLength {
                file: self.file.clone(),
                offset: at as u64,
                have: self.remaining() as u64,
            });
        };
        if len > MAX_ENTRY {
            return Err(FrameError::EntryTooLarge {
                file: self.file.clone(),
                offset: at as u64,
                len: len.into(),
                cap: MAX_ENTRY.into(),
            });
        }
        let start = at + 4;
        let left = self.data.len() - start;
        if len as usize > left {
            return Err(FrameError::PastEnd {
                file: self.file.clone(),
                offset: at as u64,
                what: format!("{} entry", self.kind.name),
                len: len.into(),
                remaining: left as u64,
            });
        }
        self.pos = start + len as usize;
        Ok(Some((start as u64, &self.data[start..self.pos])))
    }

    /// `len` raw payload bytes following an entry.
    pub fn raw(&mut self, len: u64, what: &str) -> Result<&'a [u8]> {
        let left = self.remaining() as u64;
        if len > left {
            return Err(FrameError::PastEnd {
                file: self.file.clone(),
                offset: self.pos as u64,
                what: what.to_string(),
                len,
                remaining: left,
            });
        }
        let s = &self.data[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(s)
    }

    /// Everything up to the end of the file.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }

    /// Decodes the next entry as the typed message `M`, or `None` at a clean end.
    pub fn next_entry<M: prost::Message + Default>(&mut self) -> Result<Option<M>> {
        let Some((off, bytes)) = self.next_frame()? else {
            return Ok(None);
        };
        M::decode(bytes)
            .map(Some)
            .map_err(|e| FrameError::BadMessage {
                file: self.file.clone(),
                offset: off,
                message: std::any::type_name::<M>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("?")
                    .to_string(),
                reason: e.to_string(),
            })
    }

    /// Decodes every remaining entry as `M` (for plain images).
    pub fn entries<M: prost::Message + Default>(&mut self) -> Result<Vec<M>> {
        let mut v = Vec::new();
        while let Some(m) = self.next_entry()? {
            v.push(m);
        }
        Ok(v)
    }
}

/// Writes one image: header, then entries and raw payloads.
#[derive(Debug)]
pub struct ImageWriter<W: Write> {
    out: W,
    file: String,
    kind: &'static ImageKind,
    written: u64,
}

impl<W: Write> ImageWriter<W> {
    /// Starts an image of type `kind` on `out` (`file` names it in errors).
    pub fn new(out: W, file: &str, kind: &'static ImageKind) -> Result<Self> {
        let mut w = Self {
            out,
            file: file.to_string(),
            kind,
            written: 0,
        };
        let h = kind.header_bytes();
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(|source| FrameError::Io {
            file: self.file.clone(),
            op: "write",
            source,
        })?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// The image type being written.
    pub fn kind(&self) -> &'static ImageKind {
        self.kind
    }

    /// Writes one length-prefixed entry from already-encoded protobuf bytes.
    pub fn write_frame(&mut self, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_ENTRY)
            .ok_or_else(|| FrameError::EntryTooLarge {
                file: self.file.clone(),
                offset: self.written,
                len: payload.len() as u64,
                cap: MAX_ENTRY.into(),
            })?;
        self.put(&len.to_le_bytes())?;
        self.put(payload)
    }

    /// Writes one typed entry.
    pub fn write_entry<M: prost::Message>(&mut self, msg: &M) -> Result<()> {
        self.write_frame(&msg.encode_to_vec())
    }

    /// Writes raw payload bytes after an entry (pipe data, queues, ghost content ...).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.put(bytes)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.out.flush().map_err(|source| FrameError::Io {
            file: self.file.clone(),
            op: "flush",
            source,
        })?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn typed_round_trip() {
        let kind = ImageKind::named("PSTREE");
        let mut w = ImageWriter::new(Vec::new(), "pstree.img", kind).unwrap();
        let e = pb::PstreeEntry {
            pid: 7,
            ppid: 0,
            pgid: 7,
            sid: 7,
            threads: vec![7, 8],
        };
        w.write_entry(&e).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = ImageReader::expect("pstree.img", &bytes, kind).unwrap();
        assert_eq!(r.entries::<pb::PstreeEntry>().unwrap(), vec![e]);
    }

    #[test]
    fn errors_name_offsets() {
        let kind = ImageKind::named("PSTREE");
        let mut bytes = kind.header_bytes();
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 3]);
        let mut r = ImageReader::new("p.img", &bytes).unwrap();
        let e = r.next_frame().unwrap_err().to_string();
        assert_eq!(e, "p.img: offset 8: PSTREE entry of 100 bytes runs past the end of the file (3 bytes left)");
        let e = ImageReader::new("x", &[1, 2]).unwrap_err().to_string();
        assert!(e.contains("offset 2") && e.contains("header"), "{e}");
        let e = ImageReader::new("x", &[1, 2, 3, 4, 5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad magic 0x04030201"), "{e}");
        let mut c = crate::magic::IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        c.extend_from_slice(&0x1234u32.to_le_bytes());
        let e = ImageReader::new("x", &c).unwrap_err().to_string();
        assert_eq!(e, "x: offset 4: unknown image type magic 0x00001234");
    }
}

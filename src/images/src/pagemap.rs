//! Pagemap images: which virtual pages a task (or a shared memory object) had, and where their
//! contents sit in the raw `pages-N.img` named by the head entry.
//!
//! ```text
//! pagemap-PID.img                              pages-N.img (raw, no header)
//! +--------------------+                       +---------+---------+-----
//! | pagemap_head       |  pages_id = N ------> | page 0  | page 1  | ...
//! | entry vaddr A, 2 pg|  PRESENT  -> pages 0,1 |         |         |
//! | entry vaddr B, 3 pg|  PARENT   -> (parent dir, not here)
//! | entry vaddr C, 1 pg|  PRESENT  -> page 2
//! +--------------------+
//! ```
//!
//! Only entries stored here (PE_PRESENT without PE_PARENT) consume pages, in file order.

use crate::framing::{FrameError, ImageReader, Result};
use crate::magic::{ImageKind, PAGE_SIZE};
use crate::pb;

/// `pagemap_entry.flags`: pages live in the parent checkpoint.
pub const PE_PARENT: u32 = 1 << 0;
/// Pages are served lazily (still stored here when also PE_PRESENT).
pub const PE_LAZY: u32 = 1 << 1;
/// Pages are stored in this checkpoint's pages file.
pub const PE_PRESENT: u32 = 1 << 2;

/// One pagemap entry with where it sits in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct PagemapItem {
    /// Byte offset of the entry's length prefix.
    pub offset: u64,
    /// The entry.
    pub entry: pb::PagemapEntry,
}

impl PagemapItem {
    /// Number of pages it covers (`nr_pages`, or the older `compat_nr_pages`).
    pub fn pages(&self) -> u64 {
        self.entry
            .nr_pages
            .unwrap_or(self.entry.compat_nr_pages.unwrap_or(0).into())
    }

    /// True when its pages are stored in this checkpoint's pages file.
    pub fn in_pages_file(&self) -> bool {
        match self.entry.flags {
            Some(f) => f & PE_PRESENT != 0 && f & PE_PARENT == 0,
            None => !self.entry.in_parent.unwrap_or(false),
        }
    }
}

/// A run of pages stored in the pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First virtual address.
    pub vaddr: u64,
    /// Pages in the run.
    pub nr_pages: u64,
    /// Byte offset of the first page in `pages-N.img`.
    pub file_offset: u64,
    /// Marked lazy (a lazy-pages restore may fetch it on fault).
    pub lazy: bool,
}

/// A decoded pagemap image.
#[derive(Debug, Clone, PartialEq)]
pub struct Pagemap {
    /// Its head (which pages file).
    pub head: pb::PagemapHead,
    /// Its entries in file order.
    pub items: Vec<PagemapItem>,
}

impl Pagemap {
    /// Reads a pagemap image (`name` is used in errors).
    pub fn read(name: &str, data: &[u8]) -> Result<Self> {
        let mut r = ImageReader::expect(name, data, ImageKind::named("PAGEMAP"))?;
        let at = r.offset();
        let head = r
            .next_entry::<pb::PagemapHead>()?
            .ok_or_else(|| FrameError::Invalid {
                file: name.to_string(),
                offset: at,
                problem: "pagemap has no pagemap_head entry".into(),
            })?;
        let mut items = Vec::new();
        loop {
            let offset = r.offset();
            match r.next_entry::<pb::PagemapEntry>()? {
                Some(entry) => items.push(PagemapItem { offset, entry }),
                None => return Ok(Self { head, items }),
            }
        }
    }

    /// Name of the pages file the head points at.
    pub fn pages_file(&self) -> String {
        format!("pages-{}.img", self.head.pages_id)
    }

    /// The runs stored in the pages file with their offsets, checked against its length
    /// `pages_len`: an entry pointing past the end is an error naming it.
    pub fn runs(&self, name: &str, pages_name: &str, pages_len: u64) -> Result<Vec<PageRun>> {
        let have = pages_len / PAGE_SIZE;
        let claimed = self
            .items
            .iter()
            .filter(|i| i.in_pages_file())
            .fold(0u64, |a, i| a.saturating_add(i.pages()));
        let mut runs = Vec::new();
        let mut used = 0u64;
        for (i, it) in self.items.iter().enumerate() {
            if !it.in_pages_file() {
                continue;
            }
            let n = it.pages();
            if used.saturating_add(n) > have {
                return Err(FrameError::Invalid {
                    file: name.to_string(),
                    offset: it.offset,
                    problem: format!(
                        "entry {} (vaddr {:#x}, {n} pages) points past the end of {pages_name}: the pagemap claims {claimed} pages, the file holds {have}",
                        i + 1,
                        it.entry.vaddr
                    ),
                });
            }
            let lazy = it.entry.flags.unwrap_or(0) & PE_LAZY != 0;
            runs.push(PageRun {
                vaddr: it.entry.vaddr,
                nr_pages: n,
                file_offset: used * PAGE_SIZE,
                lazy,
            });
            used += n;
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::ImageWriter;

    fn entry(vaddr: u64, n: u64, flags: u32) -> pb::PagemapEntry {
        pb::PagemapEntry {
            vaddr,
            compat_nr_pages: Some(0),
            flags: Some(flags),
            nr_pages: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn runs_have_file_offsets_and_overruns_are_errors() {
        let mut w =
            ImageWriter::new(Vec::new(), "pagemap-1.img", ImageKind::named("PAGEMAP")).unwrap();
        w.write_entry(&pb::PagemapHead { pages_id: 3 }).unwrap();
        w.write_entry(&entry(0x1000, 2, PE_PRESENT)).unwrap();
        w.write_entry(&entry(0x5000, 4, PE_PARENT)).unwrap();
        w.write_entry(&entry(0x9000, 1, PE_PRESENT | PE_LAZY))
            .unwrap();
        let bytes = w.finish().unwrap();
        let pm = Pagemap::read("pagemap-1.img", &bytes).unwrap();
        assert_eq!(pm.pages_file(), "pages-3.img");
        let runs = pm
            .runs("pagemap-1.img", "pages-3.img", 3 * PAGE_SIZE)
            .unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs[1],
            PageRun {
                vaddr: 0x9000,
                nr_pages: 1,
                file_offset: 2 * PAGE_SIZE,
                lazy: true
            }
        );
        let e = pm
            .runs("pagemap-1.img", "pages-3.img", 2 * PAGE_SIZE)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("pagemap-1.img: offset "), "{e}");
        assert!(
            e.contains("entry 3 (vaddr 0x9000, 1 pages) points past the end of pages-3.img"),
            "{e}"
        );
    }
}

//! `verify`: an image directory checked as a whole: ferry's manifest, the framing of every
//! image, and the cross-references CRIU relies on at restore (pstree ids <-> core files, task
//! images, fdinfo <-> files entries, fs/exe/file-VMA ids, pagemap <-> pages files).

use std::collections::{BTreeMap, BTreeSet};

use crate::dir::{DirError, FileClass, ImageDir};
use crate::magic::PAGE_SIZE;
use crate::pagemap::Pagemap;
use crate::{dynamic, manifest, pb};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems, one line each, naming file and offset.
    pub errors: Vec<String>,
    /// Remarks that are not errors.
    pub notes: Vec<String>,
    /// Image files whose framing was checked.
    pub files_checked: usize,
    /// True when a ferry manifest was present and checked.
    pub manifest_checked: bool,
}

struct Ctx<'a> {
    d: &'a ImageDir,
    r: Report,
    bad: BTreeSet<String>,
}

impl Ctx<'_> {
    fn err(&mut self, s: String) {
        self.r.errors.push(s);
    }

    fn load<M: prost::Message + Default>(&mut self, name: &str) -> Option<Vec<M>> {
        if self.bad.contains(name) {
            return None;
        }
        if !self.d.has(name) {
            self.err(format!(
                "{name}: offset 0: missing (needed by the checkpoint)"
            ));
            self.bad.insert(name.to_string());
            return None;
        }
        match self.d.read_entries::<M>(name) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(e.to_string());
                self.bad.insert(name.to_string());
                None
            }
        }
    }

    fn one<M: prost::Message + Default>(&mut self, name: &str) -> Option<M> {
        let mut v = self.load::<M>(name)?;
        if v.len() != 1 {
            self.err(format!(
                "{name}: offset 0: expected exactly one entry, found {}",
                v.len()
            ));
            return None;
        }
        Some(v.remove(0))
    }
}

/// Verifies an image directory.
pub fn verify(d: &ImageDir) -> Report {
    let mut cx = Ctx {
        d,
        r: Report::default(),
        bad: BTreeSet::new(),
    };
    match manifest::check(d.path()) {
        Ok(None) => {}
        Ok(Some(problems)) => {
            cx.r.manifest_checked = true;
            cx.r.errors.extend(problems);
        }
        Err(e) => cx.err(e.to_string()),
    }
    framing(&mut cx);
    cross_references(&mut cx);
    cx.r
}

fn framing(cx: &mut Ctx<'_>) {
    let files = match cx.d.files() {
        Ok(f) => f,
        Err(e) => return cx.err(e.to_string()),
    };
    for f in files {
        let expected = match &f.class {
            FileClass::Image(k) => Some(*k),
            FileClass::Unknown => None,
            FileClass::Raw | FileClass::Manifest => continue,
        };
        cx.r.files_checked += 1;
        let res = cx
            .d
            .read(&f.name)
            .map_err(|e| e.to_string())
            .and_then(|data| dynamic::decode(&f.name, &data, expected).map_err(|e| e.to_string()));
        match res {
            Ok(img) if expected.is_none() => cx.r.notes.push(format!(
                "{}: unusual file name for a {} image",
                f.name, img.kind.name
            )),
            Ok(_) => {}
            Err(e) => {
                cx.err(e);
                cx.bad.insert(f.name.clone());
            }
        }
    }
}

fn cross_references(cx: &mut Ctx<'_>) {
    if !cx.d.has("inventory.img") {
        cx.err("inventory.img: offset 0: missing (every checkpoint starts with it)".into());
    }
    let Some(tree) = cx.load::<pb::PstreeEntry>("pstree.img") else {
        return;
    };
    if tree.is_empty() {
        cx.err("pstree.img: offset 8: no process entries".into());
    }
    let pids: BTreeSet<u32> = tree.iter().map(|p| p.pid).collect();
    let files: Option<Vec<pb::FileEntry>> = if cx.d.has("files.img") {
        cx.load("files.img")
    } else {
        Some(Vec::new())
    };
    let mut file_ids = BTreeSet::new();
    if let Some(files) = &files {
        for f in files {
            if !file_ids.insert(f.id) {
                cx.err(format!(
                    "files.img: offset 0: file id {} appears twice",
                    f.id
                ));
            }
        }
    }
    let has_file = |id: u32| files.is_none() || file_ids.contains(&id);
    let mut fdinfo_seen = BTreeSet::new();
    let mut pagemaps = BTreeMap::new();
    for p in &tree {
        if p.ppid != 0 && !pids.contains(&p.ppid) {
            cx.err(format!(
                "pstree.img: offset 0: task {} has parent {} which is not in the tree",
                p.pid, p.ppid
            ));
        }
        if !p.threads.contains(&p.pid) {
            cx.err(format!(
                "pstree.img: offset 0: task {} is not among its own threads {:?}",
                p.pid, p.threads
            ));
        }
        let mut state = 1;
        for tid in &p.threads {
            let name = format!("core-{tid}.img");
            if let Some(core) = cx.one::<pb::CoreEntry>(&name) {
                if *tid == p.pid {
                    match &core.tc {
                        Some(tc) => state = tc.task_state,
                        None => cx.err(format!(
                            "{name}: offset 8: main thread of task {} has no task core (tc)",
                            p.pid
                        )),
                    }
                }
            }
        }
        // Zombies (6) and dead tasks (2) keep only their core image.
        if state == 6 || state == 2 {
            continue;
        }
        let ids = cx.one::<pb::TaskKobjIdsEntry>(&format!("ids-{}.img", p.pid));
        if let Some(ids) = ids {
            let fdinfo = format!("fdinfo-{}.img", ids.files_id);
            if fdinfo_seen.insert(fdinfo.clone()) {
                if let Some(fds) = cx.load::<pb::FdinfoEntry>(&fdinfo) {
                    for fd in fds {
                        if !has_file(fd.id) {
                            cx.err(format!("{fdinfo}: offset 0: fd {} refers to file id {} which files.img does not hold", fd.fd, fd.id));
                        }
                    }
                }
            }
        }
        let fsn = format!("fs-{}.img", p.pid);
        if let Some(fs) = cx.one::<pb::FsEntry>(&fsn) {
            for (what, id) in [("cwd", fs.cwd_id), ("root", fs.root_id)] {
                if !has_file(id) {
                    cx.err(format!(
                        "{fsn}: offset 8: {what} file id {id} is not in files.img"
                    ));
                }
            }
        }
        let mmn = format!("mm-{}.img", p.pid);
        let mm = cx.one::<pb::MmEntry>(&mmn);
        if let Some(mm) = &mm {
            if !has_file(mm.exe_file_id) {
                cx.err(format!(
                    "{mmn}: offset 8: exe file id {} is not in files.img",
                    mm.exe_file_id
                ));
            }
            for v in &mm.vmas {
                if v.status & ((1 << 6) | (1 << 7)) != 0 && !has_file(v.shmid as u32) {
                    cx.err(format!("{mmn}: offset 8: file VMA {:#x}-{:#x} refers to file id {} which is not in files.img", v.start, v.end, v.shmid));
                }
            }
        }
        pagemaps.insert(format!("pagemap-{}.img", p.pid), mm.map(|m| m.vmas));
    }
    // A directory that could not be listed is already reported by `framing`.
    for f in cx.d.files().unwrap_or_default() {
        if f.name.starts_with("pagemap-shmem-") {
            pagemaps.insert(f.name.clone(), None);
        }
    }
    pages(cx, pagemaps);
}

/// True when `[start, end)` is covered by the (possibly adjacent) VMAs: CRIU merges runs of
/// pages across neighbouring VMAs into one pagemap entry.
fn covered(vmas: &[pb::VmaEntry], start: u64, end: u64) -> bool {
    let mut at = start;
    while at < end {
        match vmas.iter().find(|m| m.start <= at && at < m.end) {
            Some(m) => at = m.end,
            None => return false,
        }
    }
    true
}

fn pages(cx: &mut Ctx<'_>, pagemaps: BTreeMap<String, Option<Vec<pb::VmaEntry>>>) {
    let mut used_pages = BTreeSet::new();
    for (name, vmas) in pagemaps {
        if cx.bad.contains(&name) {
            continue;
        }
        let data = match cx.d.read(&name) {
            Ok(d) => d,
            Err(DirError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                cx.err(format!(
                    "{name}: offset 0: missing (needed by the checkpoint)"
                ));
                continue;
            }
            Err(e) => {
                cx.err(e.to_string());
                continue;
            }
        };
        let pm = match Pagemap::read(&name, &data) {
            Ok(x) => x,
            Err(e) => {
                cx.err(e.to_string());
                continue;
            }
        };
        let (head, items) = (&pm.head, &pm.items);
        let pages_name = format!("pages-{}.img", head.pages_id);
        used_pages.insert(pages_name.clone());
        let Some(size) = cx.d.size_of(&pages_name) else {
            cx.err(format!(
                "{name}: offset 8: pages_id {} names {pages_name}, which is missing",
                head.pages_id
            ));
            continue;
        };
        if size % PAGE_SIZE != 0 {
            cx.err(format!(
                "{pages_name}: offset {}: size {size} is not a multiple of the page size",
                size - size % PAGE_SIZE
            ));
        }
        let have = size / PAGE_SIZE;
        let mut prev_end = 0u64;
        for (i, it) in items.iter().enumerate() {
            let n = it.pages();
            let v = it.entry.vaddr;
            let end = v.saturating_add(n.saturating_mul(PAGE_SIZE));
            if v % PAGE_SIZE != 0 {
                cx.err(format!(
                    "{name}: offset {}: entry {} vaddr {v:#x} is not page aligned",
                    it.offset,
                    i + 1
                ));
            }
            if v < prev_end {
                cx.err(format!(
                    "{name}: offset {}: entry {} at {v:#x} overlaps the previous entry",
                    it.offset,
                    i + 1
                ));
            }
            prev_end = end;
            if let Some(vmas) = &vmas {
                if !covered(vmas, v, end) {
                    cx.err(format!("{name}: offset {}: entry {} ({v:#x}, {n} pages) lies outside every VMA of the task", it.offset, i + 1));
                }
            }
        }
        let need = match pm.runs(&name, &pages_name, size) {
            Ok(runs) => runs.iter().map(|r| r.nr_pages).sum::<u64>(),
            Err(e) => {
                cx.err(e.to_string());
                continue;
            }
        };
        if need < have {
            cx.err(format!(
                "{pages_name}: offset {}: holds {have} pages but {name} accounts for only {need}",
                need * PAGE_SIZE
            ));
        }
    }
    for f in cx.d.files().unwrap_or_default() {
        if f.name.starts_with("pages-") && f.name.ends_with(".img") && !used_pages.contains(&f.name)
        {
            cx.err(format!(
                "{}: offset 0: no pagemap refers to this pages file",
                f.name
            ));
        }
    }
}

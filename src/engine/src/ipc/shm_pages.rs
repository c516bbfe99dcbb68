//! SysV shared memory content kept in pagemap images, as CRIU 4.x writes it.
//!
//! With `ipc_shm_entry.in_pagemaps = true` the segment's bytes are not in `ipcns-shm-ID.img`
//! but in `pagemap-shmem-SHMID.img` (a `pagemap_head` naming `pages-N.img`, then entries
//! whose `vaddr` is the offset inside the segment) and the raw page file. Pages not listed
//! are zero. ferry itself writes the content inline (CRIU reads both forms).

use ferry_images::pagemap::{Pagemap, PE_PARENT};
use ferry_images::{pb, ImageDir};

use super::IpcError;

const PAGE: u64 = 4096;

/// Name of the pagemap of segment `shmid`.
pub fn pagemap_name(shmid: u32) -> String {
    format!("pagemap-shmem-{shmid}.img")
}

/// Rebuilds the content of segment `e` from its pagemap and page file.
pub fn content_from_pagemaps(
    pid: i32,
    dir: &ImageDir,
    e: &pb::IpcShmEntry,
) -> Result<Vec<u8>, IpcError> {
    let name = pagemap_name(e.desc.id);
    let invalid = |what: String| IpcError::Invalid {
        pid,
        file: name.clone(),
        what,
    };
    let img = |file: String| {
        move |source| IpcError::Image {
            stage: "restore",
            file,
            source,
        }
    };
    let data = dir.read(&name).map_err(img(name.clone()))?;
    let pm = Pagemap::read(&name, &data).map_err(|source| IpcError::Frame {
        stage: "restore",
        source,
    })?;
    if pm
        .items
        .iter()
        .any(|i| i.entry.flags.unwrap_or(0) & PE_PARENT != 0)
    {
        return Err(IpcError::Unsupported {
            pid,
            file: name.clone(),
            what: format!("shm id {} has pages in a parent checkpoint", e.desc.id),
        });
    }
    let pages_name = pm.pages_file();
    let pages = std::fs::read(dir.path().join(&pages_name)).map_err(|source| IpcError::Sysctl {
        stage: "restore",
        pid,
        path: dir.path().join(&pages_name).display().to_string(),
        source,
    })?;
    let runs = pm
        .runs(&name, &pages_name, pages.len() as u64)
        .map_err(|source| IpcError::Frame {
            stage: "restore",
            source,
        })?;
    let size =
        usize::try_from(e.size).map_err(|_| invalid(format!("size {} too large", e.size)))?;
    let mut out: Vec<u8> = Vec::new();
    // A corrupt size is an error here, not an allocation abort.
    out.try_reserve_exact(size).map_err(|_| {
        invalid(format!(
            "cannot allocate {size} bytes for shm id {}",
            e.desc.id
        ))
    })?;
    out.resize(size, 0);
    let span = size.div_ceil(PAGE as usize) as u64 * PAGE;
    for r in runs {
        let len = r.nr_pages * PAGE;
        if r.vaddr.checked_add(len).is_none_or(|end| end > span) {
            return Err(invalid(format!(
                "pages at offset {:#x} (+{len}) lie outside the {size}-byte segment",
                r.vaddr
            )));
        }
        let from = &pages[r.file_offset as usize..(r.file_offset + len) as usize];
        let start = r.vaddr as usize;
        let end = (start + len as usize).min(size);
        out[start..end].copy_from_slice(&from[..end - start]);
    }
    Ok(out)
}

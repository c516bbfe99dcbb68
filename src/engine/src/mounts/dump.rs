//! Dump half of the mount namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ferry_images::{pb, ImageDir};

use super::info::{self, MountInfo};
use super::{can_mount_fresh, fstype_code, image_name, tmpfs, tmpfs_image_name, MountError};

const STAGE: &str = "dump";

/// What to dump.
#[derive(Debug, Clone)]
pub struct MountDumpOpts {
    /// The container root as the task sees it: `/` for a pivoted container, or a directory
    /// that is a mountpoint in the task's namespace.
    pub root: PathBuf,
    /// External mounts: mountpoint relative to the container root (`/data`) -> key written to
    /// `ext_key` (runc uses the destination itself); restore gets the source from the caller.
    pub external: BTreeMap<String, String>,
    /// The container's user namespace: tmpfs owners are archived as seen inside it.
    pub userns: Option<crate::userns::UserNs>,
}

impl Default for MountDumpOpts {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            external: BTreeMap::new(),
            userns: None,
        }
    }
}

/// The mountpoint relative to `root` (`/` for the root itself), or None when outside.
fn relative(root: &str, mp: &str) -> Option<String> {
    if root == "/" {
        return Some(mp.to_string());
    }
    if mp == root {
        return Some("/".into());
    }
    mp.strip_prefix(root)
        .filter(|r| r.starts_with('/'))
        .map(str::to_string)
}

/// The mounts of the tree rooted at the container root, in mountinfo order; the first is the
/// root mount.
pub fn collect(pid: i32, root: &str) -> Result<Vec<(MountInfo, String)>, MountError> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| MountError::Io {
        stage: STAGE,
        pid,
        op: "read",
        path: path.clone(),
        source,
    })?;
    let all = info::parse(pid, &text)?;
    let root_m = all
        .iter()
        .rev()
        .find(|m| m.mountpoint == root)
        .ok_or_else(|| MountError::Unsupported {
            stage: STAGE,
            pid,
            what: format!("container root {root} is not a mountpoint in the task's namespace"),
        })?;
    let mut inside: BTreeSet<u32> = BTreeSet::from([root_m.mnt_id]);
    let mut out = vec![(root_m.clone(), "/".to_string())];
    // Parents come before children in mountinfo, but loop until stable to be sure.
    loop {
        let mut grew = false;
        for m in &all {
            if inside.contains(&m.mnt_id) || !inside.contains(&m.parent_id) {
                continue;
            }
            if let Some(rel) = relative(root, &m.mountpoint) {
                inside.insert(m.mnt_id);
                out.push((m.clone(), rel));
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    Ok(out)
}

/// Dumps the mount tree of task `pid` into `mountpoints-NS_ID.img` and tmpfs archives.
///
/// Returns the entries written. Fails, naming the mount, for a mount ferry could not bring
/// back: a filesystem that is neither external, nor a bind of another mount of the tree,
/// nor one restore can mount fresh; or a tmpfs hidden under another mount.
pub fn dump_mounts(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
    opts: &MountDumpOpts,
) -> Result<Vec<pb::MntEntry>, MountError> {
    let root = opts.root.to_string_lossy().to_string();
    let root = if root.len() > 1 {
        root.trim_end_matches('/').to_string()
    } else {
        root
    };
    let tree = collect(pid, &root)?;
    let root_id = tree[0].0.mnt_id;
    let mut entries = Vec::with_capacity(tree.len());
    let mut archived: BTreeSet<u32> = BTreeSet::new();
    for (i, (m, rel)) in tree.iter().enumerate() {
        let code = fstype_code(&m.fstype);
        let ext_key = if m.mnt_id == root_id {
            None
        } else {
            opts.external.get(rel).cloned()
        };
        let (sb_flags, mut options) = info::sb_flags_and_options(&m.super_opts);
        if m.fstype == "devpts" && !options.split(',').any(|o| o == "newinstance") {
            // As CRIU: a restored devpts must be an instance of its own.
            options = if options.is_empty() {
                "newinstance".into()
            } else {
                format!("{options},newinstance")
            };
        }
        let bind_source = tree.iter().any(|(o, _)| {
            o.mnt_id != m.mnt_id
                && o.kdev == m.kdev
                && (o.root == "/"
                    || m.root == o.root
                    || m.root.starts_with(&format!("{}/", o.root)))
                && (o.mnt_id == root_id || o.root.len() < m.root.len() || o.mnt_id < m.mnt_id)
        });
        let fresh = m.root == "/" && can_mount_fresh(code);
        if m.mnt_id != root_id && ext_key.is_none() && !fresh && !bind_source {
            return Err(MountError::Unsupported {
                stage: STAGE,
                pid,
                what: format!(
                    "mount {} at {rel} ({} {} root {}) is not external, not a bind of another mount \
                     of the container and not a filesystem ferry can mount fresh; pass it as an \
                     external mount",
                    m.mnt_id, m.fstype, m.source, m.root
                ),
            });
        }
        if code == 5
            && m.root == "/"
            && m.mnt_id != root_id
            && ext_key.is_none()
            && archived.insert(m.kdev)
        {
            if tree[i + 1..]
                .iter()
                .any(|(o, _)| o.mountpoint == m.mountpoint)
            {
                return Err(MountError::Unsupported {
                    stage: STAGE,
                    pid,
                    what: format!(
                        "tmpfs mount {} at {rel} is hidden under another mount",
                        m.mnt_id
                    ),
                });
            }
            let path = PathBuf::from(format!("/proc/{pid}/root{}", m.mountpoint));
            let data = tmpfs::archive(&path)
                .and_then(|d| match &opts.userns {
                    Some(ns) => tmpfs::map_owners(&d, &mut |u, g| {
                        Ok(crate::userns::dump::tar_owner(u, g, ns))
                    }),
                    None => Ok(d),
                })
                .map_err(|source| MountError::Io {
                    stage: STAGE,
                    pid,
                    op: "archive tmpfs",
                    path: path.display().to_string(),
                    source,
                })?;
            let name = tmpfs_image_name(m.kdev);
            dir.write_raw(&name, &data)
                .map_err(|source| MountError::Image {
                    stage: STAGE,
                    file: name.clone(),
                    source,
                })?;
        }
        entries.push(pb::MntEntry {
            fstype: code,
            mnt_id: m.mnt_id,
            root_dev: m.kdev,
            parent_mnt_id: m.parent_id,
            flags: info::mnt_flags(&m.mnt_opts),
            root: m.root.clone(),
            mountpoint: rel.clone(),
            source: m.source.clone(),
            options,
            shared_id: Some(m.shared),
            master_id: Some(m.master),
            with_plugin: None,
            ext_mount: None,
            fsname: (code == 0).then(|| m.fstype.clone()),
            internal_sharing: None,
            deleted: None,
            sb_flags: Some(sb_flags),
            ext_key,
        });
    }
    let file = image_name(ns_id);
    dir.write_entries(&file, &entries)
        .map_err(|source| MountError::Image {
            stage: STAGE,
            file,
            source,
        })?;
    Ok(entries)
}

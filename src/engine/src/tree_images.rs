//! The images every container restore stage consults first, decoded once: the process tree
//! (`pstree.img`), its root task's namespace ids (`ids-PID.img`, or the ids in its core as older
//! images keep them) and the inventory, whose `root_ids` are the dumper's own namespaces (a
//! namespace of the root's that differs from the dumper's was the tree's own: its user and time
//! namespaces come back from their images then).
//!
//! A runtime reads them in its checks before anything is made and hands them on to the later
//! stages (`time_offsets`, the user namespace check, `restore_resources`), so each file is read
//! once per restore.

use ferry_images::{pb, ImageDir};

use crate::container::ContainerError;

/// An image directory with its tree, root ids and inventory decoded.
#[derive(Debug, Clone)]
pub struct TreeImages {
    /// The directory.
    pub dir: ImageDir,
    /// pstree.img, root first (never empty).
    pub tree: Vec<pb::PstreeEntry>,
    /// The root task's namespace ids.
    pub root_ids: pb::TaskKobjIdsEntry,
    /// inventory.img.
    pub inventory: pb::InventoryEntry,
}

impl TreeImages {
    /// Opens the directory at `path` and reads the images.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, ContainerError> {
        Self::read(ImageDir::open(path)?)
    }

    /// Reads the images of `dir`.
    pub fn read(dir: ImageDir) -> Result<Self, ContainerError> {
        let tree: Vec<pb::PstreeEntry> = dir.read_entries("pstree.img")?;
        let root_ids = root_ids(&dir, &tree)?;
        let inventory = dir.read_one("inventory.img")?;
        Ok(Self {
            dir,
            tree,
            root_ids,
            inventory,
        })
    }

    /// The dumper's own namespace ids (the inventory's `root_ids`), if recorded.
    pub fn dumper_ids(&self) -> Option<&pb::TaskKobjIdsEntry> {
        self.inventory.root_ids.as_ref()
    }
}

/// The namespace ids of `tree`'s root task as `dir` records them (`ids-PID.img` or
/// `core.ids`); an empty tree is refused.
pub fn root_ids(
    dir: &ImageDir,
    tree: &[pb::PstreeEntry],
) -> Result<pb::TaskKobjIdsEntry, ContainerError> {
    let root = tree.first().ok_or_else(|| ContainerError::NotSupported {
        stage: "read images",
        what: "an empty pstree.img".into(),
    })?;
    let ids_name = format!("ids-{}.img", root.pid);
    if dir.has(&ids_name) {
        return Ok(dir.read_one(&ids_name)?);
    }
    let core: pb::CoreEntry = dir.read_one(&format!("core-{}.img", root.pid))?;
    core.ids.ok_or_else(|| ContainerError::NotSupported {
        stage: "read images",
        what: format!(
            "task {}: no ids-{}.img and no ids in its core",
            root.pid, root.pid
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(tree: &[u32]) -> (tempfile::TempDir, ImageDir) {
        let t = tempfile::tempdir().unwrap();
        let d = ImageDir::create(t.path()).unwrap();
        let entries: Vec<pb::PstreeEntry> = tree
            .iter()
            .map(|&pid| pb::PstreeEntry {
                pid,
                ppid: 0,
                pgid: pid,
                sid: pid,
                threads: vec![pid],
            })
            .collect();
        d.write_entries("pstree.img", &entries).unwrap();
        let inv = pb::InventoryEntry {
            img_version: 2,
            root_ids: Some(pb::TaskKobjIdsEntry {
                pid_ns_id: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.write_entries("inventory.img", &[inv]).unwrap();
        (t, d)
    }

    #[test]
    fn reads_the_root_ids_from_ids_or_core() {
        let (_t, d) = dir_with(&[7, 8]);
        let ids = pb::TaskKobjIdsEntry {
            pid_ns_id: Some(11),
            ..Default::default()
        };
        // No ids file: the core's ids.
        let core = pb::CoreEntry {
            ids: Some(ids),
            ..Default::default()
        };
        d.write_entries("core-7.img", &[core]).unwrap();
        let t = TreeImages::read(d.clone()).unwrap();
        assert_eq!(t.tree.len(), 2);
        assert_eq!(t.root_ids.pid_ns_id, Some(11));
        assert_eq!(t.dumper_ids().and_then(|i| i.pid_ns_id), Some(3));
        // ids-7.img wins over the core.
        let ids2 = pb::TaskKobjIdsEntry {
            pid_ns_id: Some(12),
            ..Default::default()
        };
        d.write_entries("ids-7.img", &[ids2]).unwrap();
        assert_eq!(
            TreeImages::open(d.path()).unwrap().root_ids.pid_ns_id,
            Some(12)
        );
    }

    #[test]
    fn refuses_an_empty_tree_or_a_root_without_ids() {
        let (_t, d) = dir_with(&[]);
        let e = TreeImages::read(d).unwrap_err().to_string();
        assert!(e.contains("empty pstree.img"), "{e}");
        let (_t, d) = dir_with(&[5]);
        d.write_entries("core-5.img", &[pb::CoreEntry::default()])
            .unwrap();
        let e = TreeImages::read(d).unwrap_err().to_string();
        assert!(e.contains("no ids-5.img and no ids in its core"), "{e}");
        let (_t, d) = dir_with(&[6]);
        let e = TreeImages::read(d).unwrap_err().to_string();
        assert!(e.contains("core-6.img"), "{e}");
    }
}

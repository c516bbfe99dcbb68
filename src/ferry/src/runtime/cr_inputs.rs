//! What `ferry restore` reads before anything is made, each file once: the image directory's
//! descriptors.json, its tree images (pstree, the root's namespace ids, inventory:
//! [`TreeImages`]) and files.img, and the bundle's config.json. The checks run on what was
//! read, and the later stages (the adjusted config, the time offsets, the resource restore,
//! the stdio record) are handed the same data instead of reading the files again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_engine::container::TreeImages;
use ferry_images::pb;
use serde_json::Value;

use super::cr_error::CrError;
use super::cr_stdio;

/// The image directory as the restore's checks read it.
#[derive(Debug)]
pub struct Images {
    /// descriptors.json: the init's stdio at the checkpoint (stdin, stdout, stderr).
    pub descs: Vec<String>,
    /// The directory with its tree images.
    pub tree: TreeImages,
    /// files.img's entries (none without one).
    pub files: Vec<pb::FileEntry>,
}

impl Images {
    /// Reads the image directory `dir` of container `id`'s restore and checks it enough to
    /// refuse before anything is created: a checkpoint (inventory and tree), stdio for three
    /// fds, a tree whose root has a pid namespace.
    pub fn read(id: &str, dir: &Path) -> Result<Self, CrError> {
        let bad = |problem: String| CrError::BadImages {
            id: id.to_string(),
            path: dir.to_path_buf(),
            problem,
        };
        if !dir.is_dir() {
            return Err(bad("does not exist or is not a directory".into()));
        }
        for f in ["inventory.img", "pstree.img"] {
            if !dir.join(f).is_file() {
                return Err(bad(format!("{f} is missing: not a checkpoint")));
            }
        }
        let descs = cr_stdio::read(dir).map_err(|e| bad(e.to_string()))?;
        if descs.len() != 3 {
            return Err(bad(format!(
                "{} holds {} entries, want 3 (stdin, stdout, stderr)",
                cr_stdio::DESCRIPTORS,
                descs.len()
            )));
        }
        let tree = TreeImages::open(dir).map_err(|e| bad(e.to_string()))?;
        if tree.root_ids.pid_ns_id.is_none() {
            return Err(bad("the tree's root task has no pid namespace id".into()));
        }
        let files = if tree.dir.has("files.img") {
            tree.dir
                .read_entries("files.img")
                .map_err(|e| bad(e.to_string()))?
        } else {
            Vec::new()
        };
        Ok(Self { descs, tree, files })
    }

    /// files.img's entries by id, as the restore takes them (the last entry of an id).
    pub fn files_by_id(&self) -> BTreeMap<u32, &pb::FileEntry> {
        self.files.iter().map(|f| (f.id, f)).collect()
    }
}

/// A bundle's config.json, read and parsed once.
#[derive(Debug)]
pub struct BundleConfig {
    /// Its path.
    pub path: PathBuf,
    /// The config as JSON (the restore keeps every field it does not adjust).
    pub spec: Value,
}

impl BundleConfig {
    /// Reads `bundle`/config.json.
    pub fn read(bundle: &Path) -> Result<Self, CrError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(CrError::io("read bundle config", &path))?;
        let spec = serde_json::from_slice(&text).map_err(|source| CrError::Json {
            stage: format!("parse {}", path.display()),
            source,
        })?;
        Ok(Self { path, spec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_images::ImageDir;

    /// A minimal checkpoint: tree of task 1 with ids, an inventory, descriptors.json.
    fn checkpoint(files: Option<&[pb::FileEntry]>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let d = ImageDir::create(t.path()).unwrap();
        let root = pb::PstreeEntry {
            pid: 1,
            ppid: 0,
            pgid: 1,
            sid: 1,
            threads: vec![1],
        };
        d.write_entries("pstree.img", &[root]).unwrap();
        let ids = pb::TaskKobjIdsEntry {
            pid_ns_id: Some(9),
            ..Default::default()
        };
        d.write_entries("ids-1.img", &[ids]).unwrap();
        d.write_entries("inventory.img", &[pb::InventoryEntry::default()])
            .unwrap();
        if let Some(f) = files {
            d.write_entries("files.img", f).unwrap();
        }
        cr_stdio::write(
            t.path(),
            &["/dev/null".into(), "pipe:[7]".into(), "/dev/null".into()],
        )
        .unwrap();
        t
    }

    fn file(id: u32, fd_type: i32) -> pb::FileEntry {
        pb::FileEntry {
            id,
            r#type: fd_type,
            ..Default::default()
        }
    }

    #[test]
    fn reads_each_image_once_into_what_the_stages_need() {
        let t = checkpoint(Some(&[file(1, 1), file(2, 1), file(1, 5)]));
        let i = Images::read("c1", t.path()).unwrap();
        assert_eq!(i.descs[1], "pipe:[7]");
        assert_eq!(i.tree.root_ids.pid_ns_id, Some(9));
        assert_eq!(i.tree.tree[0].pid, 1);
        assert_eq!(i.files.len(), 3);
        // By id, the last entry of an id wins, as in the restore.
        let by_id = i.files_by_id();
        assert_eq!(by_id.len(), 2);
        assert_eq!(by_id[&1].r#type, 5);
        // No files.img: no entries.
        let t = checkpoint(None);
        assert!(Images::read("c1", t.path()).unwrap().files.is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_restorable_checkpoint() {
        let err = |dir: &Path| match Images::read("c1", dir) {
            Ok(_) => panic!("{} was accepted", dir.display()),
            Err(e) => e.to_string(),
        };
        let t = tempfile::tempdir().unwrap();
        let e = err(&t.path().join("none"));
        assert!(e.contains("does not exist or is not a directory"), "{e}");
        assert!(
            e.starts_with("restore of container c1: image directory"),
            "{e}"
        );
        let e = err(t.path());
        assert!(
            e.contains("inventory.img is missing: not a checkpoint"),
            "{e}"
        );

        let t = checkpoint(None);
        cr_stdio::write(t.path(), &["/dev/null".into()]).unwrap();
        let e = err(t.path());
        assert!(e.contains("holds 1 entries, want 3"), "{e}");

        let t = checkpoint(None);
        let d = ImageDir::open(t.path()).unwrap();
        d.write_entries("ids-1.img", &[pb::TaskKobjIdsEntry::default()])
            .unwrap();
        let e = err(t.path());
        assert!(e.contains("no pid namespace id"), "{e}");

        let t = checkpoint(None);
        std::fs::write(t.path().join("inventory.img"), b"junk").unwrap();
        let e = err(t.path());
        assert!(e.contains("inventory.img"), "{e}");

        let t = checkpoint(None);
        std::fs::write(t.path().join("files.img"), b"junk").unwrap();
        let e = err(t.path());
        assert!(e.contains("files.img"), "{e}");
    }

    #[test]
    fn bundle_config_is_read_and_parsed_once() {
        let t = tempfile::tempdir().unwrap();
        let e = BundleConfig::read(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("read bundle config") && e.contains("config.json"),
            "{e}"
        );
        std::fs::write(t.path().join("config.json"), b"{\"hostname\": \"h\"}").unwrap();
        let c = BundleConfig::read(t.path()).unwrap();
        assert_eq!(c.spec["hostname"], "h");
        assert_eq!(c.path, t.path().join("config.json"));
        std::fs::write(t.path().join("config.json"), b"{").unwrap();
        let e = BundleConfig::read(t.path()).unwrap_err().to_string();
        assert!(e.contains("parse") && e.contains("config.json"), "{e}");
    }
}

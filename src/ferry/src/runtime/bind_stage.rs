//! Bind-mount sources a container's mapped root cannot reach, staged where it can.
//!
//! libcontainer 0.7 resolves (`canonicalize`) and clones (`open_tree`) every bind source from
//! inside the container's init, which by then is root of the container's new user namespace:
//! the host uid mapped to 0, with capabilities only over inodes whose owner and group are both
//! mapped (the kernel's `privileged_wrt_inode_uidgid`). A source below a directory it may not
//! search, such as podman's 0700 per-container directories owned by host root, fails with
//! EACCES. runc opens such sources in the host context before its init enters the namespace
//! and hands it the fds. libcontainer takes only paths, so ferry does the equivalent with one:
//! before the build it bind-mounts each unreachable source, as host root, onto an entry of a
//! directory of its own (`/run/ferry-staging/<id>-<root hash>.XXXXXX`, mode 0711, a private
//! self-bind so nothing staged propagates), and gives libcontainer a config naming that entry.
//! The init's mount namespace is copied from ferry's afterwards, so it finds the staged mount;
//! a clone of it is what a clone of the source would be: same filesystem and root, same mount
//! flags, same peer group or master (a bind keeps the source's), and `bind`/`rbind`, `ro` and
//! the propagation options still apply as the config says. The staging mounts are detached
//! once the build returns (the container's copies are its own) or failed; `delete` removes
//! what a create killed midway left.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

use super::cr_error::CrError;
use super::Error;

/// Staging a bind source failed: what ferry was doing, on which path.
#[derive(Debug, thiserror::Error)]
#[error("{stage} {path:?}: {source}")]
pub struct StageError {
    /// what ferry was doing
    stage: &'static str,
    /// the path
    path: PathBuf,
    /// the OS error
    #[source]
    source: std::io::Error,
}

impl StageError {
    fn io(stage: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StageError {
            stage,
            path,
            source,
        }
    }
}

impl From<StageError> for Error {
    fn from(e: StageError) -> Self {
        Error::Io {
            stage: e.stage,
            path: e.path,
            source: e.source,
        }
    }
}

impl From<StageError> for CrError {
    fn from(e: StageError) -> Self {
        CrError::Io {
            stage: e.stage,
            path: e.path,
            source: e.source,
        }
    }
}

type Result<T> = std::result::Result<T, StageError>;

/// Where staging directories live: traversable by any uid, unlike ferry's state root (0700).
pub const BASE: &str = "/run/ferry-staging";

/// One id range of a user namespace mapping: (container id, host id, size).
type Range = (u32, u32, u32);

/// Who the container's init is on the host while it makes the mounts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MappedRoot {
    uid: Option<u32>,
    gid: Option<u32>,
    uid_map: Vec<Range>,
    gid_map: Vec<Range>,
}

fn ranges(v: &Value) -> Vec<Range> {
    let n = |m: &Value, k: &str| m[k].as_u64().and_then(|x| u32::try_from(x).ok());
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((n(m, "containerID")?, n(m, "hostID")?, n(m, "size")?)))
        .collect()
}

fn to_host(map: &[Range], id: u32) -> Option<u32> {
    map.iter()
        .find(|(c, _, s)| id >= *c && u64::from(id) < u64::from(*c) + u64::from(*s))
        .map(|(c, h, _)| h + (id - c))
}

fn mapped(map: &[Range], host: u32) -> bool {
    map.iter()
        .any(|(_, h, s)| host >= *h && u64::from(host) < u64::from(*h) + u64::from(*s))
}

impl MappedRoot {
    /// The init's host ids for a config that gives the container a new user namespace with
    /// mappings; `None` otherwise (the init then makes the mounts as ferry's root, or in a
    /// namespace joined by path whose mappings the config does not tell).
    pub(super) fn of(config: &Value) -> Option<MappedRoot> {
        let new_userns = config["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["type"] == "user" && n.get("path").is_none_or(|p| p.is_null()));
        let uid_map = ranges(&config["linux"]["uidMappings"]);
        let gid_map = ranges(&config["linux"]["gidMappings"]);
        if !new_userns || uid_map.is_empty() {
            return None;
        }
        Some(MappedRoot {
            uid: to_host(&uid_map, 0),
            gid: to_host(&gid_map, 0),
            uid_map,
            gid_map,
        })
    }

    /// Whether it may search a directory of this owner, group and mode. ACLs are not read:
    /// a directory that only an ACL opens counts as closed (it is staged, which is harmless).
    pub(super) fn may_search(&self, uid: u32, gid: u32, mode: u32) -> bool {
        // CAP_DAC_READ_SEARCH in its own namespace, over inodes it has mapped ids for.
        if mapped(&self.uid_map, uid) && mapped(&self.gid_map, gid) {
            return true;
        }
        let bit = if self.uid == Some(uid) {
            0o100
        } else if self.gid == Some(gid) {
            0o010
        } else {
            0o001
        };
        mode & bit != 0
    }

    /// Whether it can reach `path` (absolute, canonical): search every directory above it.
    pub(super) fn reaches(&self, path: &Path) -> bool {
        path.ancestors().skip(1).all(|dir| {
            std::fs::metadata(dir).is_ok_and(|m| self.may_search(m.uid(), m.gid(), m.mode()))
        })
    }
}

/// Whether a config mount is a bind, by libcontainer's rule (type `bind`, or a `bind`/`rbind`
/// option).
pub(super) fn is_bind(m: &Value) -> bool {
    m["type"].as_str() == Some("bind")
        || m["options"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| matches!(o.as_str(), Some("bind" | "rbind")))
}

fn is_rbind(m: &Value) -> bool {
    m["options"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o.as_str() == Some("rbind"))
}

/// FNV-1a of the state root: the staging directories of one root's container `id` are found
/// again by `delete` (the same id may live under another root).
fn root_key(root: &Path) -> u64 {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    root.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn prefix(root: &Path, id: &str) -> String {
    format!("{id}-{:016x}.", root_key(root))
}

/// A staging directory with the sources bound into it; detached and removed on drop.
#[derive(Debug)]
pub(super) struct Staged {
    dir: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        release(&self.dir);
    }
}

/// Detaches the staging directory's self-bind (with every mount staged on it) and removes it.
/// Only ferry's own empty entries are removed, one by one: an entry still mounted on (the
/// detach failed) refuses with EBUSY, so nothing of a source is ever deleted.
fn release(dir: &Path) {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::error!("detach staging mounts at {}: {e}", dir.display()),
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir(&p),
            _ => std::fs::remove_file(&p),
        };
        if let Err(err) = r {
            tracing::error!("remove staging entry {}: {err}", p.display());
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!("remove staging directory {}: {e}", dir.display());
        }
    }
}

/// Removes what a create of container `id` under `root`, killed before it could, left staged.
pub(super) fn clean_leftovers(root: &Path, id: &str) {
    let prefix = prefix(root, id);
    for e in std::fs::read_dir(BASE).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            release(&e.path());
        }
    }
}

/// Stages, for container `id` under state root `root`, every bind source of `config` that the
/// container's mapped root could not reach, and rewrites those sources in `config`. `None`
/// when nothing needs staging (no new user namespace, or every source reachable).
pub(super) fn stage(root: &Path, id: &str, config: &mut Value) -> Result<Option<Staged>> {
    let Some(who) = MappedRoot::of(config) else {
        return Ok(None);
    };
    // (index in mounts, canonical source, recursive)
    let mut todo = Vec::new();
    for (i, m) in config["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(src) = m["source"].as_str().filter(|_| is_bind(m)) else {
            continue;
        };
        // As libcontainer resolves it (a relative source against ferry's cwd); a source that
        // does not resolve is left for libcontainer to report.
        let Ok(canon) = std::fs::canonicalize(src) else {
            continue;
        };
        if !who.reaches(&canon) {
            todo.push((i, canon, is_rbind(m)));
        }
    }
    if todo.is_empty() {
        return Ok(None);
    }
    let staged = Staged {
        dir: make_dir(root, id)?,
    };
    for (n, (i, src, recursive)) in todo.into_iter().enumerate() {
        let entry = staged.dir.join(n.to_string());
        bind(&src, &entry, recursive)?;
        config["mounts"][i]["source"] = Value::String(entry.to_string_lossy().into_owned());
    }
    Ok(Some(staged))
}

/// Creates the container's staging directory (0711 all the way from /run) as a private mount
/// of its own.
fn make_dir(root: &Path, id: &str) -> Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(BASE)
        .map_err(StageError::io("create staging base", BASE))?;
    let perm = std::fs::Permissions::from_mode(0o711);
    std::fs::set_permissions(BASE, perm.clone())
        .map_err(StageError::io("chmod staging base", BASE))?;
    let dir = tempfile::Builder::new()
        .prefix(&prefix(root, id))
        .tempdir_in(BASE)
        .map_err(StageError::io("create staging directory in", BASE))?
        .keep();
    let made = (|| {
        std::fs::set_permissions(&dir, perm)
            .map_err(StageError::io("chmod staging directory", &dir))?;
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| StageError::io("bind staging directory onto itself", &dir)(e.into()))?;
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| StageError::io("make staging directory private", &dir)(e.into()))
    })();
    if let Err(e) = made {
        release(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Binds `src` onto `entry` (created as a directory or an empty file to match), recursively
/// for an `rbind`.
fn bind(src: &Path, entry: &Path, recursive: bool) -> Result<()> {
    let is_dir = std::fs::metadata(src)
        .map_err(StageError::io("stat bind source", src))?
        .is_dir();
    if is_dir {
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(entry)
            .map_err(StageError::io("create staging entry", entry))?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(entry)
            .map_err(StageError::io("create staging entry", entry))?;
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), entry, None::<&str>, flags, None::<&str>).map_err(|e| StageError {
        stage: "stage bind source",
        path: src.to_path_buf(),
        source: std::io::Error::other(format!("bind onto {}: {e}", entry.display())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({
            "linux": {
                "namespaces": [{"type": "mount"}, {"type": "user"}],
                "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 1000}]
            }
        })
    }

    #[test]
    fn mapped_root_of_a_new_user_namespace_only() {
        let who = MappedRoot::of(&config()).unwrap();
        assert_eq!((who.uid, who.gid), (Some(100000), Some(200000)));
        let mut joined = config();
        joined["linux"]["namespaces"][1]["path"] = json!("/proc/1/ns/user");
        assert!(MappedRoot::of(&joined).is_none());
        let mut none = config();
        none["linux"]["namespaces"] = json!([{"type": "mount"}]);
        assert!(MappedRoot::of(&none).is_none());
    }

    #[test]
    fn search_rights_as_the_kernel_gives_them() {
        let who = MappedRoot::of(&config()).unwrap();
        // Host root's 0700 and 0750: closed; 0711: open to others.
        assert!(!who.may_search(0, 0, 0o700));
        assert!(!who.may_search(0, 0, 0o750));
        assert!(who.may_search(0, 0, 0o711));
        // Its own directory by owner bits; the group's by group bits.
        assert!(who.may_search(100000, 0, 0o700));
        assert!(!who.may_search(100000, 0, 0o600));
        assert!(who.may_search(5, 200000, 0o710));
        // Owner and group both mapped: capabilities in its namespace open any mode.
        assert!(who.may_search(100005, 200005, 0o700));
        // Only one of them mapped: no.
        assert!(!who.may_search(100005, 0, 0o700));
    }

    #[test]
    fn binds_by_libcontainers_rule() {
        assert!(is_bind(&json!({"type": "bind"})));
        assert!(is_bind(&json!({"type": "none", "options": ["rbind"]})));
        assert!(!is_bind(&json!({"type": "tmpfs", "options": ["ro"]})));
        assert!(is_rbind(&json!({"options": ["rbind", "ro"]})));
        assert!(!is_rbind(&json!({"options": ["bind"]})));
    }

    #[test]
    fn keys_differ_by_root_and_id() {
        let a = prefix(Path::new("/run/ferry"), "c");
        assert_eq!(a, prefix(Path::new("/run/ferry"), "c"));
        assert_ne!(a, prefix(Path::new("/run/other"), "c"));
        assert_ne!(a, prefix(Path::new("/run/ferry"), "d"));
    }
}

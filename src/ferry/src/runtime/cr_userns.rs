//! A restore into a container with its own user namespace: the config's mappings, checked
//! against the images before anything is made, and the image directory made readable to the
//! container's init.
//!
//! The init restores the tree from inside the new user namespace, as its root (host uid
//! `hostID` of `containerID` 0). The images belong to the host's root, which has no mapping
//! there, so the namespace's root gets no capability over them (`capable_wrt_inode_uidgid`)
//! and a 0700 image directory is closed to it. So ferry hands the init an idmapped clone of
//! the image directory instead (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)`
//! with a throwaway user namespace holding the config's mappings): through it the host's root
//! owns nothing and the container's root owns the images, read-only for nobody else. The
//! images on disk are not changed; the detached mount goes away with its last fd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use ferry_engine::container::TreeImages;
use ferry_engine::userns::{IdMap, UserNs};
use serde_json::Value;

use super::cr_error::CrError;
use super::cr_inputs::BundleConfig;

fn maps(v: &Value, key: &str) -> Result<IdMap, String> {
    let mut m = Vec::new();
    for e in v[key].as_array().into_iter().flatten() {
        let n = |f: &str| {
            e[f].as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("linux.{key}: {f} missing or not a u32 in {e}"))
        };
        m.push(ferry_images::pb::UidGidExtent {
            first: n("containerID")?,
            lower_first: n("hostID")?,
            count: n("size")?,
        });
    }
    Ok(IdMap(m))
}

/// The user namespace a config makes: `None` without one; its mappings when it makes a fresh
/// one. Joining an existing one (`path`) is refused: its mappings are not the config's.
pub fn config_userns(spec: &Value) -> Result<Option<UserNs>, String> {
    let Some(ns) = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "user")
    else {
        return Ok(None);
    };
    if ns.get("path").is_some_and(|p| !p.is_null()) {
        return Err(
            "a config joining an existing user namespace (linux.namespaces user with a path)"
                .into(),
        );
    }
    let uid = maps(&spec["linux"], "uidMappings")?;
    let gid = maps(&spec["linux"], "gidMappings")?;
    if uid.0.is_empty() || gid.0.is_empty() {
        return Err("a user namespace without uidMappings and gidMappings".into());
    }
    Ok(Some(UserNs { uid, gid }))
}

/// Checks `config` (the bundle's) against the images: returns its user namespace's mappings
/// when it makes one.
pub fn check(config: &BundleConfig, images: &TreeImages) -> Result<Option<UserNs>, CrError> {
    let stage = format!("restore config from {}", config.path.display());
    let ns = config_userns(&config.spec).map_err(|what| CrError::NotSupported {
        stage: stage.clone(),
        what,
    })?;
    ferry_engine::userns::restore::check_config(images, ns.as_ref()).map_err(|e| {
        CrError::Refused {
            stage,
            message: e.to_string(),
        }
    })?;
    Ok(ns)
}

fn os_err(stage: &'static str, what: &str) -> impl FnOnce(std::io::Error) -> CrError {
    CrError::io(stage, what.to_string())
}

/// A throwaway user namespace with mappings `ns`: a child unshares it and waits while ferry
/// writes its maps and opens it; the child then exits (the fd keeps the namespace).
fn userns_fd(ns: &UserNs) -> Result<OwnedFd, CrError> {
    let stage = "make a user namespace for the idmapped image directory";
    let (r, w) = nix::unistd::pipe().map_err(|e| os_err(stage, "pipe")(e.into()))?;
    let (r2, w2) = nix::unistd::pipe().map_err(|e| os_err(stage, "pipe")(e.into()))?;
    // SAFETY: the child only calls async-signal-safe system calls (unshare, write, read,
    // _exit) before it exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err(stage, "fork")(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the forked child: raw system calls on its own fds, then _exit.
        unsafe {
            let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
            libc::write(w.as_raw_fd(), (&ok as *const u8).cast(), 1);
            // Our copy of the write end must go, or the read below never sees EOF.
            libc::close(w2.as_raw_fd());
            let mut b = 0u8;
            libc::read(r2.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(w);
    drop(r2);
    let result = (|| {
        let mut b = [0u8; 1];
        let n = nix::unistd::read(r.as_raw_fd(), &mut b)
            .map_err(|e| os_err(stage, "read")(e.into()))?;
        if n != 1 || b[0] != 1 {
            return Err(os_err(stage, "unshare(CLONE_NEWUSER)")(
                std::io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
        let text = |m: &IdMap| {
            m.0.iter()
                .map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count))
                .collect::<String>()
        };
        for (file, m) in [("uid_map", &ns.uid), ("gid_map", &ns.gid)] {
            let p = format!("/proc/{pid}/{file}");
            std::fs::write(&p, text(m)).map_err(os_err(stage, &p))?;
        }
        let p = format!("/proc/{pid}/ns/user");
        let f = std::fs::File::open(&p).map_err(os_err(stage, &p))?;
        Ok(OwnedFd::from(f))
    })();
    drop(w2);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const OPEN_TREE_CLONE: libc::c_uint = 1;

/// An fd of a detached, read-only clone of `images` idmapped through `ns` (see the module
/// docs), for the container's init.
pub fn idmapped_images(images: &Path, ns: &UserNs) -> Result<OwnedFd, CrError> {
    let stage = "idmap the image directory for the container's user namespace";
    let uns = userns_fd(ns)?;
    let c = std::ffi::CString::new(images.as_os_str().as_encoded_bytes())
        .map_err(|_| os_err(stage, "path")(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(os_err(stage, &format!("open_tree {}", images.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the fd was just returned to us.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: uns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached mount with an empty path and a live attr struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(os_err(
            stage,
            &format!(
                "mount_setattr(MOUNT_ATTR_IDMAP) of {} (its filesystem must support idmapped \
                 mounts)",
                images.display()
            ),
        )(std::io::Error::last_os_error()));
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mappings() {
        let mut spec = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(config_userns(&spec).unwrap(), None);
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        assert!(config_userns(&spec)
            .unwrap_err()
            .contains("without uidMappings"));
        let m = serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 1000}]);
        spec["linux"]["uidMappings"] = m.clone();
        spec["linux"]["gidMappings"] = m;
        let ns = config_userns(&spec).unwrap().unwrap();
        assert_eq!(ns.uid.outside(999), Some(200999));
        assert_eq!(ns.gid.outside(1000), None);
        spec["linux"]["namespaces"][1]["path"] = "/proc/1/ns/user".into();
        assert!(config_userns(&spec)
            .unwrap_err()
            .contains("existing user namespace"));
    }

    #[test]
    fn idmapped_clone_gives_the_images_to_the_mapped_root() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.img"), b"x").unwrap();
        let ns = UserNs {
            uid: IdMap::parse("0 300000 10").unwrap(),
            gid: IdMap::parse("0 300000 10").unwrap(),
        };
        let fd = idmapped_images(d.path(), &ns).unwrap();
        let p = format!("/proc/self/fd/{}/x.img", fd.as_raw_fd());
        let md = std::fs::metadata(&p).unwrap();
        // Seen from the host: the root-owned file belongs to the mapped root now.
        assert_eq!((md.uid(), md.gid()), (300000, 300000));
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        assert!(std::fs::write(&p, b"y").is_err(), "read-only");
        assert_eq!(std::fs::metadata(d.path().join("x.img")).unwrap().uid(), 0);
    }
}

//! Restore half: the images' user namespace, the check that a new mapping has a place for
//! every id the images hold, and the inside → host translation of what ferry fills from
//! outside the new namespace.

use std::collections::BTreeMap;

use ferry_images::{pb, ImageDir};

use crate::tree_images::TreeImages;

use super::{UserNs, UsernsError, NO_ID};

fn image_err(e: impl std::fmt::Display) -> UsernsError {
    UsernsError::NotSupported {
        what: format!("reading the images: {e}"),
    }
}

/// The images' user namespace: `Some((id, maps at the checkpoint))` when the tree's root had
/// one of its own (its `user_ns_id` differs from the dumper's, the inventory's `root_ids`).
pub fn image_userns(dir: &ImageDir) -> Result<Option<(u32, UserNs)>, UsernsError> {
    let root = crate::container::image_ns_ids(dir).map_err(image_err)?;
    let inv: pb::InventoryEntry = dir.read_one("inventory.img")?;
    userns_of(dir, &root, &inv)
}

/// [`image_userns`] of images already read.
pub fn tree_userns(images: &TreeImages) -> Result<Option<(u32, UserNs)>, UsernsError> {
    userns_of(&images.dir, &images.root_ids, &images.inventory)
}

fn userns_of(
    dir: &ImageDir,
    root: &pb::TaskKobjIdsEntry,
    inv: &pb::InventoryEntry,
) -> Result<Option<(u32, UserNs)>, UsernsError> {
    let dumper = inv.root_ids.as_ref().and_then(|r| r.user_ns_id);
    let Some(id) = root
        .user_ns_id
        .filter(|id| dumper.is_some_and(|d| d != *id))
    else {
        return Ok(None);
    };
    let name = super::image_name(id);
    if !dir.has(&name) {
        return Err(UsernsError::NotSupported {
            what: format!(
                "the tree's root has its own user namespace {id}, and {name} (its mappings) \
                 is missing"
            ),
        });
    }
    let e: pb::UsernsEntry = dir.read_one(&name)?;
    Ok(Some((id, UserNs::from_entry(&e))))
}

/// Every uid and gid the images hold that a restore sets or hands to the kernel, each with
/// the first place that holds it (for the error message).
#[derive(Debug, Default)]
pub struct ImageIds {
    /// uid -> holder.
    pub uids: BTreeMap<u32, String>,
    /// gid -> holder.
    pub gids: BTreeMap<u32, String>,
}

impl ImageIds {
    fn uid(&mut self, id: u32, holder: impl FnOnce() -> String) {
        if id != NO_ID {
            self.uids.entry(id).or_insert_with(holder);
        }
    }

    fn gid(&mut self, id: u32, holder: impl FnOnce() -> String) {
        if id != NO_ID {
            self.gids.entry(id).or_insert_with(holder);
        }
    }
}

/// Collects the ids of the tasks' credentials and groups, the IPC objects' owners and the
/// owners in the tmpfs archives a container restore extracts.
pub fn image_ids(images: &TreeImages) -> Result<ImageIds, UsernsError> {
    let (dir, root) = (&images.dir, &images.root_ids);
    let mut ids = ImageIds::default();
    for t in &images.tree {
        let tids = if t.threads.is_empty() {
            vec![t.pid]
        } else {
            t.threads.clone()
        };
        for tid in tids {
            let core: pb::CoreEntry = dir.read_one(&format!("core-{tid}.img"))?;
            let Some(c) = core.thread_core.and_then(|t| t.creds) else {
                continue;
            };
            let who = || format!("credentials of task {} thread {tid}", t.pid);
            for u in [c.uid, c.euid, c.suid, c.fsuid] {
                ids.uid(u, who);
            }
            for g in [c.gid, c.egid, c.sgid, c.fsgid] {
                ids.gid(g, who);
            }
            for g in c.groups {
                ids.gid(g, || {
                    format!("supplementary groups of task {} thread {tid}", t.pid)
                });
            }
        }
    }
    if let Some(ns) = root.ipc_ns_id {
        if dir.has(&crate::ipc::image_names(ns)[0]) {
            for d in crate::ipc::restore::descs(dir, ns).map_err(image_err)? {
                let who = || format!("SysV IPC object {} (key {:#x})", d.id, d.key);
                ids.uid(d.uid, who);
                ids.gid(d.gid, who);
            }
        }
    }
    if let Some(ns) = root.mnt_ns_id {
        if dir.has(&crate::mounts::image_name(ns)) {
            for (mp, name) in crate::container::tmpfs_to_refill(dir, ns).map_err(image_err)? {
                let data = dir.read(&name)?;
                let owners = crate::mounts::tmpfs::owners(&data)
                    .map_err(|e| image_err(format!("{name}: {e}")))?;
                for (u, g) in owners {
                    let who = || format!("a file in the tmpfs archive of {mp}");
                    ids.uid(u32::try_from(u).unwrap_or(NO_ID), who);
                    ids.gid(u32::try_from(g).unwrap_or(NO_ID), who);
                }
            }
        }
    }
    Ok(ids)
}

/// Checks that mapping `ns` (the new container's) has a place for every id in `ids`; the
/// error names the first id that has none, what holds it and the mapping.
pub fn check_ids(ids: &ImageIds, ns: &UserNs) -> Result<(), UsernsError> {
    for (kind, held, map) in [("uid", &ids.uids, &ns.uid), ("gid", &ids.gids, &ns.gid)] {
        if let Some((id, holder)) = held.iter().find(|(id, _)| map.outside(**id).is_none()) {
            return Err(UsernsError::Unmapped {
                what: format!(
                    "{kind} {id} ({holder}) has no place in the new container's {kind} mapping ({})",
                    map.describe()
                ),
            });
        }
    }
    Ok(())
}

/// The runtime's check before anything is made: images of a tree in its own user namespace
/// need a config that makes one (`config_ns`: its uidMappings/gidMappings, `None` when it
/// makes no user namespace), and every id the images hold must have a place in it.
pub fn check_config(images: &TreeImages, config_ns: Option<&UserNs>) -> Result<(), UsernsError> {
    match (tree_userns(images)?, config_ns) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(UsernsError::NotSupported {
            what: "the images' tree has its own user namespace; the config makes none (add \
                   {\"type\": \"user\"} to linux.namespaces, with uidMappings and gidMappings)"
                .into(),
        }),
        (_, Some(ns)) => check_ids(&image_ids(images)?, ns),
    }
}

/// The maps of the new container's init when it has a user namespace of its own.
pub fn of_init(pid: i32) -> Result<Option<UserNs>, UsernsError> {
    if !super::own(pid)? {
        return Ok(None);
    }
    UserNs::of_task(pid).map(Some)
}

fn unmapped(kind: &str, id: u32, holder: &str, ns: &UserNs) -> UsernsError {
    let map = if kind == "uid" { &ns.uid } else { &ns.gid };
    UsernsError::Unmapped {
        what: format!(
            "{kind} {id} ({holder}) has no place in the container's {kind} mapping ({})",
            map.describe()
        ),
    }
}

/// Makes the calling thread (only: raw system calls, not libc's process-wide wrappers) act as
/// the root of the container's user namespace, host ids `uid_out(0)`/`gid_out(0)`, with its
/// effective capabilities raised again: what the kernel grants only to a namespace's root
/// (writing a namespace's IPC sysctls, whose files belong to it) then works from outside, and
/// objects the thread creates have the inside root as their creator, as a restore from inside
/// would give them. A helper thread calls it and ends with it.
pub fn act_as_inside_root(ns: &UserNs) -> std::io::Result<()> {
    let (Some(uid), Some(gid)) = (ns.uid.outside(0), ns.gid.outside(0)) else {
        return Ok(());
    };
    let keep = u32::MAX as libc::c_long;
    let rc = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: setresgid/setresuid on integer arguments (-1 keeps an id); per-thread.
    rc(unsafe { libc::syscall(libc::SYS_setresgid, keep, gid as libc::c_long, keep) })?;
    // SAFETY: as above.
    rc(unsafe { libc::syscall(libc::SYS_setresuid, keep, uid as libc::c_long, keep) })?;
    // Leaving euid 0 cleared the effective set (the real and saved uid 0 keep the permitted).
    let hdr: [u32; 2] = [0x2008_0522, 0];
    let mut d = [0u32; 6];
    // SAFETY: capget with a v3 header and room for two data structs; then capset of them.
    unsafe {
        rc(libc::syscall(
            libc::SYS_capget,
            hdr.as_ptr(),
            d.as_mut_ptr(),
        ))?;
        d[0] = d[1];
        d[3] = d[4];
        rc(libc::syscall(libc::SYS_capset, hdr.as_ptr(), d.as_ptr()))
    }
}

/// An IPC object's owner, inside → host.
pub fn ipc_owner(d: &pb::IpcDescEntry, ns: &UserNs) -> Result<(u32, u32), UsernsError> {
    let holder = format!("SysV IPC object {}", d.id);
    let uid = ns
        .uid_out(d.uid)
        .ok_or_else(|| unmapped("uid", d.uid, &holder, ns))?;
    let gid = ns
        .gid_out(d.gid)
        .ok_or_else(|| unmapped("gid", d.gid, &holder, ns))?;
    Ok((uid, gid))
}

/// A tmpfs archive with its owners translated inside → host.
pub fn tar_out(data: &[u8], mountpoint: &str, ns: &UserNs) -> Result<Vec<u8>, UsernsError> {
    let holder = format!("a file in the tmpfs archive of {mountpoint}");
    let mut f = |u: u64, g: u64| -> std::io::Result<(u64, u64)> {
        let id = |x: u64| u32::try_from(x).unwrap_or(NO_ID);
        let hu = ns
            .uid_out(id(u))
            .ok_or_else(|| std::io::Error::other(unmapped("uid", id(u), &holder, ns)))?;
        let hg = ns
            .gid_out(id(g))
            .ok_or_else(|| std::io::Error::other(unmapped("gid", id(g), &holder, ns)))?;
        Ok((u64::from(hu), u64::from(hg)))
    };
    crate::mounts::tmpfs::map_owners(data, &mut f).map_err(|e| UsernsError::Unmapped {
        what: format!("tmpfs archive of {mountpoint}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userns::IdMap;

    #[test]
    fn a_mapping_too_small_names_the_id_and_its_holder() {
        let mut ids = ImageIds::default();
        ids.uid(0, || "credentials of task 1".into());
        ids.uid(1000, || "credentials of task 7 thread 7".into());
        ids.gid(1000, || "credentials of task 7 thread 7".into());
        ids.uid(NO_ID, || "never".into());
        let small = UserNs {
            uid: IdMap::parse("0 200000 1000").unwrap(),
            gid: IdMap::parse("0 200000 65536").unwrap(),
        };
        let e = check_ids(&ids, &small).unwrap_err().to_string();
        assert!(
            e.contains("uid 1000 (credentials of task 7 thread 7) has no place")
                && e.contains("0-999 -> 200000-200999"),
            "{e}"
        );
        let big = UserNs {
            uid: IdMap::parse("0 200000 65536").unwrap(),
            gid: IdMap::parse("0 200000 65536").unwrap(),
        };
        check_ids(&ids, &big).unwrap();
        let d = pb::IpcDescEntry {
            uid: 1000,
            gid: NO_ID,
            id: 3,
            ..Default::default()
        };
        assert_eq!(ipc_owner(&d, &big).unwrap(), (201000, NO_ID));
        assert!(ipc_owner(&d, &small).is_err());
    }
}

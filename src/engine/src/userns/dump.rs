//! Dump half: the root task's user namespace into `userns-ID.img`, and every id ferry read
//! from the host translated into the namespace (see the module above for why).

use ferry_images::{pb, ImageDir};

use super::{ns_ino, own, UserNs, UsernsError, NO_ID};
use crate::freeze::FrozenTree;

/// The tree's user namespace when its root has one of its own (`None`: ids are the host's and
/// stay as they are). Every live task must share it: a user namespace nested inside the
/// container would need its own maps and owner chain, which ferry does not dump.
pub fn collect(tree: &FrozenTree) -> Result<Option<UserNs>, UsernsError> {
    let Some(root) = tree.tasks.first().map(|t| t.ids.pid) else {
        return Ok(None);
    };
    if !own(root)? {
        return Ok(None);
    }
    let ino = ns_ino(root)?;
    for t in tree.tasks.iter().filter(|t| t.zombie.is_none()) {
        let pid = t.ids.pid;
        if ns_ino(pid)? != ino {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Err(UsernsError::NotSupported {
                what: format!(
                    "task {pid} ({}) is in a user namespace nested inside the one of the tree's \
                     root {root}; nested user namespaces are not dumped",
                    comm.trim()
                ),
            });
        }
    }
    UserNs::of_task(root).map(Some)
}

/// Writes `userns-ID.img`.
pub fn write(dir: &ImageDir, id: u32, ns: &UserNs) -> Result<(), UsernsError> {
    dir.write_entries(&super::image_name(id), &[ns.entry()])?;
    Ok(())
}

/// A task's credentials as seen inside: every uid, gid and group must have a mapping (a task
/// inside a user namespace always has; one that joined it from outside may not).
pub fn translate_creds(pid: i32, c: &mut pb::CredsEntry, ns: &UserNs) -> Result<(), UsernsError> {
    let bad = |kind: &str, id: u32| UsernsError::Unmapped {
        what: format!(
            "task {pid}: {kind} {id} has no mapping in the tree's user namespace \
             (uid_map {}, gid_map {})",
            ns.uid.describe(),
            ns.gid.describe()
        ),
    };
    for u in [&mut c.uid, &mut c.euid, &mut c.suid, &mut c.fsuid] {
        *u = ns.uid.inside(*u).ok_or_else(|| bad("uid", *u))?;
    }
    for g in [&mut c.gid, &mut c.egid, &mut c.sgid, &mut c.fsgid] {
        *g = ns.gid.inside(*g).ok_or_else(|| bad("gid", *g))?;
    }
    for g in c.groups.iter_mut() {
        *g = ns
            .gid
            .inside(*g)
            .ok_or_else(|| bad("supplementary group", *g))?;
    }
    Ok(())
}

/// Every thread's credentials of one task (`core-TID.img`), translated.
pub fn translate_cores(
    pid: i32,
    cores: &mut [(i32, pb::CoreEntry)],
    ns: &UserNs,
) -> Result<(), UsernsError> {
    for (_, core) in cores.iter_mut() {
        if let Some(c) = core.thread_core.as_mut().and_then(|t| t.creds.as_mut()) {
            translate_creds(pid, c, ns)?;
        }
    }
    Ok(())
}

/// File owners of the file table (unlinked files, memfds, bound unix socket files, terminals)
/// as seen inside; an owner without mapping becomes [`NO_ID`].
pub fn translate_files(t: &mut crate::files::dump::FileTable, ns: &UserNs) {
    for g in t.ghosts.iter_mut() {
        g.entry.uid = ns.uid_in(g.entry.uid);
        g.entry.gid = ns.gid_in(g.entry.gid);
    }
    for m in t.memfds.iter_mut() {
        m.entry.uid = ns.uid_in(m.entry.uid);
        m.entry.gid = ns.gid_in(m.entry.gid);
    }
    for e in t.entries.iter_mut() {
        if let Some(p) = e.usk.as_mut().and_then(|u| u.file_perms.as_mut()) {
            p.uid = ns.uid_in(p.uid);
            p.gid = ns.gid_in(p.gid);
        }
    }
    for i in t.ttys.iter_mut() {
        if let Some(u) = i.uid.as_mut() {
            *u = ns.uid_in(*u);
        }
        if let Some(g) = i.gid.as_mut() {
            *g = ns.gid_in(*g);
        }
    }
}

/// An IPC object's owner and creator as seen inside.
pub fn translate_ipc(d: &mut pb::IpcDescEntry, ns: &UserNs) {
    d.uid = ns.uid_in(d.uid);
    d.cuid = ns.uid_in(d.cuid);
    d.gid = ns.gid_in(d.gid);
    d.cgid = ns.gid_in(d.cgid);
}

/// A tmpfs archive owner as seen inside (tar's numeric owner).
pub fn tar_owner(uid: u64, gid: u64, ns: &UserNs) -> (u64, u64) {
    let t = |id: u64, f: &dyn Fn(u32) -> u32| match u32::try_from(id) {
        Ok(id) => u64::from(f(id)),
        Err(_) => u64::from(NO_ID),
    };
    (t(uid, &|u| ns.uid_in(u)), t(gid, &|g| ns.gid_in(g)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userns::IdMap;

    #[test]
    fn creds_inside_and_unmapped_ids_refused() {
        let ns = UserNs {
            uid: IdMap::parse("0 100000 65536").unwrap(),
            gid: IdMap::parse("0 200000 65536").unwrap(),
        };
        let mut c = pb::CredsEntry {
            uid: 101000,
            euid: 101000,
            suid: 100000,
            fsuid: 101000,
            gid: 201000,
            egid: 201000,
            sgid: 201000,
            fsgid: 201000,
            groups: vec![201001, 200010],
            ..Default::default()
        };
        translate_creds(7, &mut c, &ns).unwrap();
        assert_eq!((c.uid, c.euid, c.suid, c.fsuid), (1000, 1000, 0, 1000));
        assert_eq!((c.gid, c.fsgid), (1000, 1000));
        assert_eq!(c.groups, [1001, 10]);
        let mut c = pb::CredsEntry {
            uid: 5,
            ..Default::default()
        };
        let e = translate_creds(7, &mut c, &ns).unwrap_err().to_string();
        assert!(e.contains("task 7: uid 5 has no mapping"), "{e}");
        let mut d = pb::IpcDescEntry {
            uid: 100001,
            gid: 0,
            cuid: 100000,
            cgid: 200002,
            ..Default::default()
        };
        translate_ipc(&mut d, &ns);
        assert_eq!((d.uid, d.gid, d.cuid, d.cgid), (1, NO_ID, 0, 2));
        assert_eq!(
            tar_owner(100007, 0, &ns),
            (7, u64::from(NO_ID)),
            "a host root owner is unmapped inside"
        );
    }
}

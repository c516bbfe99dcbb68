//! Cgroup root remap (CRIU's `--cgroup-root`): restoring into cgroups other than the ones the
//! images were taken in.
//!
//! A container restored under a new id, from another bundle or on another host, gets its cgroups
//! from the new config (the runtime creates them and places the init there) — runc hands CRIU
//! those paths as `--cgroup-root CONTROLLER:PATH`. The images name the old ones, per hierarchy:
//! the root task's cgroup `O` in the cg sets, and the directory tree of `O` with its properties
//! in the controller entries. The remap rewrites, per hierarchy with a new root `N`, every set
//! member at or below `O` to the same place below `N`, and renames the saved directory of `O` to
//! `N` (its subtree moves with it; saved ancestors of `O` belong to the old host and are
//! dropped). A task of the image outside `O` has no place below `N`: that is an error, never a
//! silent move.

use std::collections::BTreeMap;

use ferry_images::pb;

use super::{norm, CgroupError};

/// New root cgroup per hierarchy, keyed by the normalised controller list (`cpu,cpuacct`,
/// `name=systemd`, `` for cgroup2). Paths are absolute within their hierarchy (`/a/b`, `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupRoots(BTreeMap<String, Root>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Root {
    path: String,
    /// The cgroup belongs to the runtime (a hierarchy it does not manage per container, where
    /// the init stayed in the runtime's own cgroup): nothing of the images is created or
    /// written there, whatever the mode, and every task of the images stays in it.
    shared: bool,
}

/// One hierarchy whose root moved, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remapped {
    /// Normalised controller list.
    pub hierarchy: String,
    /// The root task's cgroup in the images.
    pub from: String,
    /// Where it goes.
    pub to: String,
    /// Shared with the runtime: the images' cgroups of this hierarchy are not restored.
    pub shared: bool,
}

impl CgroupRoots {
    /// No remap.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the new root of hierarchy `controllers`.
    pub fn set(&mut self, controllers: &str, path: &str) {
        let path = clean(path);
        self.0.insert(
            norm(controllers),
            Root {
                path,
                shared: false,
            },
        );
    }

    /// Adds (or replaces) hierarchy `controllers` as shared with the runtime at `path`.
    pub fn set_shared(&mut self, controllers: &str, path: &str) {
        let path = clean(path);
        self.0
            .insert(norm(controllers), Root { path, shared: true });
    }

    /// The cgroups task `pid` is in now, one root per hierarchy: runc's choice of roots (it
    /// passes CRIU the cgroups it has just put the restoring process in).
    pub fn of_task(pid: i32) -> Result<Self, CgroupError> {
        let mut r = Self::default();
        for (ctl, path) in super::dump::task_cgroups(pid)? {
            r.set(&ctl, &path);
        }
        Ok(r)
    }

    /// [`Self::of_task`] for a container init `pid` made by runtime process `runtime`: where
    /// the init is still in the runtime's own cgroup (libcontainer manages the v1 controllers,
    /// not `name=systemd` nor the cgroup2 mount of a hybrid host) the hierarchy is shared.
    pub fn of_container(pid: i32, runtime: i32) -> Result<Self, CgroupError> {
        let own = Self::of_task(runtime)?;
        let mut r = Self::default();
        for (ctl, path) in super::dump::task_cgroups(pid)? {
            if own.get(&ctl).is_some_and(|o| o.path == clean(&path)) {
                r.set_shared(&ctl, &path);
            } else {
                r.set(&ctl, &path);
            }
        }
        Ok(r)
    }

    /// Whether no hierarchy has a new root.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, hierarchy: &str) -> Option<&Root> {
        self.0.get(&norm(hierarchy))
    }
}

/// `/a//b/` -> `/a/b`; empty -> `/`.
pub(super) fn clean(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// `path` relative to `base` (both clean) if it is `base` or below it: `""` or `"x/y"`.
fn below<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    if base == "/" {
        return Some(path.trim_start_matches('/'));
    }
    if path == base {
        return Some("");
    }
    path.strip_prefix(base)?.strip_prefix('/')
}

fn join(base: &str, rest: &str) -> String {
    clean(&format!("{base}/{rest}"))
}

/// A saved directory's path in its hierarchy (`dir_name` is relative to the parent; top-level
/// entries carry their whole path from the hierarchy root, as CRIU writes them).
fn dir_path(parent: &str, d: &pb::CgroupDirEntry) -> String {
    join(parent, &d.dir_name)
}

/// Finds the saved directory at `target` in `dirs` (whose parent is `parent`) and takes it out.
fn take_dir(
    dirs: &mut Vec<pb::CgroupDirEntry>,
    parent: &str,
    target: &str,
) -> Option<pb::CgroupDirEntry> {
    for i in 0..dirs.len() {
        let p = dir_path(parent, &dirs[i]);
        if p == target {
            return Some(dirs.remove(i));
        }
        if below(target, &p).is_some() {
            return take_dir(&mut dirs[i].children, &p, target);
        }
    }
    None
}

/// Rewrites `entry` so that the root task's cgroups (set `root_set`) become `roots`.
/// Hierarchies without a new root, or whose root is unchanged, are left alone.
pub fn remap(
    entry: &mut pb::CgroupEntry,
    root_set: u32,
    roots: &CgroupRoots,
) -> Result<Vec<Remapped>, CgroupError> {
    let Some(set) = entry.sets.iter().find(|s| s.id == root_set) else {
        return Err(CgroupError::Invalid {
            what: format!(
                "the root task is in cgroup set {root_set}, which {} does not hold",
                super::IMAGE
            ),
        });
    };
    let mut moves: Vec<Remapped> = Vec::new();
    for m in &set.ctls {
        let Some(to) = roots.get(&m.name) else {
            continue;
        };
        let from = clean(&m.path);
        if from != to.path || to.shared {
            moves.push(Remapped {
                hierarchy: norm(&m.name),
                from,
                to: to.path.clone(),
                shared: to.shared,
            });
        }
    }
    for mv in moves.iter().filter(|m| m.shared) {
        // Every task stays in the runtime's cgroup; no directory of the images is made or
        // written there (in full mode that would rewrite the runtime's own settings).
        for m in entry
            .sets
            .iter_mut()
            .flat_map(|s| s.ctls.iter_mut())
            .filter(|m| norm(&m.name) == mv.hierarchy)
        {
            m.path = mv.to.clone();
            m.cgns_prefix = None;
        }
        for c in entry
            .controllers
            .iter_mut()
            .filter(|c| norm(&c.cnames.join(",")) == mv.hierarchy)
        {
            c.dirs.clear();
        }
    }
    moves.retain(|m| m.shared || m.from != m.to);
    for mv in moves.iter().filter(|m| !m.shared) {
        for s in &mut entry.sets {
            for m in s.ctls.iter_mut().filter(|m| norm(&m.name) == mv.hierarchy) {
                let path = clean(&m.path);
                let Some(rest) = below(&path, &mv.from) else {
                    return Err(CgroupError::Unsupported {
                        stage: "restore",
                        what: format!(
                            "cgroup root remap of {:?}: set {} has cgroup {path}, outside the \
                             root task's {}; it has no place below the new root {}",
                            mv.hierarchy, s.id, mv.from, mv.to
                        ),
                    });
                };
                if m.cgns_prefix == Some(mv.from.len() as u32) {
                    // The cgroup namespace was rooted at the root task's cgroup: now at the new.
                    m.cgns_prefix = Some(if mv.to == "/" { 0 } else { mv.to.len() as u32 });
                }
                m.path = join(&mv.to, rest);
            }
        }
        for c in entry
            .controllers
            .iter_mut()
            .filter(|c| norm(&c.cnames.join(",")) == mv.hierarchy)
        {
            let old = std::mem::take(&mut c.dirs);
            let mut kept = Vec::new();
            let mut rest = old;
            // The directory of the old root itself, wherever it sits among the saved heads.
            if let Some(mut d) = take_dir(&mut rest, "/", &mv.from) {
                d.dir_name = mv.to.trim_start_matches('/').to_string();
                kept.push(d);
            }
            // Heads below the old root move with it; the others are the old host's.
            for mut d in rest {
                let p = dir_path("/", &d);
                if let Some(r) = below(&p, &mv.from) {
                    d.dir_name = join(&mv.to, r).trim_start_matches('/').to_string();
                    kept.push(d);
                }
            }
            c.dirs = kept;
        }
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str, children: Vec<pb::CgroupDirEntry>) -> pb::CgroupDirEntry {
        pb::CgroupDirEntry {
            dir_name: name.into(),
            children,
            properties: vec![pb::CgroupPropEntry {
                name: "pids.max".into(),
                value: "42".into(),
                perms: None,
            }],
            dir_perms: None,
        }
    }

    fn member(name: &str, path: &str) -> pb::CgMemberEntry {
        pb::CgMemberEntry {
            name: name.into(),
            path: path.into(),
            cgns_prefix: None,
        }
    }

    /// Like runc-busybox: the container at /ferry-busybox (memory deeper), a child task in a
    /// sub-cgroup, a named hierarchy at its root.
    fn image() -> pb::CgroupEntry {
        pb::CgroupEntry {
            sets: vec![
                pb::CgSetEntry {
                    id: 2,
                    ctls: vec![
                        member("pids", "/ferry-busybox"),
                        member("memory", "/process_api/abc/ferry-busybox"),
                        member("name=zdtmtst", "/"),
                    ],
                },
                pb::CgSetEntry {
                    id: 3,
                    ctls: vec![
                        member("pids", "/ferry-busybox/sub"),
                        member("memory", "/process_api/abc/ferry-busybox"),
                        member("name=zdtmtst", "/"),
                    ],
                },
            ],
            controllers: vec![
                pb::CgControllerEntry {
                    cnames: vec!["pids".into()],
                    dirs: vec![dir("ferry-busybox", vec![dir("sub", vec![])])],
                    is_threaded: None,
                },
                pb::CgControllerEntry {
                    cnames: vec!["memory".into()],
                    dirs: vec![dir("process_api/abc/ferry-busybox", vec![])],
                    is_threaded: None,
                },
            ],
        }
    }

    #[test]
    fn moves_sets_and_directories_to_the_new_roots() {
        let mut e = image();
        let mut roots = CgroupRoots::none();
        roots.set("pids", "/new/ct");
        roots.set("memory", "/:youki:ct");
        roots.set("name=zdtmtst", "/");
        let moved = remap(&mut e, 2, &roots).unwrap();
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert_eq!(e.sets[0].ctls[0].path, "/new/ct");
        assert_eq!(e.sets[1].ctls[0].path, "/new/ct/sub");
        assert_eq!(e.sets[0].ctls[1].path, "/:youki:ct");
        assert_eq!(e.sets[0].ctls[2].path, "/");
        let pids = &e.controllers[0].dirs;
        assert_eq!(pids.len(), 1);
        assert_eq!(pids[0].dir_name, "new/ct");
        assert_eq!(pids[0].children[0].dir_name, "sub");
        assert_eq!(pids[0].properties[0].value, "42");
        assert_eq!(e.controllers[1].dirs[0].dir_name, ":youki:ct");
    }

    #[test]
    fn a_new_root_at_the_hierarchy_root_is_the_unnamed_directory() {
        let mut e = image();
        let mut roots = CgroupRoots::none();
        roots.set("pids", "/");
        remap(&mut e, 2, &roots).unwrap();
        assert_eq!(e.sets[1].ctls[0].path, "/sub");
        assert_eq!(e.controllers[0].dirs[0].dir_name, "");
        assert_eq!(e.controllers[0].dirs[0].children[0].dir_name, "sub");
    }

    #[test]
    fn a_hierarchy_shared_with_the_runtime_gets_nothing_of_the_images() {
        let mut e = image();
        let mut roots = CgroupRoots::none();
        roots.set_shared("pids", "/user.slice/session-1.scope");
        let moved = remap(&mut e, 2, &roots).unwrap();
        assert_eq!(moved.len(), 1);
        assert!(moved[0].shared);
        assert_eq!(e.sets[0].ctls[0].path, "/user.slice/session-1.scope");
        assert_eq!(e.sets[1].ctls[0].path, "/user.slice/session-1.scope");
        assert!(
            e.controllers[0].dirs.is_empty(),
            "nothing to create or write"
        );
        // The same when the images were taken in that very cgroup.
        let mut e = image();
        let mut roots = CgroupRoots::none();
        roots.set_shared("pids", "/ferry-busybox");
        assert_eq!(remap(&mut e, 2, &roots).unwrap().len(), 1);
        assert!(e.controllers[0].dirs.is_empty());
    }

    #[test]
    fn of_container_marks_the_runtimes_own_cgroups_shared() {
        let me = std::process::id() as i32;
        let r = CgroupRoots::of_container(me, me).unwrap();
        assert!(!r.is_empty());
        assert!(r.0.values().all(|root| root.shared));
    }

    #[test]
    fn same_roots_change_nothing() {
        let mut e = image();
        let mut roots = CgroupRoots::none();
        roots.set("pids", "/ferry-busybox/");
        assert!(remap(&mut e, 2, &roots).unwrap().is_empty());
        assert_eq!(e, image());
    }

    #[test]
    fn a_saved_ancestor_of_the_root_is_dropped_but_the_root_kept() {
        let mut e = image();
        e.controllers[1].dirs = vec![dir(
            "process_api",
            vec![dir("abc", vec![dir("ferry-busybox", vec![])])],
        )];
        let mut roots = CgroupRoots::none();
        roots.set("memory", "/m");
        remap(&mut e, 2, &roots).unwrap();
        assert_eq!(e.controllers[1].dirs.len(), 1);
        assert_eq!(e.controllers[1].dirs[0].dir_name, "m");
        assert!(e.controllers[1].dirs[0].children.is_empty());
    }

    #[test]
    fn a_task_outside_the_root_cgroup_is_refused() {
        let mut e = image();
        e.sets[1].ctls[0].path = "/elsewhere".into();
        let mut roots = CgroupRoots::none();
        roots.set("pids", "/new");
        let err = remap(&mut e, 2, &roots).unwrap_err().to_string();
        assert!(
            err.contains("/elsewhere") && err.contains("/ferry-busybox"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_root_set_is_refused() {
        let err = remap(&mut image(), 9, &CgroupRoots::none())
            .unwrap_err()
            .to_string();
        assert!(err.contains("set 9"), "{err}");
    }

    #[test]
    fn of_task_reads_this_process() {
        let r = CgroupRoots::of_task(std::process::id() as i32).unwrap();
        assert!(!r.is_empty());
    }
}

//! Restore half of the cgroups.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ferry_images::{pb, ImageDir};

use super::remap::{clean, remap, CgroupRoots, Remapped};
use super::{hierarchies, norm, CgroupError, CgroupMode, Hierarchy, IMAGE};

const STAGE: &str = "restore";

/// What a cgroup restore created, for rollback.
#[derive(Debug, Default)]
pub struct CgroupRestore {
    /// Directories created, parents first.
    pub created: Vec<PathBuf>,
    /// Properties written (path, value).
    pub written: Vec<(PathBuf, String)>,
}

impl CgroupRestore {
    /// Removes the cgroups this restore created, deepest first. Tasks must have left them
    /// (killed or moved) before; the first error is returned after trying all.
    pub fn undo(self) -> Result<(), CgroupError> {
        let mut first = None;
        for d in self.created.iter().rev() {
            if let Err(source) = std::fs::remove_dir(d) {
                first.get_or_insert(CgroupError::Io {
                    stage: "undo",
                    op: "rmdir",
                    path: d.display().to_string(),
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        stage: STAGE,
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Properties restore never writes: freezer state (the caller thaws at the end), the root's
/// read-only `cgroup.type` of domain cgroups, and v2's freeze switch.
fn skipped(name: &str, value: &str) -> bool {
    matches!(
        name,
        "freezer.state" | "cgroup.freeze" | "cgroup.procs" | "tasks"
    ) || (name == "cgroup.type" && value == "domain")
        || (name == "cgroup.subtree_control" && value.is_empty())
}

fn write_prop(
    path: &Path,
    p: &pb::CgroupPropEntry,
    st: &mut CgroupRestore,
) -> Result<(), CgroupError> {
    if skipped(&p.name, &p.value) {
        return Ok(());
    }
    let f = path.join(&p.name);
    if p.name == "devices.list" {
        // The device list is rebuilt: deny all, then allow each dumped rule.
        let deny = path.join("devices.deny");
        std::fs::write(&deny, "a").map_err(io("write", &deny))?;
        let allow = path.join("devices.allow");
        for rule in p.value.lines().filter(|l| !l.is_empty()) {
            std::fs::write(&allow, rule).map_err(io("write", &allow))?;
        }
        st.written.push((f, p.value.clone()));
        return Ok(());
    }
    if p.name == "cgroup.subtree_control" {
        let v: Vec<String> = p
            .value
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        std::fs::write(&f, v.join(" ")).map_err(io("write", &f))?;
    } else {
        std::fs::write(&f, &p.value).map_err(io("write", &f))?;
    }
    st.written.push((f, p.value.clone()));
    Ok(())
}

fn restore_dir(
    mode: CgroupMode,
    base: &Path,
    d: &pb::CgroupDirEntry,
    st: &mut CgroupRestore,
) -> Result<(), CgroupError> {
    let path = if d.dir_name.is_empty() {
        base.to_path_buf()
    } else {
        base.join(&d.dir_name)
    };
    let is_root = d.dir_name.is_empty();
    let exists = path.is_dir();
    let mode_err = |what: &str| CgroupError::Mode {
        mode,
        path: path.display().to_string(),
        what: what.to_string(),
    };
    let created = match (mode, exists) {
        (_, true) if is_root => false,
        (CgroupMode::Strict, true) => {
            return Err(mode_err("already exists; strict mode wants to create it"))
        }
        (CgroupMode::Props | CgroupMode::None, false) => {
            return Err(mode_err(
                "does not exist and this mode does not create cgroups",
            ))
        }
        (_, true) => false,
        (_, false) => {
            // Create missing parents too, remembering each one for undo.
            let mut missing = Vec::new();
            let mut p = path.clone();
            while !p.is_dir() {
                missing.push(p.clone());
                if !p.pop() {
                    break;
                }
            }
            for m in missing.into_iter().rev() {
                std::fs::create_dir(&m).map_err(io("mkdir", &m))?;
                st.created.push(m);
            }
            if let Some(pp) = &d.dir_perms {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(pp.mode & 0o7777))
                    .map_err(io("chmod", &path))?;
                std::os::unix::fs::chown(&path, Some(pp.uid), Some(pp.gid))
                    .map_err(io("chown", &path))?;
            }
            true
        }
    };
    let write = !is_root
        && match mode {
            CgroupMode::Soft => created,
            CgroupMode::Full | CgroupMode::Strict | CgroupMode::Props => true,
            CgroupMode::None | CgroupMode::Ignore => false,
        };
    if write {
        for p in &d.properties {
            write_prop(&path, p, st)?;
        }
    }
    for c in &d.children {
        restore_dir(mode, &path, c, st)?;
    }
    Ok(())
}

fn find<'a>(hs: &'a [Hierarchy], name: &str) -> Option<&'a Hierarchy> {
    hs.iter().find(|h| norm(&h.name) == norm(name))
}

/// Restores `cgroup.img` per `mode` and moves each `(pid, set id)` of `placements` into its
/// set's cgroups. All or nothing: on error, created cgroups are removed again (tasks moved in
/// are moved back to the hierarchy roots first).
pub fn restore_cgroups(
    dir: &ImageDir,
    mode: CgroupMode,
    placements: &[(i32, u32)],
) -> Result<CgroupRestore, CgroupError> {
    restore_cgroups_at(dir, mode, placements, None).map(|(st, _)| st)
}

/// [`restore_cgroups`] with the root task (cg set `root.0`) moved to new cgroups `root.1`
/// (CRIU's `--cgroup-root`, see [`super::remap`]); returns what was moved too.
pub fn restore_cgroups_at(
    dir: &ImageDir,
    mode: CgroupMode,
    placements: &[(i32, u32)],
    root: Option<(u32, &CgroupRoots)>,
) -> Result<(CgroupRestore, Vec<Remapped>), CgroupError> {
    let mut st = CgroupRestore::default();
    if mode == CgroupMode::Ignore {
        return Ok((st, Vec::new()));
    }
    let mut e: pb::CgroupEntry = dir.read_one(IMAGE).map_err(|source| CgroupError::Image {
        stage: STAGE,
        source,
    })?;
    let moved = match root {
        Some((set, roots)) => remap(&mut e, set, roots)?,
        None => Vec::new(),
    };
    let sets: BTreeMap<u32, &pb::CgSetEntry> = e.sets.iter().map(|s| (s.id, s)).collect();
    for (pid, set) in placements {
        if !sets.contains_key(set) {
            return Err(CgroupError::Invalid {
                what: format!("task {pid} is in cgroup set {set}, which {IMAGE} does not hold"),
            });
        }
    }
    let hs = hierarchies()?;
    let r = (|| {
        for c in &e.controllers {
            let name = c.cnames.join(",");
            let Some(h) = find(&hs, &name) else {
                if c.dirs
                    .iter()
                    .all(|d| d.dir_name.is_empty() && d.children.is_empty())
                {
                    // A hierarchy absent here that held the tasks in its root only (CRIU
                    // images list such named hierarchies): nothing of the container is in it.
                    tracing::warn!(hierarchy = %name, "cgroup restore: hierarchy not mounted on this host; only its root was saved, skipped");
                    continue;
                }
                return Err(CgroupError::Unsupported {
                    stage: STAGE,
                    what: format!("hierarchy {name:?} from {IMAGE} is not mounted on this host"),
                });
            };
            for d in &c.dirs {
                restore_dir(mode, &h.mountpoint, d, &mut st)?;
            }
        }
        for (pid, set) in placements {
            // A migration costs the kernel an RCU grace period on cgroup v1 (~10 ms here):
            // a task the runtime already placed (the usual case after a root remap) stays put.
            let now = super::dump::task_cgroups(*pid)?;
            for m in &sets[set].ctls {
                let already = now
                    .iter()
                    .any(|(n, p)| norm(n) == norm(&m.name) && clean(p) == clean(&m.path));
                if already {
                    continue;
                }
                let Some(h) = find(&hs, &m.name) else {
                    if m.path == "/" {
                        // A named hierarchy absent here, with the task in its root: nothing to join.
                        tracing::warn!(pid, hierarchy = %m.name, "cgroup restore: hierarchy not mounted on this host; task stays out of it");
                        continue;
                    }
                    return Err(CgroupError::Unsupported {
                        stage: STAGE,
                        what: format!(
                            "task {pid}: hierarchy {:?} (path {}) is not mounted on this host",
                            m.name, m.path
                        ),
                    });
                };
                let procs = h
                    .mountpoint
                    .join(m.path.trim_start_matches('/'))
                    .join("cgroup.procs");
                std::fs::write(&procs, pid.to_string()).map_err(io("write task into", &procs))?;
            }
        }
        Ok(())
    })();
    if let Err(err) = r {
        for (pid, _) in placements {
            for h in &hs {
                let _ = std::fs::write(h.mountpoint.join("cgroup.procs"), pid.to_string());
            }
        }
        let _ = std::mem::take(&mut st).undo();
        return Err(err);
    }
    Ok((st, moved))
}

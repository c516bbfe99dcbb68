//! Dump half of the cgroups.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_images::{pb, ImageDir};

use super::{hierarchies, norm, props_for, CgroupError, CgroupMode, Hierarchy, IMAGE, V1_COMMON};

const STAGE: &str = "dump";

/// Result of a cgroup dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDump {
    /// Set id of each task (for `thread_core_entry.cg_set` / `inventory.root_cg_set`).
    pub sets: BTreeMap<i32, u32>,
    /// Whether `cgroup.img` was written (not in ignore mode).
    pub written: bool,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        stage: STAGE,
        op,
        path: path.display().to_string(),
        source,
    }
}

/// `/proc/PID/cgroup` as (controllers, path) pairs.
pub fn task_cgroups(pid: i32) -> Result<Vec<(String, String)>, CgroupError> {
    let p = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&p).map_err(io("read", Path::new(&p)))?;
    let mut v = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctl, path) = match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => {
                return Err(CgroupError::Unsupported {
                    stage: STAGE,
                    what: format!("{p}: malformed line {line:?}"),
                })
            }
        };
        v.push((ctl.to_string(), path.to_string()));
    }
    Ok(v)
}

fn perms(md: &std::fs::Metadata) -> pb::CgroupPerms {
    pb::CgroupPerms {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    }
}

fn dump_dir(h: &Hierarchy, rel: &str, name: String) -> Result<pb::CgroupDirEntry, CgroupError> {
    let path = h.mountpoint.join(rel.trim_start_matches('/'));
    let md = std::fs::metadata(&path).map_err(io("stat", &path))?;
    let mut props = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for c in h.name.split(',') {
        names.extend_from_slice(props_for(c));
    }
    if !h.name.is_empty() {
        names.extend_from_slice(V1_COMMON);
    }
    for p in names {
        let f = path.join(p);
        let Ok(md) = std::fs::metadata(&f) else {
            continue;
        };
        let value = std::fs::read_to_string(&f).map_err(io("read", &f))?;
        props.push(pb::CgroupPropEntry {
            name: p.to_string(),
            value: value.trim_end_matches('\n').to_string(),
            perms: Some(perms(&md)),
        });
    }
    let mut children = Vec::new();
    let mut subdirs: Vec<String> = Vec::new();
    // A task in a hierarchy's root: the rest of that tree is the host's, not the container's.
    let walk = rel != "/" && !rel.is_empty();
    for e in std::fs::read_dir(&path).map_err(io("list", &path))? {
        let e = e.map_err(io("list", &path))?;
        if walk && e.file_type().map_err(io("stat", &e.path()))?.is_dir() {
            subdirs.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    subdirs.sort();
    for s in subdirs {
        children.push(dump_dir(
            h,
            &format!("{}/{s}", rel.trim_end_matches('/')),
            s,
        )?);
    }
    Ok(pb::CgroupDirEntry {
        dir_name: name,
        children,
        properties: props,
        dir_perms: Some(perms(&md)),
    })
}

/// Dumps the cgroups of `pids` (the container's tasks) into `cgroup.img`.
///
/// Every cgroup a task is in is saved with its subtree and properties; hierarchies where all
/// tasks sit in the root are still listed in the sets (as CRIU does) but get no directories.
pub fn dump_cgroups(
    dir: &ImageDir,
    pids: &[i32],
    mode: CgroupMode,
) -> Result<CgroupDump, CgroupError> {
    if mode == CgroupMode::Ignore {
        return Ok(CgroupDump::default());
    }
    let hs = hierarchies()?;
    let mut sets: Vec<Vec<(String, String)>> = Vec::new();
    let mut out = CgroupDump {
        written: true,
        ..Default::default()
    };
    for &pid in pids {
        let mut cg = task_cgroups(pid)?;
        cg.sort();
        let id = match sets.iter().position(|s| *s == cg) {
            Some(i) => i,
            None => {
                sets.push(cg);
                sets.len() - 1
            }
        };
        out.sets.insert(pid, id as u32 + 1);
    }
    // Per hierarchy, the distinct cgroup paths in use.
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &sets {
        for (ctl, path) in s {
            let v = used.entry(norm(ctl)).or_default();
            if !v.contains(path) {
                v.push(path.clone());
            }
        }
    }
    let mut controllers = Vec::new();
    for (ctl, paths) in &used {
        let Some(h) = hs.iter().find(|h| norm(&h.name) == *ctl) else {
            return Err(CgroupError::Unsupported {
                stage: STAGE,
                what: format!(
                    "hierarchy {ctl:?} of a dumped task is not mounted in ferry's namespace"
                ),
            });
        };
        let mut dirs = Vec::new();
        for p in paths {
            // Drop a path nested in another one: its parent's subtree already holds it.
            if paths
                .iter()
                .any(|o| o != p && (o == "/" || p.starts_with(&format!("{o}/"))))
            {
                continue;
            }
            dirs.push(dump_dir(h, p, p.trim_start_matches('/').to_string())?);
        }
        controllers.push(pb::CgControllerEntry {
            cnames: ctl.split(',').map(str::to_string).collect(),
            dirs,
            is_threaded: None,
        });
    }
    let entry = pb::CgroupEntry {
        sets: sets
            .iter()
            .enumerate()
            .map(|(i, s)| pb::CgSetEntry {
                id: i as u32 + 1,
                ctls: s
                    .iter()
                    .map(|(n, p)| pb::CgMemberEntry {
                        name: n.clone(),
                        path: p.clone(),
                        cgns_prefix: None,
                    })
                    .collect(),
            })
            .collect(),
        controllers,
    };
    dir.write_entries(IMAGE, std::slice::from_ref(&entry))
        .map_err(|source| CgroupError::Image {
            stage: STAGE,
            source,
        })?;
    Ok(out)
}

//! The restored container's cgroups: made and limited from outside, joined by its init itself.
//!
//! Moving a task into a cgroup through `cgroup.procs` (or `tasks` with a pid) takes the kernel's
//! `cgroup_threadgroup_rwsem` for writing, and the first writer after a quiet spell waits for an
//! RCU grace period (`rcu_sync_enter`): about 7 ms on this machine, paid by every runc and
//! libcontainer container start. A task writing "0" to a cgroup v1 hierarchy's `tasks` moves
//! only itself and skips that lock (`cgroup_procs_write_start`: no pid, no thread group), so it
//! costs tens of microseconds. Hence the split: ferry creates the directories (with the cpuset
//! copied down from the parent, as the v1 kernel requires before any task may join) before the
//! init exists, and applies the config's resources while the init enters its namespaces; the init,
//! single-threaded right after its clone, writes "0" to every hierarchy's `tasks`. On cgroup v2 there is no such file for a
//! process: ferry moves the init through libcgroups (`cgroup.procs`), grace period included.
//!
//! The directories are libcgroups' own (its v1 controllers at its paths), so `delete` finds
//! and removes them like those of any container.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt,
};
use libcgroups::v1::ControllerType;
use oci_spec::runtime::Spec;

use super::cr_error::CrError;

/// The v1 controllers libcgroups manages (its `CONTROLLERS`, which it does not export).
const V1_CONTROLLERS: [ControllerType; 12] = [
    ControllerType::Cpu,
    ControllerType::CpuAcct,
    ControllerType::CpuSet,
    ControllerType::Devices,
    ControllerType::HugeTlb,
    ControllerType::Memory,
    ControllerType::Pids,
    ControllerType::PerfEvent,
    ControllerType::Blkio,
    ControllerType::NetworkPriority,
    ControllerType::NetworkClassifier,
    ControllerType::Freezer,
];

/// The container's cgroups, ready to be joined.
pub struct Cgroups {
    id: String,
    /// The config's cgroups path (libcontainer's default without one).
    path: PathBuf,
    /// libcgroups' manager, made once the init runs (see [`Cgroups::limit`]).
    manager: Option<AnyCgroupManager>,
    /// Each v1 hierarchy's `tasks` file in the container's cgroup (the init writes "0").
    v1_tasks: Vec<PathBuf>,
    /// cgroup v2 only: the container's cgroup directory, for `CLONE_INTO_CGROUP`.
    unified: Option<OwnedFd>,
}

fn cgroup_err(stage: impl Into<String>) -> impl FnOnce(String) -> CrError {
    let stage = stage.into();
    move |message| CrError::Cgroup { stage, message }
}

/// The v1 hierarchies' mount points by controller name, from one read of mountinfo (the first
/// mount of each, like libcgroups).
fn v1_mount_points() -> Result<Vec<(String, PathBuf)>, CrError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(CrError::io("read", path))?;
    let mounts = ferry_engine::mounts::info::parse(std::process::id() as i32, &text)
        .map_err(|e| CrError::io("parse", path)(std::io::Error::other(e.to_string())))?;
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        for opt in m.super_opts.split(',') {
            if !out.iter().any(|(c, _)| c == opt) {
                out.push((opt.to_string(), PathBuf::from(&m.mountpoint)));
            }
        }
    }
    Ok(out)
}

/// Where the cgroup2 hierarchy is on a cgroup v2 host (libcgroups' default root).
const V2_ROOT: &str = "/sys/fs/cgroup";

/// cgroup v2: makes `path` under `root` with every available controller enabled on the way
/// down (not in the leaf, which holds the tasks), as libcgroups' v2 manager does when it moves
/// a task in; returns the leaf open.
fn make_v2(root: &Path, path: &Path) -> Result<OwnedFd, CrError> {
    let list = root.join("cgroup.controllers");
    let controllers = std::fs::read_to_string(&list).map_err(CrError::io("read", &list))?;
    let enable: String = controllers
        .split_whitespace()
        .map(|c| format!("+{c} "))
        .collect();
    let mut cur = root.to_path_buf();
    let rel = path.strip_prefix("/").unwrap_or(path);
    for part in rel.components() {
        // Best effort, like libcgroups: a controller another cgroup holds busy stays off.
        let _ = std::fs::write(cur.join("cgroup.subtree_control"), enable.trim());
        cur.push(part);
        match std::fs::create_dir(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CrError::io("create cgroup", &cur)(e)),
        }
    }
    let dir = std::fs::File::open(&cur).map_err(CrError::io("open cgroup", &cur))?;
    Ok(OwnedFd::from(dir))
}

/// `path` joined under `base` even when absolute (libcgroups' join).
fn join_under(base: &Path, path: &Path) -> PathBuf {
    base.join(path.strip_prefix("/").unwrap_or(path))
}

/// v1: an empty `cpuset.cpus` or `cpuset.mems` on the way down from the hierarchy's root to
/// `dir` is copied from its parent (the kernel refuses tasks into an empty cpuset).
fn fill_cpuset(mount: &Path, dir: &Path) -> Result<(), CrError> {
    let rel = dir.strip_prefix(mount).unwrap_or(Path::new(""));
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mut cur = mount.to_path_buf();
        for part in rel.components() {
            let parent = cur.join(file);
            let value = std::fs::read_to_string(&parent).map_err(CrError::io("read", &parent))?;
            cur.push(part);
            let child = cur.join(file);
            let own = std::fs::read_to_string(&child).map_err(CrError::io("read", &child))?;
            if own.trim().is_empty() {
                std::fs::write(&child, value.trim()).map_err(CrError::io("write", &child))?;
            }
        }
    }
    Ok(())
}

impl Cgroups {
    /// Creates container `id`'s cgroup directories (v1) from `spec`, ready to be joined.
    pub fn prepare(spec: &Spec, id: &str) -> Result<Self, CrError> {
        let stage = format!("cgroups of container {id}");
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| CrError::unsupported(&stage, "a config without `linux`"))?;
        let path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id);
        let setup = libcgroups::common::get_cgroup_setup()
            .map_err(|e| cgroup_err(&stage)(e.to_string()))?;
        let mut unified = None;
        let mut v1_tasks = Vec::new();
        if matches!(setup, CgroupSetup::Unified) {
            unified = Some(make_v2(Path::new(V2_ROOT), &path)?);
        } else {
            let points = v1_mount_points()?;
            for ctrl in V1_CONTROLLERS {
                let name = ctrl.to_string();
                let Some((_, mount)) = points.iter().find(|(c, _)| *c == name) else {
                    continue;
                };
                let dir = join_under(mount, &path);
                std::fs::create_dir_all(&dir).map_err(CrError::io("create cgroup", &dir))?;
                if matches!(ctrl, ControllerType::CpuSet) {
                    fill_cpuset(mount, &dir)?;
                }
                let tasks = dir.join("tasks");
                // Co-mounted controllers (cpu,cpuacct) share one hierarchy: joined once.
                if !v1_tasks.contains(&tasks) {
                    v1_tasks.push(tasks);
                }
            }
        }
        Ok(Cgroups {
            id: id.to_string(),
            path,
            manager: None,
            v1_tasks,
            unified,
        })
    }

    fn manager(&mut self) -> Result<&AnyCgroupManager, String> {
        if self.manager.is_none() {
            let m = libcgroups::common::create_cgroup_manager(CgroupConfig {
                cgroup_path: self.path.clone(),
                systemd_cgroup: false,
                container_name: self.id.clone(),
            })
            .map_err(|e| e.to_string())?;
            self.manager = Some(m);
        }
        Ok(self.manager.as_ref().expect("just set"))
    }

    /// The `tasks` files the init joins by writing "0" (empty on cgroup v2).
    pub fn v1_tasks(&self) -> &[PathBuf] {
        &self.v1_tasks
    }

    /// cgroup v2: the container's cgroup, open, for the init's `CLONE_INTO_CGROUP`.
    pub fn v2_dir(&self) -> Option<RawFd> {
        self.unified.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Applies the config's resources, once the init exists and while it enters its namespaces
    /// (libcgroups' manager reads mountinfo once per controller: about 1 ms here); the init
    /// waits for them before it builds its rootfs, whose device nodes the devices cgroup must
    /// allow (libcgroups denies all, then allows the list).
    pub fn limit(&mut self, spec: &Spec) -> Result<(), CrError> {
        let stage = format!("cgroups of container {}", self.id);
        let manager = self.manager().map_err(cgroup_err(&stage))?;
        let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
            return Ok(());
        };
        let opt = ControllerOpt {
            resources,
            freezer_state: None,
            oom_score_adj: None,
            disable_oom_killer: false,
        };
        manager
            .apply(&opt)
            .map_err(|e| cgroup_err(&stage)(e.to_string()))
    }

    /// Removes the cgroups (after a failed build; their tasks must be gone).
    pub fn remove(&mut self) {
        let r = self
            .manager()
            .and_then(|m| m.remove().map_err(|e| e.to_string()));
        if let Err(e) = r {
            tracing::warn!("remove the cgroups of a failed restore of {}: {e}", self.id);
        }
    }
}

/// In the init: joins each v1 hierarchy's cgroup by writing "0" to its `tasks` (see the module
/// docs). Only this thread moves, which is the whole process here.
pub fn join_v1(tasks: &[PathBuf]) -> Result<(), String> {
    for t in tasks {
        std::fs::write(t, b"0").map_err(|e| format!("join cgroup {}: {e}", t.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_hosts_v1_hierarchies() {
        let points = v1_mount_points().unwrap();
        let v1 = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(" - cgroup ");
        assert_eq!(!points.is_empty(), v1, "{points:?}");
        for (c, p) in &points {
            assert!(p.is_absolute() && !c.is_empty(), "{c} at {p:?}");
        }
    }

    #[test]
    fn absolute_cgroup_paths_stay_under_the_mount() {
        let m = Path::new("/sys/fs/cgroup/pids");
        assert_eq!(
            join_under(m, Path::new("/a/b")),
            Path::new("/sys/fs/cgroup/pids/a/b")
        );
        assert_eq!(
            join_under(m, Path::new(":youki:x")),
            Path::new("/sys/fs/cgroup/pids/:youki:x")
        );
    }
}

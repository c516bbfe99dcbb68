//! cgroups: membership of every task and the settings of the container's cgroups.
//!
//! `/proc/PID/cgroup` lists, per hierarchy, the task's cgroup path (`ID:controllers:path`;
//! controllers empty for cgroup2). Dump groups tasks with identical memberships into CRIU
//! `cg_set_entry`s, and for every hierarchy it records each cgroup a task is in, plus all
//! cgroups below it, with the controller settings CRIU keeps (`cpu.shares`, `pids.max`,
//! `memory.limit_in_bytes`, `devices.list`, ...) and file modes/owners, in `cgroup.img`.
//!
//! Restore follows `--manage-cgroups-mode` as CRIU documents it:
//! * `soft` (default): create missing cgroups; write properties only into cgroups it created;
//! * `full`: create missing cgroups; write properties everywhere;
//! * `strict`: every cgroup must be absent; create it and write properties;
//! * `props`: cgroups must exist; write properties;
//! * `none`: cgroups must exist; write nothing;
//! * `ignore`: neither dump nor restore cgroups at all.
//!
//! Then every restored task is moved by writing its pid to `cgroup.procs` of each
//! hierarchy. A restore into other cgroups than the dumped ones (new container id or config)
//! first moves the image's root cgroups to the new ones (`remap`, CRIU's `--cgroup-root`). Hierarchies are found in ferry's own `/proc/self/mountinfo` (cgroup v1
//! controllers plus cgroup2, here at /sys/fs/cgroup/unified).

pub mod dump;
pub mod remap;
pub mod restore;

use std::path::PathBuf;

pub use dump::{dump_cgroups, CgroupDump};
pub use remap::{CgroupRoots, Remapped};
pub use restore::{restore_cgroups, restore_cgroups_at, CgroupRestore};

/// The image name.
pub const IMAGE: &str = "cgroup.img";

/// `--manage-cgroups-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// Create missing cgroups; set properties of created ones only.
    #[default]
    Soft,
    /// Create missing cgroups; set all properties.
    Full,
    /// Require all cgroups absent; create them and set properties.
    Strict,
    /// Require all cgroups present; set properties.
    Props,
    /// Require all cgroups present; set nothing.
    None,
    /// Do not dump or restore cgroups.
    Ignore,
}

impl std::str::FromStr for CgroupMode {
    type Err = CgroupError;
    fn from_str(s: &str) -> Result<Self, CgroupError> {
        Ok(match s {
            "soft" => CgroupMode::Soft,
            "full" => CgroupMode::Full,
            "strict" => CgroupMode::Strict,
            "props" => CgroupMode::Props,
            "none" => CgroupMode::None,
            "ignore" => CgroupMode::Ignore,
            o => return Err(CgroupError::BadMode(o.to_string())),
        })
    }
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Controller names as `/proc/PID/cgroup` spells them (`cpu,cpuacct`, `name=systemd`, `` for v2).
    pub name: String,
    /// Where it is mounted in ferry's namespace.
    pub mountpoint: PathBuf,
}

/// The hierarchies mounted in ferry's mount namespace.
pub fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        stage: "discover",
        op: "read",
        path: path.into(),
        source,
    })?;
    let mut v: Vec<Hierarchy> = Vec::new();
    for m in crate::mounts::info::parse(0, &text).map_err(|e| CgroupError::Unsupported {
        stage: "discover",
        what: e.to_string(),
    })? {
        let name = match m.fstype.as_str() {
            "cgroup2" => String::new(),
            "cgroup" => {
                let mut c: Vec<&str> = m
                    .super_opts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "xattr" | "noprefix" | "cpuset_v2_mode")
                            && !o.starts_with("release_agent=")
                    })
                    .collect();
                c.sort();
                c.join(",")
            }
            _ => continue,
        };
        if m.root != "/" || v.iter().any(|h| h.name == name) {
            continue;
        }
        v.push(Hierarchy {
            name,
            mountpoint: m.mountpoint.into(),
        });
    }
    Ok(v)
}

/// Normalises a controller list (`cpuacct,cpu` and `cpu,cpuacct` are one hierarchy).
pub fn norm(name: &str) -> String {
    let mut c: Vec<&str> = name.split(',').collect();
    c.sort();
    c.join(",")
}

/// Properties kept per controller (CRIU's lists), in the order restore writes them.
pub fn props_for(controller: &str) -> &'static [&'static str] {
    match controller {
        "cpu" => &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.rt_period_us",
            "cpu.rt_runtime_us",
        ],
        "memory" => &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.soft_limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "memory.use_hierarchy",
        ],
        "cpuset" => &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.memory_migrate",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.mem_hardwall",
            "cpuset.memory_spread_page",
            "cpuset.memory_spread_slab",
            "cpuset.sched_load_balance",
            "cpuset.sched_relax_domain_level",
        ],
        "blkio" => &["blkio.weight"],
        "freezer" => &["freezer.state"],
        "net_cls" => &["net_cls.classid"],
        "net_prio" => &["net_prio.ifpriomap"],
        "pids" => &["pids.max"],
        "devices" => &["devices.list"],
        "" => &[
            "cgroup.subtree_control",
            "cgroup.max.descendants",
            "cgroup.max.depth",
            "cgroup.freeze",
            "cgroup.type",
            "cpu.weight",
            "cpu.max",
            "cpuset.cpus",
            "cpuset.mems",
            "io.weight",
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.max",
            "pids.max",
        ],
        _ => &[],
    }
}

/// Properties every v1 hierarchy has.
pub const V1_COMMON: &[&str] = &["cgroup.clone_children", "notify_on_release"];

/// Errors of the cgroups module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// File I/O on a cgroup path.
    #[error("cgroups {stage}: {op} {path}: {source}")]
    Io {
        /// Stage.
        stage: &'static str,
        /// Operation.
        op: &'static str,
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Image I/O.
    #[error("cgroups {stage}: image {IMAGE}: {source}")]
    Image {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: ferry_images::dir::DirError,
    },
    /// A mode rule was broken (strict: exists; none/props: missing).
    #[error("cgroups restore ({mode:?} mode): {path}: {what}")]
    Mode {
        /// Mode.
        mode: CgroupMode,
        /// Path.
        path: String,
        /// What.
        what: String,
    },
    /// Not supported on this host.
    #[error("cgroups {stage}: unsupported: {what}")]
    Unsupported {
        /// Stage.
        stage: &'static str,
        /// What.
        what: String,
    },
    /// A task or set the image does not know.
    #[error("cgroups restore: {what}")]
    Invalid {
        /// What.
        what: String,
    },
    /// An unknown mode name.
    #[error("unknown --manage-cgroups-mode {0:?} (soft, full, strict, props, none, ignore)")]
    BadMode(String),
}

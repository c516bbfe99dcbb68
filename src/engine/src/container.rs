//! Container-level checkpoint and restore: orders the container's resource stages around the
//! process-tree dump and restore. It only orders stages; every resource lives in its own module.
//!
//! Kernel mechanism. A container is a process tree whose root is PID 1 of its own pid namespace,
//! plus namespaces (uts, ipc, mnt, net) and cgroups that outlive no task: they die with the last
//! task. So every resource is dumped while the tree is still alive, frozen by the cgroup freezer
//! (the tree cannot change its hostname, IPC objects, mounts or links meanwhile), and only then
//! is the tree itself dumped and, unless `leave_running`, killed by the engine once its images
//! are safe. The network lock (an nftables table in the container's netns) holds connections
//! still for the whole dump.
//!
//! Restore is split the other way round: the caller (the runtime) creates fresh namespaces,
//! rootfs, mounts and cgroups for a new init that waits; [`restore_resources`] fills those
//! namespaces from the images from outside (hostname, IPC objects, links, tmpfs contents,
//! cgroups), and the init then restores the tree in place (`pidns::inplace`).
//!
//! A cgroup namespace needs nothing of its own (the runtime unshares it with the new init
//! already in the container's cgroup). A time namespace's clocks as seen inside are dumped
//! (`timens-ID.img`) and given back as the new namespace's offsets ([`time_offsets`]). A user
//! namespace's mappings are dumped (`userns-ID.img`) and every id of the images is stored as
//! seen inside it; the restore's new namespace, made by the runtime from the bundle's config,
//! may map them elsewhere: what ferry fills from outside is translated through the new
//! init's maps (`userns`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_images::{pb, ImageDir};

use crate::cgroups::{CgroupMode, CgroupRestore};
use crate::dump::{DumpOptions, DumpReport};
use crate::dump_log::DumpLog;
use crate::mounts::MountDumpOpts;
use crate::net::NetLock;
use crate::timens::dump_timens;
pub use crate::timens::{time_offsets, timens_image_name, TimeOffsets};
pub use crate::tree_images::TreeImages;

/// Errors of the container-level stages; each names its stage.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The process-tree dump.
    #[error(transparent)]
    Dump(#[from] crate::dump::DumpError),
    /// Hostname.
    #[error(transparent)]
    Uts(#[from] crate::uts::UtsError),
    /// SysV IPC.
    #[error(transparent)]
    Ipc(#[from] crate::ipc::IpcError),
    /// Mount tree.
    #[error(transparent)]
    Mounts(#[from] crate::mounts::MountError),
    /// cgroups.
    #[error(transparent)]
    Cgroups(#[from] crate::cgroups::CgroupError),
    /// Network and its lock.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// Image directory.
    #[error(transparent)]
    Dir(#[from] ferry_images::dir::DirError),
    /// User namespace.
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
    /// The caller's freezer failed.
    #[error("container {stage}: cgroup freezer: {message}")]
    Freezer {
        /// freeze or thaw
        stage: &'static str,
        /// the freezer's error
        message: String,
    },
    /// I/O on a path.
    #[error("container {stage}: {op} {path}: {source}")]
    Io {
        /// stage
        stage: &'static str,
        /// operation
        op: &'static str,
        /// path
        path: String,
        /// why
        source: std::io::Error,
    },
    /// A capability ferry does not have yet.
    #[error("container {stage}: not supported yet: {what}")]
    NotSupported {
        /// stage
        stage: &'static str,
        /// what is missing
        what: String,
    },
}

pub use crate::freeze::Freezer;

/// What to checkpoint and how.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Host pid of the container's init.
    pub pid: i32,
    /// Image directory (created).
    pub images_dir: PathBuf,
    /// dump.log and stats-dump (None: the image directory).
    pub work_dir: Option<PathBuf>,
    /// Keep the container running afterwards.
    pub leave_running: bool,
    /// The init's session is outside the container.
    pub shell_job: bool,
    /// External unix sockets allowed.
    pub ext_unix_sk: bool,
    /// File locks dumped instead of refused.
    pub file_locks: bool,
    /// Established TCP connections dumped (TCP repair) instead of refused.
    pub tcp_established: bool,
    /// Cgroup handling.
    pub cgroups: CgroupMode,
    /// External mounts: mountpoint (in the container) -> ext_key, runc's convention.
    pub external_mounts: BTreeMap<String, String>,
    /// Tag of the network lock's table (`ferry-TAG`).
    pub lock_tag: String,
}

/// Namespace ids of the container's root task, numbered as the tree dump numbers them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NsIds {
    /// uts namespace id, when the container has its own.
    pub uts: Option<u32>,
    /// ipc namespace id, when its own.
    pub ipc: Option<u32>,
    /// mount namespace id, when its own.
    pub mnt: Option<u32>,
    /// network namespace id, when its own.
    pub net: Option<u32>,
    /// time namespace id, when its own.
    pub time: Option<u32>,
    /// user namespace id, when its own.
    pub user: Option<u32>,
}

/// The inode of namespace file `path` (`/proc/PID/ns/NAME`), which names the namespace.
pub(crate) fn ns_inode(path: String, stage: &'static str) -> Result<u64, ContainerError> {
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| ContainerError::Io {
            stage,
            op: "stat",
            path,
            source,
        })
}

fn own_ns(pid: i32, name: &str) -> Result<bool, ContainerError> {
    let ino = |p| ns_inode(p, "namespaces");
    Ok(ino(format!("/proc/{pid}/ns/{name}"))? != ino(format!("/proc/self/ns/{name}"))?)
}

/// The namespace ids the tree dump will give the container's root: the dumper's own
/// namespaces are numbered first, then the root's (`dump_task::Ctx::ids`, as CRIU does).
pub fn ns_ids(pid: i32, images_dir: &Path) -> Result<NsIds, ContainerError> {
    let mut ctx = crate::dump_task::Ctx::new(images_dir.to_path_buf(), 0);
    ctx.ids(std::process::id() as i32)?;
    let ids = ctx.ids(pid)?;
    let pick = |name: &str, id: Option<u32>| -> Result<Option<u32>, ContainerError> {
        // No id: the kernel has no such namespace (time before 5.6), nothing to compare.
        Ok(match id {
            Some(id) if own_ns(pid, name)? => Some(id),
            _ => None,
        })
    };
    Ok(NsIds {
        uts: pick("uts", ids.uts_ns_id)?,
        ipc: pick("ipc", ids.ipc_ns_id)?,
        mnt: pick("mnt", ids.mnt_ns_id)?,
        net: pick("net", ids.net_ns_id)?,
        time: pick("time", ids.time_ns_id)?,
        user: pick("user", ids.user_ns_id)?,
    })
}

/// Checkpoints the container whose init is `opts.pid`: network lock → freeze → hostname, IPC,
/// mounts, network, cgroups → process tree seized while frozen, then thawed → tree dumped
/// (killed by the engine unless `leave_running`) → unlock. On error the container runs on as
/// before (unlocked; thawed, or frozen again if it was paused).
pub fn checkpoint(
    opts: &CheckpointOptions,
    freezer: &mut dyn Freezer,
    log: &mut DumpLog,
) -> Result<DumpReport, ContainerError> {
    let t = Instant::now();
    std::fs::create_dir_all(&opts.images_dir).map_err(|source| ContainerError::Io {
        stage: "prepare",
        op: "create",
        path: opts.images_dir.display().to_string(),
        source,
    })?;
    let dir = ImageDir::open(&opts.images_dir)?;
    let ids = ns_ids(opts.pid, &opts.images_dir)?;
    log.stage("container prepare", t, &format!("namespace ids {ids:?}"));

    let lock = match ids.net {
        Some(_) => {
            let t = Instant::now();
            let l = crate::net::lock_network(opts.pid, &opts.lock_tag)?;
            log.stage("network lock", t, &format!("table inet {}", l.table()));
            Some(l)
        }
        None => None,
    };
    let r = frozen_checkpoint(opts, &dir, ids, freezer, log);
    let t = Instant::now();
    let unlocked = lock.map(NetLock::unlock).transpose();
    if let Ok(Some(())) = unlocked {
        log.stage("network unlock", t, "lock table removed");
    }
    match (r, unlocked) {
        (Ok(report), Ok(_)) => Ok(report),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), Err(u)) => {
            // A cleanup error never hides the first error.
            log.error(&format!("network unlock after a failed checkpoint: {u}"));
            Err(e)
        }
        (Err(e), Ok(_)) => Err(e),
    }
}

fn dump_options(opts: &CheckpointOptions) -> DumpOptions {
    let mut d = DumpOptions::new(opts.pid, opts.images_dir.clone());
    d.leave_running = opts.leave_running;
    d.shell_job = opts.shell_job;
    d.work_dir = opts.work_dir.clone();
    d.ext_unix_sk = opts.ext_unix_sk;
    d.file_locks = opts.file_locks;
    d.tcp_established = opts.tcp_established;
    d
}

/// Freezes the container, dumps its namespaces' resources, then the tree, seized while still
/// frozen (`dump::dump_in_frozen_cgroup` thaws the cgroup once every task has an interrupt
/// queued). On error the freezer is put back in the state the container had.
fn frozen_checkpoint(
    opts: &CheckpointOptions,
    dir: &ImageDir,
    ids: NsIds,
    freezer: &mut dyn Freezer,
    log: &mut DumpLog,
) -> Result<DumpReport, ContainerError> {
    // Pages files are allocated while the container still runs: the frozen copy only fills them.
    let dump_opts = dump_options(opts);
    let reserve = crate::dump::reserve(&dump_opts, log);
    let t = Instant::now();
    freezer
        .freeze()
        .map_err(|message| ContainerError::Freezer {
            stage: "freeze",
            message,
        })?;
    log.stage("container freeze", t, "cgroup frozen");
    let r = dump_resources(opts, dir, ids, log).and_then(|()| {
        Ok(crate::dump::dump_in_frozen_cgroup(
            &dump_opts, log, freezer, reserve,
        )?)
    });
    if r.is_err() {
        let t = Instant::now();
        let back = if freezer.was_frozen() {
            freezer.freeze()
        } else {
            freezer.thaw()
        };
        match back {
            Ok(()) => log.stage("container freezer", t, "back in its state after the error"),
            // A cleanup error never hides the first error.
            Err(m) => log.error(&format!("cgroup freezer after a failed checkpoint: {m}")),
        }
    }
    r
}

fn dump_resources(
    opts: &CheckpointOptions,
    dir: &ImageDir,
    ids: NsIds,
    log: &mut DumpLog,
) -> Result<(), ContainerError> {
    let pid = opts.pid;
    // Owners ferry reads from the host (IPC objects, tmpfs files) are stored as seen inside
    // the container's user namespace; the tree dump writes its maps and the tasks' ids.
    let userns = match ids.user {
        Some(_) => Some(crate::userns::UserNs::of_task(pid)?),
        None => None,
    };
    let t = Instant::now();
    if let Some(id) = ids.uts {
        let st = crate::uts::dump_uts(pid, dir, id)?;
        log.stage("uts", t, &format!("hostname {:?}", st.nodename));
    }
    let t = Instant::now();
    if let Some(id) = ids.ipc {
        let s = crate::ipc::dump::dump_ipc_in(pid, dir, id, userns.as_ref())?;
        log.stage(
            "ipc",
            t,
            &format!(
                "{} shm, {} sem, {} msg",
                s.shm_ids.len(),
                s.sem_ids.len(),
                s.msg_ids.len()
            ),
        );
    }
    let t = Instant::now();
    if let Some(id) = ids.mnt {
        let m = MountDumpOpts {
            root: PathBuf::from("/"),
            external: opts.external_mounts.clone(),
            userns: userns.clone(),
        };
        let e = crate::mounts::dump_mounts(pid, dir, id, &m)?;
        log.stage("mounts", t, &format!("{} mounts", e.len()));
    }
    let t = Instant::now();
    if let Some(id) = ids.net {
        let links = crate::net::dump_net(pid, dir, id)?;
        log.stage("net", t, &format!("{} links", links.len()));
    }
    let t = Instant::now();
    if let Some(id) = ids.time {
        let e = dump_timens(pid, dir, id)?;
        log.stage(
            "time namespace",
            t,
            &format!(
                "monotonic {}.{:09}, boottime {}.{:09} inside",
                e.monotonic.tv_sec, e.monotonic.tv_nsec, e.boottime.tv_sec, e.boottime.tv_nsec
            ),
        );
    }
    let t = Instant::now();
    let cg = crate::cgroups::dump_cgroups(dir, &[pid], opts.cgroups)?;
    if let Some(set) = cg.sets.get(&pid).filter(|s| **s != 1) {
        // The tree dump writes cg_set 1 for every task (inventory root_cg_set 1).
        return Err(ContainerError::NotSupported {
            stage: "cgroups",
            what: format!("init in cgroup set {set} instead of 1"),
        });
    }
    log.stage("cgroups", t, &format!("mode {:?}", opts.cgroups));
    Ok(())
}

/// What to restore into the namespaces prepared for the container's new init.
#[derive(Debug, Clone)]
pub struct ResourceRestoreOptions {
    /// Host pid of the prepared (waiting) init.
    pub pid: i32,
    /// Cgroup handling.
    pub cgroups: CgroupMode,
    /// Tag of the network lock's table.
    pub lock_tag: String,
}

/// Resources restored, held until the tree runs.
#[derive(Debug, Default)]
pub struct RestoredResources {
    lock: Option<NetLock>,
    cgroups: Option<CgroupRestore>,
}

impl RestoredResources {
    /// The tree runs: lifts the network lock; created cgroups now belong to the container.
    pub fn finish(mut self, log: &mut crate::restore::Log) -> Result<(), ContainerError> {
        self.cgroups.take();
        if let Some(l) = self.lock.take() {
            let t = Instant::now();
            l.unlock()?;
            log.stage("container network unlock", t);
        }
        Ok(())
    }

    /// The restore failed and its tasks are gone: unlocks and removes created cgroups. Returns
    /// the first cleanup error.
    pub fn undo(mut self) -> Result<(), ContainerError> {
        let a = self.lock.take().map(NetLock::unlock).transpose();
        let b = self.cgroups.take().map(CgroupRestore::undo).transpose();
        a?;
        b?;
        Ok(())
    }
}

/// The root task's namespace ids as the images record them (`ids-PID.img` or `core.ids`).
pub fn image_ns_ids(dir: &ImageDir) -> Result<pb::TaskKobjIdsEntry, ContainerError> {
    let tree: Vec<pb::PstreeEntry> = dir.read_entries("pstree.img")?;
    crate::tree_images::root_ids(dir, &tree)
}

/// Fills the prepared namespaces of `opts.pid` from the images (`images`, read by the
/// runtime's checks): hostname, IPC objects, links (under the network lock), tmpfs contents,
/// cgroups. Anything done is undone on error.
pub fn restore_resources(
    opts: &ResourceRestoreOptions,
    images: &TreeImages,
    log: &mut crate::restore::Log,
) -> Result<RestoredResources, ContainerError> {
    let mut done = RestoredResources::default();
    match restore_into(opts, images, &mut done, log) {
        Ok(()) => Ok(done),
        Err(e) => {
            if let Err(u) = done.undo() {
                log.line(
                    0,
                    &format!("Error: undo after a failed resource restore: {u}"),
                );
            }
            Err(e)
        }
    }
}

fn restore_into(
    opts: &ResourceRestoreOptions,
    images: &TreeImages,
    done: &mut RestoredResources,
    log: &mut crate::restore::Log,
) -> Result<(), ContainerError> {
    let (dir, ids) = (&images.dir, &images.root_ids);
    let pid = opts.pid;
    // The new container's maps (the runtime made its user namespace from the bundle's
    // config): the images' ids inside go to host ids through them.
    let userns = crate::userns::restore::of_init(pid)?;
    if userns.is_none() && crate::userns::restore::tree_userns(images)?.is_some() {
        return Err(ContainerError::NotSupported {
            stage: "user namespace",
            what: format!(
                "the images' tree has its own user namespace and the new init {pid} has none"
            ),
        });
    }
    let t = Instant::now();
    if let Some(id) = ids
        .mnt_ns_id
        .filter(|id| dir.has(&crate::mounts::image_name(*id)))
    {
        // The runtime made the mount tree from the bundle's config: before anything is
        // changed, every mount of the images must be there.
        crate::mounts::check_tree_made(pid, dir, id)?;
        log.stage("container mount tree check", t);
    }
    let t = Instant::now();
    if let Some(id) = ids
        .net_ns_id
        .filter(|id| dir.has(&crate::net::image_names(*id)[0]))
    {
        done.lock = Some(crate::net::lock_network(pid, &opts.lock_tag)?);
        crate::net::restore_net(pid, dir, id, &Default::default())?;
        log.stage("container net (locked)", t);
    }
    let t = Instant::now();
    if let Some(id) = ids
        .uts_ns_id
        .filter(|id| dir.has(&crate::uts::image_name(*id)))
    {
        crate::uts::restore_uts(pid, dir, id)?;
        log.stage("container uts", t);
    }
    let t = Instant::now();
    if let Some(id) = ids
        .ipc_ns_id
        .filter(|id| dir.has(&crate::ipc::image_names(*id)[0]))
    {
        crate::ipc::restore::restore_ipc_in(pid, dir, id, userns.as_ref())?;
        log.stage("container ipc", t);
    }
    let t = Instant::now();
    if let Some(id) = ids
        .mnt_ns_id
        .filter(|id| dir.has(&crate::mounts::image_name(*id)))
    {
        let n = refill_tmpfs(pid, dir, id, userns.as_ref(), log)?;
        log.stage(&format!("container tmpfs contents ({n} mounts)"), t);
    }
    let t = Instant::now();
    if opts.cgroups != CgroupMode::Ignore && dir.has(crate::cgroups::IMAGE) {
        // runc's rule: the container's cgroups are the ones the runtime made from the new
        // config; the images' cgroups are moved there (CRIU's --cgroup-root).
        let roots = crate::cgroups::CgroupRoots::of_container(pid, std::process::id() as i32)?;
        let set = root_cg_set(dir)?;
        let (st, moved) = crate::cgroups::restore_cgroups_at(
            dir,
            opts.cgroups,
            &[(pid, set)],
            Some((set, &roots)),
        )?;
        done.cgroups = Some(st);
        for m in moved {
            let how = if m.shared {
                " (the runtime's own, not restored)"
            } else {
                ""
            };
            log.line(
                crate::log::INFO,
                &format!(
                    "cgroup root of {:?}: {} -> {}{how}",
                    m.hierarchy, m.from, m.to
                ),
            );
        }
        log.stage("container cgroups", t);
    }
    Ok(())
}

/// The cg set of the tree's root task: its core's `cg_set` (CRIU's inventory `root_cg_set` is
/// the set CRIU itself was in), else the inventory's (ferry writes both as 1).
fn root_cg_set(dir: &ImageDir) -> Result<u32, ContainerError> {
    let tree: Vec<pb::PstreeEntry> = dir.read_entries("pstree.img")?;
    if let Some(root) = tree.first() {
        let core: pb::CoreEntry = dir.read_one(&format!("core-{}.img", root.pid))?;
        if let Some(set) = core.thread_core.and_then(|t| t.cg_set) {
            return Ok(set);
        }
    }
    let inv: pb::InventoryEntry = dir.read_one("inventory.img")?;
    Ok(inv.root_cg_set.unwrap_or(1))
}

/// The tmpfs archives a container restore extracts, as (mountpoint, image name): the mount
/// tree itself comes from the runtime (the bundle's config); what the config cannot give back
/// is what the container wrote into its tmpfs mounts. `/dev` is left to the config's device
/// list (its archive holds the device nodes the runtime has just made), and read-only tmpfs
/// (masked directories) are empty by design.
pub fn tmpfs_to_refill(
    dir: &ImageDir,
    ns_id: u32,
) -> Result<Vec<(String, String)>, ContainerError> {
    let mounts: Vec<pb::MntEntry> = dir.read_entries(&crate::mounts::image_name(ns_id))?;
    let tmpfs = crate::mounts::fstype_code("tmpfs");
    Ok(mounts
        .iter()
        .filter(|m| m.fstype == tmpfs && m.root == "/")
        .filter(|m| m.ext_mount != Some(true) && m.mountpoint != "/" && m.mountpoint != "/dev")
        .filter(|m| m.flags & libc::MS_RDONLY as u32 == 0)
        .map(|m| {
            (
                m.mountpoint.clone(),
                crate::mounts::tmpfs_image_name(m.root_dev),
            )
        })
        .filter(|(_, name)| dir.has(name))
        .collect())
}

/// Extracts the archives of [`tmpfs_to_refill`] through `/proc/PID/root`, their owners
/// translated into host ids when the container has a user namespace.
fn refill_tmpfs(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
    userns: Option<&crate::userns::UserNs>,
    log: &mut crate::restore::Log,
) -> Result<usize, ContainerError> {
    let list = tmpfs_to_refill(dir, ns_id)?;
    for (mountpoint, name) in &list {
        let mut data = dir.read(name)?;
        if let Some(ns) = userns {
            data = crate::userns::restore::tar_out(&data, mountpoint, ns)?;
        }
        let mp = PathBuf::from(mountpoint);
        // Extracted from inside the container's mount namespace: the archive's paths are
        // resolved (and checked for escapes) against the container's tree, never the host's.
        let r = crate::uts::enter::in_namespaces(pid, &[crate::uts::enter::Ns::Mnt], || {
            // A tmpfs the container mounted belongs to its user namespace, which has no
            // place for the host's root: files are created as the namespace's root.
            if let Some(ns) = userns {
                crate::userns::restore::act_as_inside_root(ns).map_err(|source| {
                    ContainerError::Io {
                        stage: "tmpfs contents",
                        op: "act as the user namespace's root",
                        path: mp.display().to_string(),
                        source,
                    }
                })?;
            }
            if !is_tmpfs(&mp) {
                return Err(ContainerError::NotSupported {
                    stage: "tmpfs contents",
                    what: format!(
                        "tmpfs {} of the images is not a tmpfs mounted by the bundle's config",
                        mp.display()
                    ),
                });
            }
            crate::mounts::tmpfs::extract(&data, &mp).map_err(|source| ContainerError::Io {
                stage: "tmpfs contents",
                op: "extract",
                path: format!("{name} into {}", mp.display()),
                source,
            })
        })
        .map_err(|e| ContainerError::NotSupported {
            stage: "tmpfs contents",
            what: format!("entering the mount namespace of task {pid}: {e}"),
        })?;
        r?;
        log.line(2, &format!("tmpfs {mountpoint}: {name} extracted"));
    }
    Ok(list.len())
}

/// Whether `path` is the root of a tmpfs (in the calling thread's mount namespace).
fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        std::env::var_os("FERRY_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/criu-4.2")
            })
            .join("runc-busybox/images")
    }

    #[test]
    fn root_namespace_ids_of_runc_criu_images() {
        let dir = ImageDir::open(fixture()).expect("the runc-busybox fixture");
        let ids = image_ns_ids(&dir).unwrap();
        // CRIU 4.2 numbered runc's container namespaces after its own, as the fixture's
        // image names show: ipcns-var-11, utsns-12, mountpoints-13.
        assert_eq!(ids.ipc_ns_id, Some(11));
        assert_eq!(ids.uts_ns_id, Some(12));
        assert_eq!(ids.mnt_ns_id, Some(13));
        assert!(dir.has(&crate::uts::image_name(12)));
        assert!(dir.has(&crate::mounts::image_name(13)));
    }

    #[test]
    fn runc_criu_images_have_no_user_namespace_and_refill_shm() {
        let dir = ImageDir::open(fixture()).expect("the runc-busybox fixture");
        assert!(crate::userns::restore::image_userns(&dir)
            .unwrap()
            .is_none());
        let refill = tmpfs_to_refill(&dir, 13).unwrap();
        assert!(
            refill.iter().any(|(mp, _)| mp == "/dev/shm")
                && refill.iter().all(|(mp, _)| mp != "/dev"),
            "{refill:?}"
        );
        let ids = crate::userns::restore::image_ids(&TreeImages::read(dir).unwrap()).unwrap();
        assert!(ids.uids.contains_key(&0), "{ids:?}");
    }

    #[test]
    fn images_of_a_tree_in_its_own_user_namespace_carry_its_maps() {
        let d = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(d.path()).unwrap();
        let ids = |user: u32| pb::TaskKobjIdsEntry {
            pid_ns_id: Some(1),
            user_ns_id: Some(user),
            time_ns_id: Some(2),
            ..Default::default()
        };
        let inv = pb::InventoryEntry {
            img_version: 2,
            root_ids: Some(ids(3)),
            ..Default::default()
        };
        dir.write_entries("inventory.img", &[inv]).unwrap();
        let root = pb::PstreeEntry {
            pid: 1,
            ..Default::default()
        };
        dir.write_entries("pstree.img", &[root]).unwrap();
        dir.write_entries("ids-1.img", &[ids(3)]).unwrap();
        assert!(crate::userns::restore::image_userns(&dir)
            .unwrap()
            .is_none());
        dir.write_entries("ids-1.img", &[ids(4)]).unwrap();
        let e = crate::userns::restore::image_userns(&dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("userns-4.img (its mappings) is missing"), "{e}");
        let ns = crate::userns::UserNs {
            uid: crate::userns::IdMap::parse("0 100000 65536").unwrap(),
            gid: crate::userns::IdMap::parse("0 100000 65536").unwrap(),
        };
        crate::userns::dump::write(&dir, 4, &ns).unwrap();
        let (id, got) = crate::userns::restore::image_userns(&dir).unwrap().unwrap();
        assert_eq!((id, got), (4, ns.clone()));
        // The same from the images read once (a runtime's checks).
        let read = TreeImages::read(dir).unwrap();
        let (id, got) = crate::userns::restore::tree_userns(&read).unwrap().unwrap();
        assert_eq!((id, got), (4, ns));
    }

    #[test]
    fn own_namespaces_of_this_process_are_none() {
        let d = tempfile::tempdir().unwrap();
        let ids = ns_ids(std::process::id() as i32, d.path()).unwrap();
        assert!(ids.uts.is_none() && ids.ipc.is_none() && ids.mnt.is_none() && ids.net.is_none());
    }
}

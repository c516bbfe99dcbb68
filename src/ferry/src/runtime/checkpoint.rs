//! `ferry checkpoint`: runc's checks, then the engine's container checkpoint.
//!
//! Stages: refuse a container that is not running or paused (runc's message); refuse options
//! this build cannot honour and stdio it could not bring back, before anything is touched;
//! write descriptors.json; hand the container to `ferry_engine::container::checkpoint` (network
//! lock, cgroup freeze, namespaces, mounts, cgroups, process tree); then destroy the container
//! (every process killed, state and cgroups removed) unless `--leave-running`. On any error the
//! container is left as it was found, running or paused.

use std::collections::BTreeMap;

use libcontainer::container::{Container, ContainerStatus};

use super::cr_error::CrError;
use super::cr_freezer::CgroupFreezer;
use super::cr_opts::{CheckpointOpts, CommonOpts};
use super::cr_paths::CrPaths;
use super::{cr_mounts, cr_stdio, status_word, Ctx, Result};
use crate::cli::CheckpointArgs;

/// Runs `ferry checkpoint`.
pub(super) fn run(ctx: &Ctx, a: &CheckpointArgs) -> Result<()> {
    let opts = CheckpointOpts::try_from(a)?;
    let container = ctx.load(&opts.container_id)?;
    Ok(checkpoint(ctx, container, &opts)?)
}

/// Options of the engine this build cannot honour yet, named by their runc flag.
pub(super) fn refuse_unsupported(stage: &str, c: &CommonOpts) -> std::result::Result<(), CrError> {
    let mut flags = Vec::new();
    if c.pre_dump {
        flags.push("--pre-dump");
    }
    if c.parent_path.is_some() {
        flags.push("--parent-path");
    }
    if c.lazy_pages {
        flags.push("--lazy-pages");
    }
    if c.page_server.is_some() {
        flags.push("--page-server");
    }
    if c.status_fd.is_some() {
        flags.push("--status-fd");
    }
    if c.auto_dedup {
        flags.push("--auto-dedup");
    }
    if !c.empty_ns.is_empty() {
        flags.push("--empty-ns");
    }
    if flags.is_empty() {
        Ok(())
    } else {
        Err(CrError::unsupported(stage, flags.join(", ")))
    }
}

/// The engine's cgroup mode for runc's `--manage-cgroups-mode`.
pub(super) fn cgroup_mode(m: super::cr_opts::CgroupsMode) -> ferry_engine::cgroups::CgroupMode {
    use super::cr_opts::CgroupsMode as M;
    use ferry_engine::cgroups::CgroupMode as E;
    match m {
        M::Soft => E::Soft,
        M::Full => E::Full,
        M::Strict => E::Strict,
        M::Ignore => E::Ignore,
    }
}

fn checkpoint(
    ctx: &Ctx,
    mut container: Container,
    opts: &CheckpointOpts,
) -> std::result::Result<(), CrError> {
    let id = opts.container_id.as_str();
    let status = container.status();
    if !matches!(status, ContainerStatus::Running | ContainerStatus::Paused) {
        return Err(CrError::CannotCheckpoint(status_word(status)));
    }
    refuse_unsupported(&format!("checkpoint of container {id}"), &opts.common)?;
    let pid = container
        .pid()
        .ok_or_else(|| CrError::unsupported("checkpoint", format!("container {id} has no pid")))?
        .as_raw();
    let live = cr_stdio::read_init_stdio(pid)?;
    cr_stdio::check_checkpointable(pid, id, &live)?;
    let descs = cr_stdio::recorded(&ctx.container_dir(id)).unwrap_or(live);
    let paths = CrPaths::resolve(&opts.common)?;
    paths.create()?;
    cr_stdio::write(&paths.images, &descs)?;

    let spec = container.bundle().join("config.json");
    let external: BTreeMap<String, String> = cr_mounts::external_mounts(pid, &spec)?;
    let copts = ferry_engine::container::CheckpointOptions {
        pid,
        images_dir: paths.images.clone(),
        work_dir: Some(paths.work.clone()),
        leave_running: opts.common.leave_running,
        // The container's terminal (pty master outside the tree) is dumped as an external
        // terminal, which is what the engine's shell-job handling of ttys does.
        shell_job: opts.common.shell_job || cr_stdio::has_terminal(&descs),
        ext_unix_sk: opts.common.ext_unix_sk,
        file_locks: opts.common.file_locks,
        tcp_established: opts.common.tcp_established,
        cgroups: cgroup_mode(opts.common.manage_cgroups_mode),
        external_mounts: external,
        lock_tag: format!("ck-{pid}"),
    };
    let log_path = paths.work.join("dump.log");
    let log_file = std::fs::File::create(&log_path).map_err(CrError::io("create", &log_path))?;
    let mut log =
        ferry_engine::dump_log::DumpLog::new(Some(log_file), ferry_engine::log::INFO, false);

    let manager = ctx
        .cgroup_manager(&container)
        .map_err(|e| CrError::Cgroup {
            stage: format!("open cgroup of container {id}"),
            message: e.to_string(),
        })?;
    let mut freezer = CgroupFreezer::new(manager, status == ContainerStatus::Paused);
    let r = ferry_engine::container::checkpoint(&copts, &mut freezer, &mut log);
    log.sync();
    if let Err(source) = r {
        // The engine let the tree go and put the freezer back (a paused container was frozen
        // again before its tasks were detached); this only makes sure of the state. A cleanup
        // error never hides the first error.
        if let Err(e) = freezer.restore_state() {
            tracing::error!("put container {id} back in its state after a failed checkpoint: {e}");
        }
        return Err(CrError::Checkpoint {
            id: id.to_string(),
            source: Box::new(source),
        });
    }
    if opts.common.leave_running {
        return freezer.restore_state().map_err(|message| CrError::Cgroup {
            stage: format!("put container {id} back in its state after the checkpoint"),
            message,
        });
    }
    destroy(&mut container, &freezer, id)
}

/// After a checkpoint without `--leave-running`: the engine killed the tree once the images were
/// safe; anything else left in the container's cgroup (exec'd processes) is killed, then the
/// container is deleted as runc's `destroy` does (state directory, cgroups).
fn destroy(
    container: &mut Container,
    freezer: &CgroupFreezer,
    id: &str,
) -> std::result::Result<(), CrError> {
    if let Ok(pids) = freezer.pids() {
        for p in pids {
            // SAFETY: kill(2) with a pid from the container's own cgroup and SIGKILL.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    container.delete(true).map_err(|source| CrError::Container {
        stage: format!("remove container {id} after its checkpoint"),
        source: Box::new(source),
    })
}

//! `ferry kill`: a signal to init, or with `--all` to every process of the container's cgroup.
//! Signals go out with kill(2) directly (not libcontainer's kill, which marks the container
//! stopped whatever the signal), so any number, real-time signals included, works as in runc.

use libcgroups::common::{CgroupManager, FreezerState};
use libcontainer::container::ContainerStatus;

use super::{signal, Ctx, Error, Result};
use crate::cli::KillArgs;

/// Sends one raw signal; a vanished process is not an error.
fn send(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        return Ok(());
    }
    match nix::Error::last() {
        nix::Error::ESRCH => Ok(()),
        e => Err(Error::sys(format!("send signal {sig} to process {pid}"))(e)),
    }
}

/// Runs `ferry kill`.
pub(super) fn run(ctx: &Ctx, a: &KillArgs) -> Result<()> {
    let container = ctx.load(&a.container_id)?;
    let sig = signal::parse(&a.signal)?;
    let status = container.status();
    if a.all {
        let manager = ctx.cgroup_manager(&container)?;
        let pids = manager.get_all_pids().map_err(Error::cgroup(format!(
            "list processes of container {}",
            a.container_id
        )))?;
        for pid in pids {
            send(pid.as_raw(), sig)?;
        }
        if sig == libc::SIGKILL && status == ContainerStatus::Paused {
            // A frozen task only dies once thawed (cgroup v1 freezer).
            manager
                .freeze(FreezerState::Thawed)
                .map_err(Error::cgroup(format!(
                    "thaw container {} to kill it",
                    a.container_id
                )))?;
        }
        return Ok(());
    }
    match status {
        ContainerStatus::Created | ContainerStatus::Running | ContainerStatus::Paused => {}
        _ => return Err(Error::NotRunning),
    }
    let pid = container.pid().ok_or(Error::NotRunning)?;
    send(pid.as_raw(), sig)
}

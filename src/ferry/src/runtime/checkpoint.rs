//! `ferry checkpoint`: options are parsed and the container checked as runc does; the dump
//! engine itself arrives with a later issue, so the verb then fails clearly.

use libcontainer::container::ContainerStatus;

use super::cr_opts::CheckpointOpts;
use super::{Ctx, Error, Result};
use crate::cli::CheckpointArgs;

/// Runs `ferry checkpoint`.
pub(super) fn run(ctx: &Ctx, a: &CheckpointArgs) -> Result<()> {
    let opts = CheckpointOpts::try_from(a)?;
    let container = ctx.load(&opts.container_id)?;
    match container.status() {
        ContainerStatus::Running | ContainerStatus::Paused => {}
        _ => return Err(Error::NotRunning),
    }
    tracing::debug!(?opts, "checkpoint requested");
    Err(Error::NotImplemented("checkpoint/restore"))
}

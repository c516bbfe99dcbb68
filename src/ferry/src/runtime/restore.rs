//! `ferry restore`: options are parsed and the id checked as runc does (restoring onto a live
//! container is refused); the restore engine arrives with a later issue.

use libcontainer::container::ContainerStatus;

use super::cr_opts::RestoreOpts;
use super::{validate_id, Ctx, Error, Result};
use crate::cli::RestoreArgs;

/// Runs `ferry restore`; returns the exit code.
pub(super) fn run(ctx: &Ctx, a: &RestoreArgs) -> Result<i32> {
    let opts = RestoreOpts::try_from(a)?;
    validate_id(&opts.container_id)?;
    match ctx.load(&opts.container_id) {
        Ok(c) if c.status() != ContainerStatus::Stopped => {
            return Err(Error::RestoreRunning(opts.container_id.clone()))
        }
        Ok(_) | Err(Error::NotExist) => {}
        Err(e) => return Err(e),
    }
    tracing::debug!(?opts, "restore requested");
    Err(Error::NotImplemented("checkpoint/restore"))
}

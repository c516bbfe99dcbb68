//! `ferry resume`: thaw a paused container (cgroup freezer).

use libcontainer::container::ContainerStatus;

use super::{Ctx, Error, Result};

/// Runs `ferry resume`.
pub(super) fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let mut container = ctx.load(id)?;
    if container.status() != ContainerStatus::Paused {
        return Err(Error::NotPaused);
    }
    container
        .resume()
        .map_err(Error::container(format!("resume container {id}")))
}

//! `ferry pause`: freeze every process of the container (cgroup freezer).

use libcontainer::container::ContainerStatus;

use super::{Ctx, Error, Result};

/// Runs `ferry pause`.
pub(super) fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let mut container = ctx.load(id)?;
    if container.status() != ContainerStatus::Running {
        return Err(Error::NotRunning);
    }
    container
        .pause()
        .map_err(Error::container(format!("pause container {id}")))
}

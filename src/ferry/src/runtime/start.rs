//! `ferry start`: let a created container's init exec the user process.

use libcontainer::container::ContainerStatus;

use super::{status_word, Ctx, Error, Result};

/// Checks the status the way runc's `start` does.
pub(super) fn check(status: ContainerStatus) -> Result<()> {
    match status {
        ContainerStatus::Created => Ok(()),
        ContainerStatus::Running => Err(Error::StartRunning),
        ContainerStatus::Stopped => Err(Error::StartStopped),
        other => Err(Error::StartState(status_word(other).to_string())),
    }
}

/// Starts container `id`.
pub(super) fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let mut container = ctx.load(id)?;
    check(container.status())?;
    container
        .start()
        .map_err(Error::container(format!("start container {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_are_runcs() {
        assert!(check(ContainerStatus::Created).is_ok());
        assert_eq!(
            check(ContainerStatus::Running).unwrap_err().to_string(),
            "cannot start an already running container"
        );
        assert_eq!(
            check(ContainerStatus::Stopped).unwrap_err().to_string(),
            "cannot start a container that has stopped"
        );
        assert_eq!(
            check(ContainerStatus::Paused).unwrap_err().to_string(),
            "cannot start a container in the paused state"
        );
    }
}

//! `ferry delete`: remove a stopped (or created) container; `--force` kills a live one first.

use libcontainer::container::ContainerStatus;

use super::{status_word, Ctx, Error, Result};
use crate::cli::DeleteArgs;

/// What delete does in a given status: `Some(force)` = delete with that force flag.
pub(super) fn plan(id: &str, status: ContainerStatus, force: bool) -> Result<bool> {
    match status {
        ContainerStatus::Stopped => Ok(false),
        // runc and crun delete a created container without --force (its init never ran).
        ContainerStatus::Created => Ok(true),
        _ if force => Ok(true),
        other => Err(Error::DeleteNotStopped {
            id: id.to_string(),
            status: status_word(other).to_string(),
        }),
    }
}

/// Runs `ferry delete`.
pub(super) fn run(ctx: &Ctx, a: &DeleteArgs) -> Result<()> {
    let id = a.container_id.as_str();
    let mut container = match ctx.load(id) {
        Ok(c) => c,
        Err(Error::NotExist) => {
            // An aborted create can leave a directory without state.json (runc removes it too).
            let dir = ctx.container_dir(id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(Error::io("remove state directory", &dir))?;
            }
            super::bind_stage::clean_leftovers(&ctx.root, id);
            return if a.force {
                Ok(())
            } else {
                Err(Error::NotExist)
            };
        }
        Err(e) => return Err(e),
    };
    let force = plan(id, container.status(), a.force)?;
    container
        .delete(force)
        .map_err(Error::container(format!("delete container {id}")))?;
    // Bind sources a create killed midway left staged (bind_stage.rs).
    super::bind_stage::clean_leftovers(&ctx.root, id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_without_force_is_runcs_error() {
        let err = plan("c1", ContainerStatus::Running, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot delete container c1 that is not stopped: running"
        );
        let err = plan("c1", ContainerStatus::Paused, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot delete container c1 that is not stopped: paused"
        );
    }

    #[test]
    fn force_and_states() {
        assert!(!plan("c", ContainerStatus::Stopped, false).unwrap());
        assert!(plan("c", ContainerStatus::Created, false).unwrap());
        assert!(plan("c", ContainerStatus::Running, true).unwrap());
    }
}

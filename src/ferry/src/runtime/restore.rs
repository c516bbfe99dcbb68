//! `ferry restore`: runc's checks (restoring onto a live container is refused), then the
//! container is rebuilt from the bundle and its tree restored in place (`cr_restore`). Detached,
//! it returns once the tree runs; attached, it waits for the restored init like `run` and exits
//! with its code, then deletes the container.

use libcontainer::container::ContainerStatus;

use super::cr_opts::RestoreOpts;
use super::{cr_restore, create, foreground, validate_id, Ctx, Error, Result};
use crate::cli::RestoreArgs;

/// Runs `ferry restore`; returns the exit code.
pub(super) fn run(ctx: &Ctx, a: &RestoreArgs) -> Result<i32> {
    let opts = RestoreOpts::try_from(a)?;
    validate_id(&opts.container_id)?;
    let id = opts.container_id.as_str();
    match ctx.load(id) {
        Ok(c) if c.status() != ContainerStatus::Stopped => {
            return Err(Error::RestoreRunning(opts.container_id.clone()))
        }
        // runc: a stopped container of that id is in the way like any existing one.
        Ok(_) => return Err(Error::Exists),
        Err(Error::NotExist) => {}
        Err(e) => return Err(e),
    }
    create::check_globals(ctx)?;
    if !opts.detach && !opts.no_subreaper {
        // The restored tree's orphans come back to us to be reaped, as with `run`.
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes a flag of this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER failed");
        }
    }
    let restored = cr_restore::restore(ctx, &opts)?;
    if opts.detach {
        return Ok(0);
    }
    let code = foreground::wait(nix::unistd::Pid::from_raw(restored.pid), None);
    match ctx.load(id) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::error!("delete container {id} after it exited: {e}");
            }
        }
        Err(e) => tracing::error!("load container {id} to delete it: {e}"),
    }
    code
}

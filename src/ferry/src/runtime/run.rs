//! `ferry run`: create + start; attached, it waits for init and exits with its code, then
//! deletes the container unless `--keep`.

use super::console::{Bridge, Receiver};
use super::{create, foreground, Ctx, Error, Result};
use crate::cli::RunArgs;

/// Runs a container; returns ferry's exit code (the container's when attached).
pub(super) fn run(ctx: &Ctx, a: &RunArgs) -> Result<i32> {
    let id = a.create.container_id.as_str();
    // Attached with a terminal and no console socket: ferry takes the pty itself, like runc.
    let receiver = if !a.detach && a.create.console_socket.is_none() && terminal_requested(a)? {
        Some(Receiver::listen()?)
    } else {
        None
    };
    if !a.detach && !a.no_subreaper {
        // Orphans of the container's processes come back to us to be reaped, as with runc.
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes a flag of this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER failed");
        }
    }
    // libcontainer accepts a console socket only in "detached" mode; that flag only gates
    // this check, ferry itself stays attached.
    let mut container = create::build(
        ctx,
        &a.create,
        a.detach || receiver.is_some(),
        receiver.as_ref().map(|r| r.path().as_path()),
    )?;
    let master = match receiver {
        Some(r) => match r.master() {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = container.delete(true);
                return Err(e);
            }
        },
        None => None,
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(Error::Container {
            stage: format!("start container {id}"),
            source: e,
        });
    }
    if a.detach {
        return Ok(0);
    }
    let pid = container
        .pid()
        .ok_or_else(|| Error::Unsupported(format!("container {id} has no init pid after start")))?;
    // Signals are blocked (inside `wait`) only now: libcontainer's children inherit the signal
    // mask and do not reset it, so blocking earlier would leave the container deaf to SIGTERM.
    let bridge = master.map(Bridge::start).transpose()?;
    let code = foreground::wait(pid, bridge.as_ref().map(Bridge::master_fd));
    drop(bridge);
    if !a.keep {
        match ctx.load(id) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    tracing::error!("delete container {id} after it exited: {e}");
                }
            }
            Err(e) => tracing::error!("load container {id} to delete it: {e}"),
        }
    }
    code
}

/// Whether the bundle's process asks for a terminal.
fn terminal_requested(a: &RunArgs) -> Result<bool> {
    let bundle = match &a.create.bundle {
        Some(b) => b.clone(),
        None => std::path::PathBuf::from("."),
    };
    let path = bundle.join("config.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(false); // create reports the missing config with its own message
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(Error::json(format!("parse {}", path.display())))?;
    Ok(v.pointer("/process/terminal")
        .and_then(|t| t.as_bool())
        .unwrap_or(false))
}

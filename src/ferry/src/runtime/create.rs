//! `ferry create`: set up the container (namespaces, rootfs, cgroups) with its init blocked
//! until `start`, through libcontainer's init builder.

use super::executor::FerryExecutor;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::{absolute, validate_id, Ctx, Error, Result};
use crate::cli::CreateArgs;

/// Refuses global flags this build cannot honour, before anything is created.
pub(super) fn check_globals(ctx: &Ctx) -> Result<()> {
    if ctx.systemd_cgroup {
        return Err(Error::Unsupported(
            "systemd cgroup driver not supported: this ferry build manages cgroups through \
             cgroupfs only (drop --systemd-cgroup / use --cgroup-manager=cgroupfs)"
                .to_string(),
        ));
    }
    if ctx.rootless == "true" && !nix::unistd::geteuid().is_root() {
        return Err(Error::Unsupported(
            "rootless containers (--rootless true as a non-root user) are not supported by \
             this ferry build"
                .to_string(),
        ));
    }
    Ok(())
}

/// Builds (creates) the container; `detach` tells libcontainer whether a terminal must come
/// through a console socket; `console` overrides `--console-socket` (ferry's own listener).
pub(super) fn build(
    ctx: &Ctx,
    a: &CreateArgs,
    detach: bool,
    console: Option<&std::path::Path>,
) -> Result<Container> {
    check_globals(ctx)?;
    let id = a.container_id.as_str();
    validate_id(id)?;
    if ctx.container_dir(id).exists() {
        return Err(Error::Exists);
    }
    let bundle = match &a.bundle {
        Some(b) => absolute(b)?,
        None => std::env::current_dir().map_err(Error::io("read current directory", "."))?,
    };
    let config = bundle.join("config.json");
    if !config.exists() {
        return Err(Error::Io {
            stage: "read bundle config",
            path: config,
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    if a.pidfd_socket.is_some() {
        tracing::warn!("--pidfd-socket is accepted but no pidfd is sent by this build");
    }
    if a.no_new_keyring {
        tracing::debug!("--no-new-keyring: libcontainer creates no session keyring to skip");
    }
    ctx.ensure_root()?;
    super::drop_own_groups("create")?;
    // An explicit `noNewPrivileges: false` with seccomp, or staged bind sources: libcontainer
    // builds from a view of the config (see nnp.rs), and the state then names the caller's
    // bundle again.
    let mut config = super::nnp::read_config(&bundle)?;
    // Bind sources the container's mapped root could not reach, staged where it can (see
    // bind_stage.rs) until libcontainer has made the container's mounts.
    let staged = super::bind_stage::stage(&ctx.root, id, &mut config).map_err(Error::from)?;
    let view = super::nnp::view_of(&bundle, config, staged.is_some())?;
    let stage = format!("create container {id}");
    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(FerryExecutor::default())
        .with_pid_file(a.pid_file.as_ref())
        .map_err(Error::container(stage.clone()))?
        .with_console_socket(console.or(a.console_socket.as_deref()))
        .with_root_path(&ctx.root)
        .map_err(Error::container(stage.clone()))?
        .with_preserved_fds(a.preserve_fds)
        .validate_id()
        .map_err(Error::container(stage.clone()))?
        .as_init(view.as_ref().map_or(bundle.as_path(), |v| v.path()))
        .with_systemd(false)
        .with_detach(detach)
        .with_no_pivot(a.no_pivot)
        .build()
        .map_err(Error::container(stage))?;
    // The init has made its mounts (it waits for start now): its copies are its own.
    drop(staged);
    if view.is_some() {
        if let Err(e) = super::nnp::restore_bundle(&mut container, bundle) {
            let _ = container.delete(true);
            return Err(e);
        }
    }
    // The stdio the init was given, for a later checkpoint's descriptors.json.
    if let Some(pid) = container.pid() {
        if let Ok(d) = super::cr_stdio::read_init_stdio(pid.as_raw()) {
            super::cr_stdio::record(&ctx.container_dir(id), &d);
        }
    }
    Ok(container)
}

/// `ferry create`: like runc, create is always detached from the container's stdio.
pub(super) fn run(ctx: &Ctx, a: &CreateArgs) -> Result<()> {
    build(ctx, a, true, None).map(drop)
}

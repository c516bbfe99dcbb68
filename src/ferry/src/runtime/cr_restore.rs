//! `ferry restore`'s stages, all or nothing.
//!
//! 1. Checks before anything is made: options, the image directory (inventory and tree images,
//!    descriptors.json and whether its stdio can be reconnected), the bundle (a user namespace
//!    must have a place for every id of the images: `cr_userns`). Each file is read once
//!    (`cr_inputs`) and what was read is handed on to the later stages.
//! 2. The container is built by libcontainer from the bundle's config (adjusted by `cr_spec`):
//!    state directory, cgroups, namespaces, rootfs and mounts, with [`RestoreExecutor`] as its
//!    init, which waits for `start`.
//! 3. From outside, the engine fills the fresh namespaces (`container::restore_resources`:
//!    links under the network lock, hostname, IPC, tmpfs contents, cgroups).
//! 4. `start`: the init restores the tree in place and becomes its PID 1, while ferry, outside
//!    the container's pid namespace, finishes it over a socket pair (`pidns::inplace_finish`:
//!    ptrace by host pids, so nothing of ferry's is left in the container). Then the network is
//!    unlocked and the pid file written.
//!
//! Any failure deletes the container (its processes killed, cgroups and state directory
//! removed; its mounts and namespaces die with it) and undoes the resources.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use ferry_engine::container::TreeImages;

use super::checkpoint::{cgroup_mode, refuse_unsupported};
use super::cr_error::CrError;
use super::cr_inputs::{BundleConfig, Images};
use super::cr_opts::RestoreOpts;
use super::cr_paths::CrPaths;
use super::executor::RestoreExecutor;
use super::{cr_spec, cr_stdio, cr_userns, Ctx};

/// How long the tree may take to reach the restorer (the engine's default).
const TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// restore.log's verbosity: CRIU's -v3 (every stage with its time), for the init's stages and
/// the finisher's alike.
const RESTORE_LOG_LEVEL: u8 = ferry_engine::log::INFO;

/// What a successful restore leaves to the verb.
pub struct Restored {
    /// Host pid of its init.
    pub pid: i32,
}

fn open_dir(path: &Path) -> Result<OwnedFd, CrError> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| CrError::io("open image directory", path)(std::io::Error::from(e)))?;
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The status channel: (ferry's end, the init's end).
fn status_channel() -> Result<(OwnedFd, OwnedFd), CrError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| CrError::io("create the status socket pair", "socketpair")(e.into()))
}

/// A pidfd for the container's init, taken while it surely lives (it waits for `start`).
fn init_pidfd(container: &Container) -> Option<OwnedFd> {
    let pid = container.pid()?.as_raw();
    // SAFETY: pidfd_open with a pid and no flags; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd was just created for us.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// SIGKILLs the init through its pidfd and waits (up to 5 s) until it is gone. The cgroup-wide
/// kill of `delete` misses an init a failed cgroup restore moved out of the container's cgroup.
fn kill_init(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on our own pidfd with SIGKILL, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(pidfd),
        PollFlags::POLLIN,
    )];
    let _ = poll(&mut fds, PollTimeout::from(5000u16));
}

/// Deletes what a failed restore made: the container (processes, cgroups, state directory).
fn discard(ctx: &Ctx, id: &str, container: Option<Container>, init: Option<&OwnedFd>) {
    if let Some(fd) = init {
        kill_init(fd);
    }
    let c = container.or_else(|| ctx.load(id).ok());
    match c {
        Some(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::error!("remove container {id} after a failed restore: {e}");
            }
        }
        None => {
            let dir = ctx.container_dir(id);
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::error!("remove {} after a failed restore: {e}", dir.display());
                }
            }
        }
    }
}

/// Restores container `opts.container_id`; on error nothing of it is left.
pub fn restore(ctx: &Ctx, opts: &RestoreOpts) -> Result<Restored, CrError> {
    let id = opts.container_id.as_str();
    let stage = format!("restore of container {id}");
    refuse_unsupported(&stage, &opts.common)?;
    if opts.lsm_profile.is_some() || opts.lsm_mount_context.is_some() {
        return Err(CrError::unsupported(
            stage,
            "--lsm-profile, --lsm-mount-context (no LSM on this build)",
        ));
    }
    let paths = CrPaths::resolve(&opts.common)?;
    // Every image the checks need, read once and handed on.
    let images = Images::read(id, &paths.images)?;
    let descs = &images.descs;
    // CRIU's rule: images holding established TCP connections need --tcp-established.
    ferry_engine::files::inet::restore::check_files(&images.files, opts.common.tcp_established)
        .map_err(|e| CrError::Refused {
            stage: stage.clone(),
            message: e.to_string(),
        })?;
    // Stdio pipes come back on ferry's own fds of the same numbers (the init inherits them).
    let offered =
        ferry_engine::files::inherit::keys_of(images.files_by_id().into_values(), &images.tree.dir)
            .map_err(|e| CrError::BadImages {
                id: id.to_string(),
                path: paths.images.clone(),
                problem: e.to_string(),
            })?;
    let inherit_fds = cr_stdio::inherit_list(
        descs,
        &offered,
        opts.console_socket.is_some(),
        cr_stdio::own_fd_open,
    )
    .map_err(|e| match e {
        CrError::NotSupported { what, .. } => CrError::NotSupported {
            stage: stage.clone(),
            what,
        },
        CrError::Refused { message, .. } => CrError::Refused {
            stage: stage.clone(),
            message,
        },
        other => other,
    })?;
    let bundle = cr_spec::bundle_dir(opts.bundle.as_deref())?;
    let config = BundleConfig::read(&bundle)?;
    // A user namespace: the images' ids must all have a place in the config's mappings.
    let userns = cr_userns::check(&config, &images.tree)?;
    // A terminal container's init gets a new console; its master goes to --console-socket.
    let console = cr_stdio::has_terminal(descs)
        .then(|| opts.console_socket.clone())
        .flatten();
    // A tree in its own time namespace: offsets taken now, right before the container is
    // built, so that its clocks go on from the images' (CRIU's timens restore).
    let time =
        ferry_engine::container::time_offsets(&images.tree).map_err(|e| CrError::BadImages {
            id: id.to_string(),
            path: paths.images.clone(),
            problem: e.to_string(),
        })?;
    let mut rb = cr_spec::prepare(
        (&ctx.root, id),
        (&bundle, config),
        console.is_some(),
        time.as_ref(),
    )?;
    std::fs::create_dir_all(&paths.work)
        .map_err(CrError::io("create work directory", &paths.work))?;
    let images_fd = match &userns {
        Some(ns) => cr_userns::idmapped_images(&paths.images, ns)?,
        None => open_dir(&paths.images)?,
    };
    let log_path = paths.work.join("restore.log");
    let log_file = std::fs::File::create(&log_path).map_err(CrError::io("create", &log_path))?;
    let (status_r, status_w) = status_channel()?;
    let exec = RestoreExecutor {
        images_fd: images_fd.as_raw_fd(),
        log_fd: log_file.as_raw_fd(),
        status_fd: status_w.as_raw_fd(),
        timeout: TASK_TIMEOUT,
        log_level: RESTORE_LOG_LEVEL,
        inherit_fds,
    };
    let built = build(ctx, id, rb.path(), opts.no_pivot, console.as_deref(), exec);
    // The init has made the mounts (or failed): the container's copies are its own.
    rb.release_staged();
    // The init holds its own copies now; ours must go so that EOF means the init is gone.
    drop(status_w);
    drop(log_file);
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            // A container of that id made meanwhile by someone else is not ours to remove.
            let theirs = matches!(&e, CrError::Container { source, .. }
                if matches!(**source, libcontainer::error::LibcontainerError::Exist));
            if !theirs {
                discard(ctx, id, None, None);
            }
            return Err(e);
        }
    };
    let init = init_pidfd(&container);
    match run_restore(
        opts,
        &paths,
        &images.tree,
        &bundle,
        &mut container,
        status_r,
    ) {
        Ok(pid) => {
            drop(images_fd);
            let now = cr_stdio::restored_stdio(pid, descs);
            cr_stdio::record(&ctx.container_dir(id), &now);
            Ok(Restored { pid })
        }
        Err(failed) => {
            let (e, resources) = *failed;
            // Tasks first, then what the resources made (cgroups are removed once empty).
            discard(ctx, id, Some(container), init.as_ref());
            if let Some(r) = resources {
                undo(r, id);
            }
            Err(e)
        }
    }
}

type Failed = Box<(CrError, Option<ferry_engine::container::RestoredResources>)>;

fn build(
    ctx: &Ctx,
    id: &str,
    bundle: &Path,
    no_pivot: bool,
    console_socket: Option<&Path>,
    exec: RestoreExecutor,
) -> Result<Container, CrError> {
    let stage = format!("create container {id} for its restore");
    let err = |source| CrError::Container {
        stage: stage.clone(),
        source: Box::new(source),
    };
    std::fs::create_dir_all(&ctx.root).map_err(CrError::io("create state root", &ctx.root))?;
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(exec)
        .with_console_socket(console_socket)
        .with_root_path(&ctx.root)
        .map_err(err)?
        .validate_id()
        .map_err(err)?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(no_pivot)
        .build()
        .map_err(err)
}

fn run_restore(
    opts: &RestoreOpts,
    paths: &CrPaths,
    images: &TreeImages,
    bundle: &Path,
    container: &mut Container,
    status_r: OwnedFd,
) -> Result<i32, Failed> {
    let id = opts.container_id.as_str();
    let plain = |e: CrError| Box::new((e, None));
    // The state names the caller's bundle, not the adjusted config's directory.
    container.state.bundle = bundle.to_path_buf();
    container
        .save()
        .map_err(|source| CrError::Container {
            stage: format!("save state of container {id}"),
            source: Box::new(source),
        })
        .map_err(plain)?;
    let pid = container
        .pid()
        .ok_or_else(|| CrError::unsupported("restore", format!("container {id} has no init pid")))
        .map_err(plain)?
        .as_raw();
    let res_log = paths.work.join("restore-resources.log");
    let mut log = ferry_engine::restore::Log::new(Some(&res_log), ferry_engine::log::INFO)
        .map_err(CrError::io("create", &res_log))
        .map_err(plain)?;
    let ropts = ferry_engine::container::ResourceRestoreOptions {
        pid,
        cgroups: cgroup_mode(opts.common.manage_cgroups_mode),
        lock_tag: format!("rs-{pid}"),
    };
    let resources = ferry_engine::container::restore_resources(&ropts, images, &mut log)
        .map_err(|source| CrError::Resources {
            id: id.to_string(),
            source: Box::new(source),
        })
        .map_err(plain)?;
    if let Err(source) = container.start() {
        let e = CrError::Container {
            stage: format!("start the restore of container {id}"),
            source: Box::new(source),
        };
        return Err(Box::new((e, Some(resources))));
    }
    let log_path = paths.work.join("restore.log");
    let mut log = match std::fs::OpenOptions::new().append(true).open(&log_path) {
        // The finisher's stages follow the init's in the same log, at the same verbosity
        // (runc has CRIU write restore.log with every stage timed).
        Ok(f) => {
            ferry_engine::restore::Log::to(ferry_engine::log::Sink::File(f), RESTORE_LOG_LEVEL)
        }
        Err(e) => {
            let e = CrError::io("open", &log_path)(e);
            return Err(Box::new((e, Some(resources))));
        }
    };
    let done = ferry_engine::pidns::inplace_finish::finish_in_place(
        pid,
        status_r,
        &paths.images,
        TASK_TIMEOUT,
        &mut log,
    );
    if let Err(e) = done {
        let e = CrError::Init {
            id: id.to_string(),
            message: e.to_string(),
        };
        return Err(Box::new((e, Some(resources))));
    }
    resources
        .finish(&mut log)
        .map_err(|source| CrError::Resources {
            id: id.to_string(),
            source: Box::new(source),
        })
        .map_err(plain)?;
    if let Some(pf) = &opts.pid_file {
        write_pid_file(pf, pid).map_err(plain)?;
    }
    Ok(pid)
}

fn undo(r: ferry_engine::container::RestoredResources, id: &str) {
    if let Err(e) = r.undo() {
        tracing::error!("undo the restored resources of container {id}: {e}");
    }
}

/// runc's pid file: the decimal pid, written to a temporary file and renamed.
fn write_pid_file(path: &Path, pid: i32) -> Result<(), CrError> {
    let path: PathBuf = std::path::absolute(path).map_err(CrError::io("resolve path", path))?;
    let tmp = path.with_extension("ferry-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(CrError::io("write pid file", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(CrError::io("rename pid file", &path))
}

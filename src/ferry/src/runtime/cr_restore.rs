//! `ferry restore`'s stages, all or nothing.
//!
//! 1. Checks before anything is made: options, the image directory (inventory and tree images,
//!    descriptors.json and whether its stdio can be reconnected), the bundle (a user namespace
//!    must have a place for every id of the images: `cr_userns`). Each file is read once
//!    (`cr_inputs`) and what was read is handed on to the later stages.
//! 2. ferry builds the container from the bundle's config (adjusted by `cr_spec`): state
//!    directory, cgroups, namespaces, rootfs and mounts, with an init that waits for `start`
//!    (`cr_build`, `cr_build_init`).
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

use libcontainer::container::Container;

use ferry_engine::container::TreeImages;

use super::checkpoint::{cgroup_mode, refuse_unsupported};
use super::cr_build::{Built, Request};
use super::cr_build_init::InitArgs;
use super::cr_error::CrError;
use super::cr_inputs::{BundleConfig, Images};
use super::cr_opts::RestoreOpts;
use super::cr_paths::CrPaths;
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

/// SIGKILLs the init through its pidfd and waits (up to 5 s) until it is gone. The cgroup-wide
/// kill of `delete` misses an init a failed cgroup restore moved out of the container's cgroup.
pub(super) fn kill_init(pidfd: &OwnedFd) {
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
fn discard(id: &str, mut container: Container, init: &OwnedFd) {
    kill_init(init);
    if let Err(e) = container.delete(true) {
        tracing::error!("remove container {id} after a failed restore: {e}");
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
    // The engine's status channel: (ferry's end, the init's end).
    let (status_r, status_w) =
        super::cr_build::channel(&format!("status channel of the restore of {id}"))?;
    let init = InitArgs {
        images_fd: images_fd.as_raw_fd(),
        log_fd: log_file.as_raw_fd(),
        status_fd: status_w.as_raw_fd(),
        timeout: TASK_TIMEOUT,
        log_level: RESTORE_LOG_LEVEL,
        inherit_fds,
    };
    let built = super::cr_build::build(Request {
        id,
        root: &ctx.root,
        bundle: &bundle,
        spec: std::mem::take(&mut rb.spec),
        config: &rb.source,
        no_pivot: opts.no_pivot,
        console_socket: console.as_deref(),
        init,
        close_in_init: vec![status_r.as_raw_fd()],
    });
    // The init has made the mounts (or failed): the container's copies are its own.
    rb.release_staged();
    // The init holds its own copies now; ours must go so that EOF means the init is gone.
    drop(status_w);
    drop(log_file);
    // A failed build has removed what it made (and nothing of a container of that id made
    // meanwhile by someone else).
    let mut built = built?;
    match run_restore(opts, &paths, &images.tree, &mut built, status_r) {
        Ok(pid) => {
            drop(images_fd);
            let now = cr_stdio::restored_stdio(pid, descs);
            cr_stdio::record(&ctx.container_dir(id), &now);
            Ok(Restored { pid })
        }
        Err(failed) => {
            let (e, resources) = *failed;
            // Tasks first, then what the resources made (cgroups are removed once empty).
            let Built {
                container, pidfd, ..
            } = built;
            discard(id, container, &pidfd);
            if let Some(r) = resources {
                undo(r, id);
            }
            Err(e)
        }
    }
}

type Failed = Box<(CrError, Option<ferry_engine::container::RestoredResources>)>;

fn run_restore(
    opts: &RestoreOpts,
    paths: &CrPaths,
    images: &TreeImages,
    built: &mut Built,
    status_r: OwnedFd,
) -> Result<i32, Failed> {
    let id = opts.container_id.as_str();
    let plain = |e: CrError| Box::new((e, None));
    let pid = built.pid();
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
    if let Err(e) = built.start() {
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
        // A startContainer hook that failed in the init says so on the build channel.
        let message = built.init_error().unwrap_or_else(|| e.to_string());
        let e = CrError::Init {
            id: id.to_string(),
            message,
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

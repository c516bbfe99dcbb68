//! The restored container's init, from its clone to the engine's in-place restore.
//!
//! ferry clones it straight into the config's new pid (and user) namespace; single-threaded,
//! it then does what libcontainer's init does for a container that is about to run — but
//! nothing that the images give back (credentials, capabilities, seccomp, rlimits, the process
//! itself come from them, as CRIU restores them under runc):
//!
//! 1. joins its cgroups itself, by writing "0" to each v1 hierarchy's `tasks` (`cr_cgroups`; on
//!    cgroup v2 it was cloned into its cgroup);
//! 2. in a new user namespace, waits for ferry to write its id maps, then becomes its root;
//! 3. enters the config's other namespaces (joins those with a path, makes the others; mount last)
//!    while ferry applies the config's cgroup limits, which it waits for;
//! 4. builds the rootfs with libcontainer's own code (mounts, devices, symlinks), lets ferry run
//!    the prestart and createRuntime hooks, runs createContainer, then pivot_root (or, with
//!    `--no-pivot`, MS_MOVE and chroot), sysctls, read-only root, read-only and masked paths;
//! 5. with a terminal, makes its new console (master to `--console-socket`);
//! 6. reports ready on the build channel and waits for `start`, then runs startContainer hooks
//!    and hands over to the engine, whose in-place restore turns it into the restored PID 1.
//!
//! Any failure goes back to ferry as text on the build channel; the init then exits.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libcontainer::namespaces::Namespaces;
use libcontainer::rootfs::RootFS;
use libcontainer::syscall::syscall::create_syscall;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{Hook, Hooks, LinuxNamespaceType, Spec};

use super::cr_build::{
    recv, send, MSG_ERROR, MSG_HOOKS, MSG_LIMITED, MSG_MAPPED, MSG_READY, MSG_START,
};

/// What the engine's in-place restore is given (all fds opened by ferry before the clone).
#[derive(Clone, Debug)]
pub struct InitArgs {
    /// The image directory, open (O_PATH) in ferry; reached as `/proc/self/fd/N` after pivot.
    pub images_fd: RawFd,
    /// restore.log, open for writing in ferry (used as it is: a mapped root could not reopen it).
    pub log_fd: RawFd,
    /// The init's end of ferry's status socket pair (SOCK_SEQPACKET), for the engine.
    pub status_fd: RawFd,
    /// Deadline for every task to reach the restorer.
    pub timeout: std::time::Duration,
    /// restore.log verbosity.
    pub log_level: u8,
    /// The init's own fds 0..2 (ferry's pipes, or its new console) standing for the images' stdio.
    pub inherit_fds: Vec<ferry_engine::files::inherit::InheritFd>,
}

/// Everything the init needs, prepared by ferry before the clone.
pub struct InitPlan {
    /// The restore config.
    pub spec: Spec,
    /// The rootfs, absolute.
    pub rootfs: PathBuf,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// A new user namespace (ferry writes its maps).
    pub userns: bool,
    /// v1 `tasks` files to join.
    pub cgroup_tasks: Vec<PathBuf>,
    /// The connected `--console-socket`, for a terminal container.
    pub console_fd: Option<RawFd>,
    /// The state hooks are given.
    pub state: libcontainer::container::State,
    /// Whether ferry runs prestart/createRuntime hooks (the init asks, then waits).
    pub runtime_hooks: bool,
    /// The engine's part.
    pub args: InitArgs,
    /// ferry's own fds the init must not keep.
    pub close_fds: Vec<RawFd>,
}

/// The init's life after the clone: never returns.
pub fn run(plan: &InitPlan, chan: OwnedFd) -> ! {
    let code = match steps(plan, &chan) {
        Ok(never) => match never {},
        Err(message) => {
            send(&chan, MSG_ERROR, message.as_bytes());
            1
        }
    };
    // SAFETY: _exit ends this forked process without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

fn expect(chan: &OwnedFd, want: u8, waiting_for: &str) -> Result<(), String> {
    match recv(chan) {
        Some((tag, _)) if tag == want => Ok(()),
        Some((tag, _)) => Err(format!(
            "build channel: got message {:?} while waiting for {waiting_for}",
            tag as char
        )),
        None => Err(format!(
            "ferry went away while the init waited for {waiting_for}"
        )),
    }
}

fn steps(plan: &InitPlan, chan: &OwnedFd) -> Result<Infallible, String> {
    for fd in &plan.close_fds {
        // SAFETY: closing fds of ferry's that this process inherited and never uses.
        unsafe { libc::close(*fd) };
    }
    // Like libcontainer's: while it stands in the container's namespaces with ferry's
    // privileges, nothing there may ptrace it or read its memory.
    // SAFETY: prctl(PR_SET_DUMPABLE) changes only a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // Still the host's root (in a new user namespace, before its maps): the cgroup files are ours.
    super::cr_cgroups::join_v1(&plan.cgroup_tasks)?;
    if plan.userns {
        expect(chan, MSG_MAPPED, "its user namespace's id maps")?;
        become_ns_root()?;
    }
    let linux = plan
        .spec
        .linux()
        .as_ref()
        .ok_or("the config has no `linux`")?;
    enter_namespaces(&plan.spec)?;
    let has = |t: LinuxNamespaceType| {
        linux
            .namespaces()
            .iter()
            .flatten()
            .find(|n| n.typ() == t)
            .map(|n| n.path().is_none())
    };
    let syscall = create_syscall();
    if has(LinuxNamespaceType::Uts) == Some(true) {
        if let Some(h) = plan.spec.hostname() {
            syscall
                .set_hostname(h)
                .map_err(|e| format!("set hostname {h:?}: {e}"))?;
        }
        if let Some(d) = plan.spec.domainname() {
            syscall
                .set_domainname(d)
                .map_err(|e| format!("set domainname {d:?}: {e}"))?;
        }
    }
    // The devices cgroup must allow what the rootfs makes (mknod) before it is made; ferry
    // applies the limits while this process entered its namespaces.
    expect(chan, MSG_LIMITED, "its cgroup limits")?;
    let rootfs = RootFS::new();
    rootfs
        .prepare_rootfs(
            &plan.spec,
            &plan.rootfs,
            plan.userns,
            has(LinuxNamespaceType::Cgroup).is_some(),
        )
        .map_err(|e| format!("prepare rootfs {}: {}", plan.rootfs.display(), causes(&e)))?;
    if plan.runtime_hooks {
        send(chan, MSG_HOOKS, b"");
        expect(chan, MSG_HOOKS, "the prestart and createRuntime hooks")?;
    }
    container_hooks(plan, "createContainer", Hooks::create_container)?;
    enter_root(
        &*syscall,
        has(LinuxNamespaceType::Mount).is_some(),
        plan.no_pivot,
        &plan.rootfs,
    )?;
    rootfs
        .adjust_root_mount_propagation(linux)
        .map_err(|e| format!("root mount propagation: {}", causes(&e)))?;
    if let Some(params) = linux.sysctl() {
        for (key, value) in params {
            let p = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&p, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
        }
    }
    if plan.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        readonly_root()?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        readonly_path(Path::new(p))?;
    }
    for p in linux.masked_paths().iter().flatten() {
        masked_path(Path::new(p), linux.mount_label().as_deref())?;
    }
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if let Some(fd) = plan.console_fd {
        libcontainer::tty::setup_console(&*syscall, fd, true)
            .map_err(|e| format!("set up the console: {}", causes(&e)))?;
        // SAFETY: the console socket's fd, ours alone, done with.
        unsafe { libc::close(fd) };
    }
    send(chan, MSG_READY, b"");
    expect(chan, MSG_START, "start")?;
    container_hooks(plan, "startContainer", Hooks::start_container)?;
    restore_in_place(&plan.args, chan.as_raw_fd())
}

/// The config's `name` hooks, run by the init in the container's namespaces.
fn container_hooks(
    plan: &InitPlan,
    name: &str,
    pick: fn(&Hooks) -> &Option<Vec<Hook>>,
) -> Result<(), String> {
    let Some(list) = plan.spec.hooks().as_ref().and_then(|h| pick(h).as_ref()) else {
        return Ok(());
    };
    libcontainer::hooks::run_hooks(Some(list), Some(&plan.state), None, None, None)
        .map_err(|e| format!("{name} hooks: {e}"))
}

/// setgroups, setresgid, setresuid to 0 of the fresh user namespace (mapped by ferry by now).
fn become_ns_root() -> Result<(), String> {
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups in the user namespace: {e}"))?;
    nix::unistd::setresgid(root_g, root_g, root_g)
        .map_err(|e| format!("become gid 0 of the user namespace: {e}"))?;
    nix::unistd::setresuid(root_u, root_u, root_u)
        .map_err(|e| format!("become uid 0 of the user namespace: {e}"))
}

/// Every config namespace but user and pid (made by the clone) and a new time namespace (made
/// by ferry around the clone): joined when it has a path, made otherwise; mount last.
fn enter_namespaces(spec: &Spec) -> Result<(), String> {
    let list = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    let time_new = list
        .into_iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none());
    let ns = Namespaces::try_from(list).map_err(|e| format!("config namespaces: {e}"))?;
    let time = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
    ns.apply_namespaces(|f| {
        f != CloneFlags::CLONE_NEWUSER && f != CloneFlags::CLONE_NEWPID && !(f == time && time_new)
    })
    .map_err(|e| format!("enter the config's namespaces: {}", causes(&e)))
}

/// An error with its causes ("io error: No such file or directory"): libcontainer's errors
/// often say little more than their kind at the top.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cur = c.source();
    }
    text
}

/// Into the rootfs: pivot_root in a new mount namespace, MS_MOVE + chroot with `--no-pivot`,
/// chroot without a mount namespace.
fn enter_root(
    syscall: &dyn libcontainer::syscall::Syscall,
    mount_ns: bool,
    no_pivot: bool,
    rootfs: &Path,
) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", rootfs.display());
    if !mount_ns {
        return syscall.chroot(rootfs).map_err(|e| fail("chroot", &e));
    }
    if !no_pivot {
        return syscall
            .pivot_rootfs(rootfs)
            .map_err(|e| fail("pivot_root", &e));
    }
    nix::unistd::chdir(rootfs).map_err(|e| fail("chdir", &e))?;
    // The host's /proc and /sys must not stay reachable under the moved root.
    for p in ["/sys", "/proc"] {
        match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => {
                nix::mount::mount(
                    None::<&str>,
                    p,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    Some("size=0k"),
                )
                .map_err(|e| format!("hide {p}: {e}"))?;
            }
            Err(e) => return Err(format!("unmount {p}: {e}")),
        }
    }
    nix::mount::mount(
        Some(rootfs),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| fail("move mount", &e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot", &e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir", &e))
}

/// The whole root read-only (`root.readonly`), keeping its other flags.
fn readonly_root() -> Result<(), String> {
    let flags = nix::sys::statvfs::statvfs("/")
        .map_err(|e| format!("statvfs /: {e}"))?
        .flags();
    let mut ms = MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    use nix::sys::statvfs::FsFlags;
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if flags.contains(f) {
            ms |= m;
        }
    }
    nix::mount::mount(None::<&str>, "/", None::<&str>, ms, None::<&str>)
        .map_err(|e| format!("remount / read-only: {e}"))
}

/// A read-only path: bound onto itself, then remounted read-only (a missing path is skipped).
fn readonly_path(p: &Path) -> Result<(), String> {
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    match nix::mount::mount(Some(p), p, None::<&str>, bind, None::<&str>) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(format!("bind read-only path {}: {e}", p.display())),
    }
    let ro = MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY;
    nix::mount::mount(Some(p), p, None::<&str>, ro, None::<&str>)
        .map_err(|e| format!("remount read-only path {}: {e}", p.display()))
}

/// A masked path: an empty read-only tmpfs over a directory, /dev/null over anything else (a
/// missing path is skipped).
fn masked_path(p: &Path, label: Option<&str>) -> Result<(), String> {
    let Ok(meta) = std::fs::metadata(p) else {
        return Ok(());
    };
    if meta.is_dir() {
        let data = label.map(|l| format!("context=\"{l}\""));
        nix::mount::mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            data.as_deref(),
        )
        .map_err(|e| format!("mask directory {}: {e}", p.display()))
    } else {
        nix::mount::mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("mask {}: {e}", p.display()))
    }
}

/// Hands over to the engine: on success this process is the restored PID 1 and never returns.
fn restore_in_place(a: &InitArgs, build_chan: RawFd) -> Result<Infallible, String> {
    use ferry_engine::restore::{Log, Options};
    // SAFETY: the build channel's fd is this process's copy; nothing uses it from here.
    unsafe { libc::close(build_chan) };
    // SAFETY: ferry handed this fd to the init for the restore alone; the engine owns and
    // closes it from here.
    let status = unsafe { OwnedFd::from_raw_fd(a.status_fd) };
    // Written through ferry's own fd, never reopened: in a container with its own user
    // namespace the init (its root) has no right to the host root's file.
    // SAFETY: ferry opened the log for the init alone; the engine owns and closes it.
    let log_file = unsafe { std::fs::File::from_raw_fd(a.log_fd) };
    let mut log = Log::to(ferry_engine::log::Sink::File(log_file), a.log_level);
    let mut opts = Options::new(format!("/proc/self/fd/{}", a.images_fd));
    opts.timeout = a.timeout;
    opts.inherit_fds = a.inherit_fds.clone();
    match ferry_engine::pidns::inplace::restore_in_place(&opts, status, &mut log) {
        Ok(never) => match never {},
        // The engine has reported it to ferry (on the status socket or in its stage slot), and
        // the init's fds may already be the tree's: exit without writing anything anywhere.
        // SAFETY: _exit ends this process without running destructors or flushing buffers.
        Err(_) => unsafe { libc::_exit(1) },
    }
}

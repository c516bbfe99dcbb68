//! ferry's own build of a container for its restore, in place of libcontainer's.
//!
//! libcontainer starts a container through an intermediate process that moves itself into the
//! cgroups by `cgroup.procs` (an RCU grace period on the kernel's threadgroup lock, ~7 ms here),
//! then clones the init. For a restore ferry clones the init itself, directly into the config's
//! new pid and user namespaces (`clone3`), and the init joins its v1 cgroups by writing "0" to
//! `tasks`, which skips that lock (`cr_cgroups`). The rest is libcontainer's own code where it
//! is public (rootfs, namespaces, console, hooks, id maps, state): the container's state
//! directory, `state.json` and saved config are libcontainer's, so `state`, `ps`, `exec`,
//! `pause`, `kill` and `delete` treat the restored container like any other.
//!
//! On cgroup v2 the init is cloned straight into its cgroup (`CLONE_INTO_CGROUP`).
//!
//! A new time namespace (the images' tree had one) must get its offsets before any task is in
//! it, so ferry makes it for its children (`unshare`), writes the offsets, clones the init into
//! it and returns to its own.
//!
//! ferry and the init talk over a SOCK_SEQPACKET pair, one tagged message each way per step
//! (see `cr_build_init` for the init's side). A failure at any step removes what was made:
//! the init (killed and reaped), its cgroups, the state directory.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::cr_build_init::{InitArgs, InitPlan};
use super::cr_cgroups::Cgroups;
use super::cr_error::CrError;

/// init → ferry: a failure, with its text.
pub const MSG_ERROR: u8 = b'E';
/// init → ferry: run the prestart and createRuntime hooks; ferry → init: they ran.
pub const MSG_HOOKS: u8 = b'H';
/// ferry → init: the user namespace's id maps are written.
pub const MSG_MAPPED: u8 = b'M';
/// ferry → init: the config's cgroup limits are applied (devices among them: before any mknod).
pub const MSG_LIMITED: u8 = b'L';
/// init → ferry: namespaces, cgroups and rootfs are ready.
pub const MSG_READY: u8 = b'R';
/// ferry → init: restore the tree.
pub const MSG_START: u8 = b'S';

/// Sends one tagged message (best effort: a dead peer shows up at its next read).
pub fn send(chan: &OwnedFd, tag: u8, body: &[u8]) {
    let mut msg = Vec::with_capacity(1 + body.len());
    msg.push(tag);
    msg.extend_from_slice(body);
    let _ = nix::sys::socket::send(
        chan.as_raw_fd(),
        &msg,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
    );
}

/// Receives one tagged message; `None` at EOF or on an error.
pub fn recv(chan: &OwnedFd) -> Option<(u8, Vec<u8>)> {
    recv_flags(chan, nix::sys::socket::MsgFlags::empty())
}

fn recv_flags(chan: &OwnedFd, flags: nix::sys::socket::MsgFlags) -> Option<(u8, Vec<u8>)> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match nix::sys::socket::recv(chan.as_raw_fd(), &mut buf, flags) {
            Ok(0) => return None,
            Ok(n) => return Some((buf[0], buf[1..n].to_vec())),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// What ferry asks for.
pub struct Request<'a> {
    /// Container id.
    pub id: &'a str,
    /// `--root`.
    pub root: &'a Path,
    /// The caller's bundle (recorded in the state).
    pub bundle: &'a Path,
    /// The restore config (`cr_spec`).
    pub spec: Spec,
    /// The bundle's config.json it was made from (for messages).
    pub config: &'a Path,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// `--console-socket`, for a terminal container.
    pub console_socket: Option<&'a Path>,
    /// The engine's part, run by the init after `start`.
    pub init: InitArgs,
    /// ferry's own fds the init must not keep (it inherits them all with the clone).
    pub close_in_init: Vec<RawFd>,
}

/// A built container whose init waits for `start`.
pub struct Built {
    /// libcontainer's view of it (state saved, status created).
    pub container: Container,
    /// A pidfd of its init.
    pub pidfd: OwnedFd,
    pid: i32,
    chan: OwnedFd,
}

impl Built {
    /// Host pid of the init.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Lets the init restore the tree; the container is running from here (poststart hooks
    /// run, as libcontainer's start runs them).
    pub fn start(&mut self) -> Result<(), CrError> {
        let id = self.container.id().to_string();
        send(&self.chan, MSG_START, b"");
        let state_err = |source| CrError::Container {
            stage: format!("save state of container {id}"),
            source: Box::new(source),
        };
        self.container
            .set_status(ContainerStatus::Running)
            .save()
            .map_err(state_err)?;
        let config = YoukiConfig::load(&self.container.root).map_err(|e| CrError::Container {
            stage: format!("load the saved config of container {id}"),
            source: Box::new(e.into()),
        })?;
        if let Some(hooks) = &config.hooks {
            libcontainer::hooks::run_hooks(
                hooks.poststart().as_ref(),
                Some(&self.container.state),
                Some(&self.container.root),
                None,
                None,
            )
            .map_err(|e| CrError::Container {
                stage: format!("poststart hooks of container {id}"),
                source: Box::new(e.into()),
            })?;
        }
        Ok(())
    }

    /// What the init reported before it exited after `start` (a startContainer hook failed),
    /// if anything.
    pub fn init_error(&self) -> Option<String> {
        match recv_flags(&self.chan, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Some((MSG_ERROR, text)) => Some(String::from_utf8_lossy(&text).into_owned()),
            _ => None,
        }
    }
}

/// What a failed build leaves to remove, removed on drop unless disarmed.
struct Undo {
    dir: Option<PathBuf>,
    cgroups: Option<Cgroups>,
    init: Option<(i32, OwnedFd)>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some((pid, pidfd)) = self.init.take() {
            super::cr_restore::kill_init(&pidfd);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        if let Some(mut c) = self.cgroups.take() {
            c.remove();
        }
        if let Some(d) = self.dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                tracing::error!("remove {} after a failed restore: {e}", d.display());
            }
        }
    }
}

impl Undo {
    fn disarm(mut self) {
        self.dir = None;
        self.cgroups = None;
        self.init = None;
    }
}

fn build_err(stage: &str) -> impl Fn(String) -> CrError + '_ {
    move |message| CrError::Build {
        stage: stage.to_string(),
        message,
    }
}

/// Config features the restore's own build does not make (yet), refused up front.
fn refuse_unsupported(spec: &Spec, stage: &str) -> Result<(), CrError> {
    let Some(linux) = spec.linux() else {
        return Err(CrError::unsupported(stage, "a config without `linux`"));
    };
    let joins_pid = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_some());
    if joins_pid {
        return Err(CrError::unsupported(
            stage,
            "restoring into an existing pid namespace (linux.namespaces pid with a path): \
             the restored tree needs its own",
        ));
    }
    if linux.intel_rdt().is_some() {
        return Err(CrError::unsupported(stage, "linux.intelRdt on restore"));
    }
    if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(CrError::unsupported(stage, "linux.netDevices on restore"));
    }
    Ok(())
}

/// `/proc/self/timens_offsets` text for a config that makes a new time namespace with offsets.
fn time_offsets(spec: &Spec) -> Option<String> {
    let linux = spec.linux().as_ref()?;
    let new = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none());
    let offsets = linux.time_offsets().as_ref().filter(|o| !o.is_empty())?;
    new.then(|| {
        offsets
            .iter()
            .map(|(clock, o)| {
                format!(
                    "{clock} {} {}\n",
                    o.secs().unwrap_or(0),
                    o.nanosecs().unwrap_or(0)
                )
            })
            .collect()
    })
}

/// Makes a time namespace for ferry's children with `offsets`; returns ferry's own to go back to.
fn enter_child_time_ns(offsets: &str) -> Result<OwnedFd, String> {
    let own = std::fs::File::open("/proc/self/ns/time")
        .map_err(|e| format!("open /proc/self/ns/time: {e}"))?;
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
        libc::CLONE_NEWTIME,
    ))
    .map_err(|e| format!("unshare a time namespace: {e}"))?;
    let back = OwnedFd::from(own);
    std::fs::write("/proc/self/timens_offsets", offsets).map_err(|e| {
        leave_child_time_ns(&back);
        format!("write time offsets {offsets:?}: {e}")
    })?;
    Ok(back)
}

fn leave_child_time_ns(own: &OwnedFd) {
    if let Err(e) = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::empty()) {
        // Only later children of ferry's would be affected; nothing of the container's.
        tracing::warn!("return to ferry's own time namespace: {e}");
    }
}

/// A SOCK_SEQPACKET pair (ferry's end, the init's end) for `stage`: the build channel here, the
/// engine's status channel in `cr_restore`.
pub fn channel(stage: &str) -> Result<(OwnedFd, OwnedFd), CrError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| build_err(stage)(format!("socketpair: {e}")))
}

/// Builds the container; its init waits for [`Built::start`]. On error nothing of it is left.
pub fn build(req: Request) -> Result<Built, CrError> {
    let id = req.id;
    let stage = format!("create container {id} for its restore");
    let err = build_err(&stage);
    let lc_err = |source: LibcontainerError| CrError::Container {
        stage: stage.clone(),
        source: Box::new(source),
    };
    let config = req.config;
    let spec = req.spec;
    refuse_unsupported(&spec, &stage)?;
    // libcontainer's checks of a config it builds from (namespaces, sysctls, mount options).
    libcontainer::validator::Validator::validate_spec(&spec)
        .map_err(|e| err(format!("invalid config {}: {e}", config.display())))?;
    if let Some(m) = spec.mounts() {
        libcontainer::utils::validate_mount_options(m)
            .map_err(|e| err(format!("invalid config {}: {e}", config.display())))?;
    }
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| err("the config has no root".into()))?;
    let rootfs = std::fs::canonicalize(&rootfs).map_err(CrError::io("resolve rootfs", &rootfs))?;
    std::fs::create_dir_all(req.root).map_err(CrError::io("create state root", req.root))?;
    let dir = req.root.join(id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(lc_err(LibcontainerError::Exist));
        }
        Err(e) => return Err(CrError::io("create container directory", &dir)(e)),
    }
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroups: None,
        init: None,
    };
    let mut container =
        Container::new(id, ContainerStatus::Creating, None, req.bundle, &dir).map_err(lc_err)?;
    container
        .set_systemd(false)
        .set_annotations(spec.annotations().clone());
    container.save().map_err(lc_err)?;
    YoukiConfig::from_spec(&spec, id)
        .and_then(|c| c.save(&dir))
        .map_err(|e| lc_err(e.into()))?;
    let console = match req.console_socket {
        Some(p) => Some(
            libcontainer::tty::setup_console_socket(&dir, p, "console-socket")
                .map_err(|e| lc_err(e.into()))?,
        ),
        None => None,
    };
    let cgroups = undo.cgroups.insert(Cgroups::prepare(&spec, id)?);
    let userns =
        libcontainer::user_ns::UserNamespaceConfig::new(&spec).map_err(|e| lc_err(e.into()))?;
    let (chan, init_chan) = channel(&stage)?;
    let hooks = spec.hooks().as_ref();
    let runtime_hooks = hooks.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    let plan = InitPlan {
        rootfs,
        no_pivot: req.no_pivot,
        userns: userns.is_some(),
        cgroup_tasks: cgroups.v1_tasks().to_vec(),
        console_fd: console.as_ref().map(|c| c.as_raw_fd()),
        state: container.state.clone(),
        runtime_hooks,
        args: req.init,
        close_fds: [chan.as_raw_fd()]
            .into_iter()
            .chain(req.close_in_init.iter().copied())
            .collect(),
        spec,
    };
    let ns_new = |t: LinuxNamespaceType| {
        plan.spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .any(|n| n.typ() == t && n.path().is_none())
    };
    let mut flags = 0u64;
    if ns_new(LinuxNamespaceType::Pid) {
        flags |= libc::CLONE_NEWPID as u64;
    }
    if plan.userns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    let own_time = time_offsets(&plan.spec)
        .map(|o| enter_child_time_ns(&o))
        .transpose()
        .map_err(&err)?;
    let cloned = match undo.cgroups.as_ref().and_then(Cgroups::v2_dir) {
        Some(dir) => ferry_engine::pstree::restore::clone3_fork_into_cgroup(flags, dir),
        None => ferry_engine::pstree::restore::clone3_fork(flags, None),
    };
    if let Ok(0) = cloned {
        super::cr_build_init::run(&plan, init_chan);
    }
    if let Some(own) = &own_time {
        leave_child_time_ns(own);
    }
    let pid = cloned.map_err(|e| err(format!("clone the init: {e}")))? as i32;
    drop(init_chan);
    drop(console);
    let pidfd =
        ferry_engine::files::pidfd::open(pid).map_err(|e| err(format!("pidfd_open {pid}: {e}")))?;
    let pidfd_copy = pidfd
        .try_clone()
        .map_err(|e| err(format!("dup pidfd: {e}")))?;
    undo.init = Some((pid, pidfd_copy));
    if let Some(u) = &userns {
        let p = nix::unistd::Pid::from_raw(pid);
        // The init waits for these before it takes its ids in the namespace.
        u.write_uid_mapping(p)
            .and_then(|()| u.write_gid_mapping(p))
            .map_err(|e| err(format!("write the id maps of init {pid}: {e}")))?;
    }
    if plan.userns {
        send(&chan, MSG_MAPPED, b"");
    }
    if let Some(c) = &mut undo.cgroups {
        c.limit(&plan.spec)?;
    }
    send(&chan, MSG_LIMITED, b"");
    container
        .set_pid(pid)
        .set_creator(nix::unistd::geteuid().as_raw());
    loop {
        match recv(&chan) {
            Some((MSG_READY, _)) => break,
            Some((MSG_HOOKS, _)) => {
                run_runtime_hooks(&plan.spec, &container, pid).map_err(&err)?;
                send(&chan, MSG_HOOKS, b"");
            }
            Some((MSG_ERROR, text)) => {
                return Err(err(format!(
                    "init {pid}: {}",
                    String::from_utf8_lossy(&text)
                )))
            }
            Some((tag, _)) => {
                return Err(err(format!(
                    "init {pid}: unexpected message {:?}",
                    tag as char
                )))
            }
            None => return Err(err(format!("init {pid} exited before it was ready"))),
        }
    }
    container
        .set_status(ContainerStatus::Created)
        .save()
        .map_err(lc_err)?;
    undo.disarm();
    Ok(Built {
        container,
        pidfd,
        pid,
        chan,
    })
}

/// prestart and createRuntime hooks, in ferry's namespaces, with the init's pid.
fn run_runtime_hooks(spec: &Spec, container: &Container, pid: i32) -> Result<(), String> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    for (name, list) in [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
    ] {
        libcontainer::hooks::run_hooks(
            list.as_ref(),
            Some(&container.state),
            None,
            Some(nix::unistd::Pid::from_raw(pid)),
            None,
        )
        .map_err(|e| format!("{name} hooks: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn time_offsets_only_for_a_new_time_namespace() {
        let offs = serde_json::json!({"monotonic": {"secs": -5, "nanosecs": 7}});
        let new = spec(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "time"}], "timeOffsets": offs}}));
        assert_eq!(time_offsets(&new).as_deref(), Some("monotonic -5 7\n"));
        let joined = spec(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "time", "path": "/x"}], "timeOffsets": offs}}));
        assert_eq!(time_offsets(&joined), None);
        let none = spec(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "time"}]}}));
        assert_eq!(time_offsets(&none), None);
    }

    #[test]
    fn refuses_a_joined_pid_namespace_and_net_devices() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}));
        let e = refuse_unsupported(&s, "restore").unwrap_err().to_string();
        assert!(e.contains("existing pid namespace"), "{e}");
        let ok = spec(serde_json::json!({"ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "pid"}]}}));
        refuse_unsupported(&ok, "restore").unwrap();
    }

    #[test]
    fn messages_keep_their_tag_and_body() {
        let (a, b) = channel("test").unwrap();
        send(&a, MSG_ERROR, b"boom");
        assert_eq!(recv(&b), Some((MSG_ERROR, b"boom".to_vec())));
        drop(a);
        assert_eq!(recv(&b), None);
    }
}

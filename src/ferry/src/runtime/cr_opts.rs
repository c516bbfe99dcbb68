//! Checkpoint/restore options as plain data, what `checkpoint.rs` and `cr_restore.rs` act on.
//! The CLI structs convert into these, validating what runc validates; options the engine
//! cannot honour yet are refused by name in `checkpoint::refuse_unsupported`.

use std::path::PathBuf;

use crate::cli::cr::CrCommonArgs;
use crate::cli::{CheckpointArgs, RestoreArgs};

/// Bad checkpoint/restore option values.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptsError {
    /// runc's message for an unknown cgroups mode.
    #[error("Invalid manage cgroups mode: {0}")]
    CgroupsMode(String),
    /// `--page-server` is not ADDRESS:PORT.
    #[error("invalid --page-server {0:?}: want ADDRESS:PORT")]
    PageServer(String),
    /// `--empty-ns` names no namespace ferry knows.
    #[error(
        "invalid --empty-ns {0:?}: want one of network, ipc, uts, mount, pid, user, cgroup, time"
    )]
    EmptyNs(String),
}

/// `--manage-cgroups-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupsMode {
    /// Restore cgroup properties only where the cgroup is new (runc's default).
    #[default]
    Soft,
    /// Restore all properties.
    Full,
    /// Fail if a cgroup property cannot be restored.
    Strict,
    /// Do not touch cgroups.
    Ignore,
}

impl std::str::FromStr for CgroupsMode {
    type Err = OptsError;
    fn from_str(s: &str) -> Result<Self, OptsError> {
        match s {
            "soft" => Ok(Self::Soft),
            "full" => Ok(Self::Full),
            "strict" => Ok(Self::Strict),
            "ignore" => Ok(Self::Ignore),
            other => Err(OptsError::CgroupsMode(other.to_string())),
        }
    }
}

/// Options common to dump and restore.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommonOpts {
    /// Image directory (None: runc's default, `<cwd>/checkpoint`).
    pub image_path: Option<PathBuf>,
    /// Directory for work files and logs (None: the image directory).
    pub work_path: Option<PathBuf>,
    /// Parent images of an incremental dump.
    pub parent_path: Option<PathBuf>,
    /// Keep the container running after the dump.
    pub leave_running: bool,
    /// Dump/restore established TCP connections.
    pub tcp_established: bool,
    /// Skip in-flight TCP connections.
    pub tcp_skip_in_flight: bool,
    /// Link unlinked files back when possible.
    pub link_remap: bool,
    /// Allow external unix sockets.
    pub ext_unix_sk: bool,
    /// Allow shell jobs (sessions/terminals outside the container).
    pub shell_job: bool,
    /// Lazy (post-copy) memory via userfaultfd.
    pub lazy_pages: bool,
    /// Fd to write `\0` to once lazy pages are ready.
    pub status_fd: Option<i32>,
    /// Page server (address, port).
    pub page_server: Option<(String, u16)>,
    /// Dump/restore file locks.
    pub file_locks: bool,
    /// Memory only; the container keeps running.
    pub pre_dump: bool,
    /// Cgroup handling.
    pub manage_cgroups_mode: CgroupsMode,
    /// Namespaces to create empty instead of restoring.
    pub empty_ns: Vec<String>,
    /// Deduplicate memory images.
    pub auto_dedup: bool,
}

/// Everything `checkpoint` was asked to do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckpointOpts {
    /// Container to dump.
    pub container_id: String,
    /// Dump options.
    pub common: CommonOpts,
}

/// Everything `restore` was asked to do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestoreOpts {
    /// Container to restore (created under this id).
    pub container_id: String,
    /// Restore options shared with dump.
    pub common: CommonOpts,
    /// Console socket for a terminal container.
    pub console_socket: Option<PathBuf>,
    /// Bundle (None: the current directory).
    pub bundle: Option<PathBuf>,
    /// Return once restored.
    pub detach: bool,
    /// Where to write init's pid.
    pub pid_file: Option<PathBuf>,
    /// Do not become a subreaper.
    pub no_subreaper: bool,
    /// Do not pivot_root into the rootfs.
    pub no_pivot: bool,
    /// LSM profile TYPE:NAME.
    pub lsm_profile: Option<String>,
    /// LSM mount context.
    pub lsm_mount_context: Option<String>,
    /// Close TCP connections on restore.
    pub tcp_close: bool,
}

const NAMESPACES: &[&str] = &[
    "network", "ipc", "uts", "mount", "pid", "user", "cgroup", "time",
];

impl TryFrom<&CrCommonArgs> for CommonOpts {
    type Error = OptsError;
    fn try_from(a: &CrCommonArgs) -> Result<Self, OptsError> {
        let page_server = a
            .page_server
            .as_deref()
            .map(|s| {
                let (addr, port) = s
                    .rsplit_once(':')
                    .ok_or_else(|| OptsError::PageServer(s.to_string()))?;
                let port = port
                    .parse::<u16>()
                    .map_err(|_| OptsError::PageServer(s.to_string()))?;
                Ok((addr.trim_matches(['[', ']']).to_string(), port))
            })
            .transpose()?;
        for ns in &a.empty_ns {
            if !NAMESPACES.contains(&ns.as_str()) {
                return Err(OptsError::EmptyNs(ns.clone()));
            }
        }
        Ok(CommonOpts {
            image_path: a.image_path.clone(),
            work_path: a.work_path.clone(),
            parent_path: a.parent_path.clone(),
            leave_running: a.leave_running,
            tcp_established: a.tcp_established,
            tcp_skip_in_flight: a.tcp_skip_in_flight,
            link_remap: a.link_remap,
            ext_unix_sk: a.ext_unix_sk,
            shell_job: a.shell_job,
            lazy_pages: a.lazy_pages,
            status_fd: (a.status_fd >= 0).then_some(a.status_fd),
            page_server,
            file_locks: a.file_locks,
            pre_dump: a.pre_dump,
            manage_cgroups_mode: match &a.manage_cgroups_mode {
                Some(m) if !m.is_empty() => m.parse()?,
                _ => CgroupsMode::default(),
            },
            empty_ns: a.empty_ns.clone(),
            auto_dedup: a.auto_dedup,
        })
    }
}

impl TryFrom<&CheckpointArgs> for CheckpointOpts {
    type Error = OptsError;
    fn try_from(a: &CheckpointArgs) -> Result<Self, OptsError> {
        Ok(CheckpointOpts {
            container_id: a.container_id.clone(),
            common: (&a.common).try_into()?,
        })
    }
}

impl TryFrom<&RestoreArgs> for RestoreOpts {
    type Error = OptsError;
    fn try_from(a: &RestoreArgs) -> Result<Self, OptsError> {
        Ok(RestoreOpts {
            container_id: a.container_id.clone(),
            common: (&a.common).try_into()?,
            console_socket: a.console_socket.clone(),
            bundle: a.bundle.clone(),
            detach: a.detach,
            pid_file: a.pid_file.clone(),
            no_subreaper: a.no_subreaper,
            no_pivot: a.no_pivot,
            lsm_profile: a.lsm_profile.clone(),
            lsm_mount_context: a.lsm_mount_context.clone(),
            tcp_close: a.tcp_close,
        })
    }
}

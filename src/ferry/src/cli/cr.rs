//! `checkpoint` and `restore` arguments: every flag runc 1.1 has, parsed into the plain
//! option structs the engine consumes (`runtime::cr_opts`).

use std::path::PathBuf;

use clap::Args;

/// Flags both `checkpoint` and `restore` accept.
#[derive(Debug, Args, Clone, Default)]
pub struct CrCommonArgs {
    /// path for saving (checkpoint) or reading (restore) the image files
    #[arg(long = "image-path", value_name = "PATH")]
    pub image_path: Option<PathBuf>,
    /// path for saving work files and logs
    #[arg(long = "work-path", value_name = "PATH")]
    pub work_path: Option<PathBuf>,
    /// path for previous image files in pre-dump
    #[arg(long = "parent-path", value_name = "PATH")]
    pub parent_path: Option<PathBuf>,
    /// leave the process running after checkpointing
    #[arg(long = "leave-running")]
    pub leave_running: bool,
    /// allow open tcp connections
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// skip in-flight tcp connections
    #[arg(long = "tcp-skip-in-flight")]
    pub tcp_skip_in_flight: bool,
    /// allow to link unlinked files back when possible
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// allow external unix sockets
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// allow shell jobs
    #[arg(long = "shell-job")]
    pub shell_job: bool,
    /// use userfaultfd to lazily restore memory pages
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// write \0 to this FD once lazy-pages is ready
    #[arg(long = "status-fd", default_value_t = -1, allow_negative_numbers = true)]
    pub status_fd: i32,
    /// ADDRESS:PORT of the page server
    #[arg(long = "page-server", value_name = "ADDRESS:PORT")]
    pub page_server: Option<String>,
    /// handle file locks, for safety
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    /// dump container's memory information only, leave the container running after this
    #[arg(long = "pre-dump")]
    pub pre_dump: bool,
    /// cgroups mode: 'soft' (default), 'full', 'strict' and 'ignore'
    #[arg(long = "manage-cgroups-mode", value_name = "MODE")]
    pub manage_cgroups_mode: Option<String>,
    /// create a namespace, but don't restore its properties
    #[arg(long = "empty-ns", value_name = "NS")]
    pub empty_ns: Vec<String>,
    /// enable auto deduplication of memory images
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
}

/// `ferry checkpoint [options] <container-id>`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub common: CrCommonArgs,
    /// the container's id
    #[arg(value_name = "container-id")]
    pub container_id: String,
}

/// `ferry restore [options] <container-id>`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub common: CrCommonArgs,
    /// path to an AF_UNIX socket which will receive the console's pseudoterminal master
    #[arg(long = "console-socket", value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// path to the root of the bundle directory
    #[arg(short = 'b', long, value_name = "PATH")]
    pub bundle: Option<PathBuf>,
    /// detach from the container's process
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// specify the file to write the process id to
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// disable the use of the subreaper used to reap reparented processes
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    /// do not use pivot root to jail process inside rootfs
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Specify an LSM profile to be used during restore in the form of TYPE:NAME.
    #[arg(long = "lsm-profile", value_name = "TYPE:NAME")]
    pub lsm_profile: Option<String>,
    /// Specify an LSM mount context to be used during restore.
    #[arg(long = "lsm-mount-context", value_name = "CONTEXT")]
    pub lsm_mount_context: Option<String>,
    /// close tcp connections on restore
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// the container's id
    #[arg(value_name = "container-id")]
    pub container_id: String,
}

//! IPC namespace: sysctl limits and SysV shared memory, semaphores and message queues.
//!
//! Everything here is per `ipc_namespace`: the limits under `/proc/sys/kernel/{sem,msg*,shm*}`
//! and `/proc/sys/fs/mqueue/*` resolve against the opening thread's namespace, and the SysV
//! calls act on the caller's namespace. So both halves run on a helper thread that has
//! `setns`'d into the task's IPC namespace ([`crate::uts::enter`]).
//!
//! Dump walks each object table with the `*_STAT` commands (index -> id), reads shm content
//! through a read-only `shmat`, semaphore values with `GETALL`, and messages without dequeuing
//! them with `msgrcv(MSG_COPY)`. Restore sets the limits, then recreates every object with
//! its original id by writing the id to `kernel.{shm,sem,msg}_next_id` right before the
//! `*get(IPC_CREAT|IPC_EXCL)` call, as CRIU does, and checks the id it got.
//!
//! Images (CRIU's): `ipcns-var-ID.img` (one `ipc_var_entry`), `ipcns-shm-ID.img`
//! (`ipc_shm_entry` + content padded to 4 bytes), `ipcns-sem-ID.img` (`ipc_sem_entry` +
//! `nsems` u16 values padded to 8), `ipcns-msg-ID.img` (`ipc_msg_entry`, then `qnum` times a
//! length-prefixed `ipc_msg` + `msize` bytes padded to 8).

pub mod dump;
pub mod restore;
pub mod shm_pages;
pub mod sys;

pub use dump::dump_ipc;
pub use restore::restore_ipc;

/// Image names of IPC namespace `ns_id`.
pub fn image_names(ns_id: u32) -> [String; 4] {
    [
        format!("ipcns-var-{ns_id}.img"),
        format!("ipcns-shm-{ns_id}.img"),
        format!("ipcns-sem-{ns_id}.img"),
        format!("ipcns-msg-{ns_id}.img"),
    ]
}

/// What one dump or restore of an IPC namespace covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcSummary {
    /// Shared memory segment ids.
    pub shm_ids: Vec<i32>,
    /// Semaphore set ids.
    pub sem_ids: Vec<i32>,
    /// Message queue ids.
    pub msg_ids: Vec<i32>,
}

/// Messages of one queue: (mtype, text), oldest first.
pub type Messages = Vec<(u64, Vec<u8>)>;

/// Rounds `n` up to a multiple of `a` (a power of two).
pub(crate) fn round_up(n: usize, a: usize) -> usize {
    // Saturating: a corrupt size then fails the bounds check of the read, never overflows.
    n.saturating_add(a - 1) & !(a - 1)
}

/// Errors of the IPC module.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// Entering the task's namespace failed.
    #[error("ipc {stage}: {source}")]
    Enter {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: crate::uts::enter::EnterError,
    },
    /// A sysctl file could not be read or written.
    #[error("ipc {stage} of task {pid}: {path}: {source}")]
    Sysctl {
        /// Stage.
        stage: &'static str,
        /// Task.
        pid: i32,
        /// The /proc/sys path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A SysV call failed.
    #[error("ipc {stage} of task {pid}: {object}: {call}: {source}")]
    Sys {
        /// Stage.
        stage: &'static str,
        /// Task.
        pid: i32,
        /// Object ("shm id 32768", ...).
        object: String,
        /// The call.
        call: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// Image I/O.
    #[error("ipc {stage}: image {file}: {source}")]
    Image {
        /// Stage.
        stage: &'static str,
        /// File.
        file: String,
        /// Cause.
        source: ferry_images::dir::DirError,
    },
    /// Framing inside an image.
    #[error("ipc {stage}: {source}")]
    Frame {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: ferry_images::FrameError,
    },
    /// Image content ferry cannot apply.
    #[error("ipc restore of task {pid}: {file}: {what}")]
    Invalid {
        /// Task.
        pid: i32,
        /// Image file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// A feature of the images ferry does not restore yet.
    #[error("ipc restore of task {pid}: {file}: unsupported: {what}")]
    Unsupported {
        /// Task.
        pid: i32,
        /// Image file.
        file: String,
        /// What.
        what: String,
    },
}

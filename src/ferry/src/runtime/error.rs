//! Errors of the lifecycle verbs. The texts of the first group are runc's own: podman,
//! containerd and conmon match on them, so they are kept word for word.

use std::path::PathBuf;

use libcontainer::error::LibcontainerError;

/// What went wrong in a lifecycle verb.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// runc: libcontainer.ErrNotExist.
    #[error("container does not exist")]
    NotExist,
    /// runc: libcontainer.ErrExist.
    #[error("container with given ID already exists")]
    Exists,
    /// runc: the id failed validation.
    #[error("invalid container id format: {0}")]
    InvalidId(String),
    /// runc start on a running container.
    #[error("cannot start an already running container")]
    StartRunning,
    /// runc start on a stopped container.
    #[error("cannot start a container that has stopped")]
    StartStopped,
    /// runc start in any other state.
    #[error("cannot start a container in the {0} state")]
    StartState(String),
    /// runc delete without --force on a live container.
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped {
        /// container id
        id: String,
        /// its status, lower case
        status: String,
    },
    /// runc: libcontainer.ErrNotRunning (kill, pause, events, update on a stopped container).
    #[error("container not running")]
    NotRunning,
    /// runc events on a stopped container.
    #[error("container with id {0} is not running")]
    EventsNotRunning(String),
    /// runc restore onto a live container.
    #[error("container with id {0} already running")]
    RestoreRunning(String),
    /// An outside tool (ps) failed or answered in an unexpected shape.
    #[error("{tool}: {message}")]
    Tool {
        /// the tool
        tool: &'static str,
        /// what went wrong
        message: String,
    },
    /// runc: libcontainer.ErrNotPaused.
    #[error("container not paused")]
    NotPaused,
    /// runc exec on a stopped container.
    #[error("exec failed: cannot exec in a stopped container")]
    ExecStopped,
    /// runc exec on a paused container.
    #[error("exec failed: cannot exec in a paused container (use --ignore-paused to override)")]
    ExecPaused,
    /// runc's parseSignal.
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    /// Bad flag value or combination.
    #[error("{0}")]
    Usage(String),
    /// Known limitation of this build.
    #[error("{0}")]
    Unsupported(String),
    /// libcontainer failed in a named stage.
    #[error("{stage}: {source}")]
    Container {
        /// what ferry was doing
        stage: String,
        /// libcontainer's error
        #[source]
        source: LibcontainerError,
    },
    /// cgroup access failed in a named stage.
    #[error("{stage}: {message}")]
    Cgroup {
        /// what ferry was doing
        stage: String,
        /// libcgroups' error, rendered (its error types differ per hierarchy)
        message: String,
    },
    /// I/O on a path failed.
    #[error("{stage} {path:?}: {source}")]
    Io {
        /// what ferry was doing
        stage: &'static str,
        /// the file
        path: PathBuf,
        /// the OS error
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{stage}: {source}")]
    Sys {
        /// what ferry was doing
        stage: String,
        /// errno
        #[source]
        source: nix::Error,
    },
    /// JSON (de)serialisation failed.
    #[error("{stage}: {source}")]
    Json {
        /// what ferry was doing
        stage: String,
        /// serde_json's error
        #[source]
        source: serde_json::Error,
    },
    /// The OCI spec could not be built or read.
    #[error("{stage}: {source}")]
    Spec {
        /// what ferry was doing
        stage: String,
        /// oci-spec's error
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// Checkpoint/restore option parsing failed.
    #[error(transparent)]
    CrOpts(#[from] super::cr_opts::OptsError),
    /// Checkpoint or restore failed.
    #[error(transparent)]
    Cr(#[from] super::cr_error::CrError),
}

impl Error {
    /// Wraps a libcontainer error with the stage it happened in.
    pub fn container(stage: impl Into<String>) -> impl FnOnce(LibcontainerError) -> Self {
        let stage = stage.into();
        move |source| Error::Container { stage, source }
    }

    /// Wraps a cgroup error with the stage it happened in.
    pub fn cgroup<E: std::fmt::Display>(stage: impl Into<String>) -> impl FnOnce(E) -> Self {
        let stage = stage.into();
        move |e| Error::Cgroup {
            stage,
            message: e.to_string(),
        }
    }

    /// Wraps an I/O error with the stage and path.
    pub fn io(
        stage: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            stage,
            path,
            source,
        }
    }

    /// Wraps an errno with the stage.
    pub fn sys(stage: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let stage = stage.into();
        move |source| Error::Sys { stage, source }
    }

    /// Wraps a JSON error with the stage.
    pub fn json(stage: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let stage = stage.into();
        move |source| Error::Json { stage, source }
    }

    /// Wraps an oci-spec error with the stage.
    pub fn spec(stage: impl Into<String>) -> impl FnOnce(oci_spec::OciSpecError) -> Self {
        let stage = stage.into();
        move |source| Error::Spec { stage, source }
    }
}

/// Result of a lifecycle verb.
pub type Result<T> = std::result::Result<T, Error>;

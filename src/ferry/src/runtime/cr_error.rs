//! Errors of `ferry checkpoint` and `ferry restore`. runc's own texts are kept word for word
//! where callers match on them; the rest name the container, the stage and the path.

use std::path::PathBuf;

use ferry_engine::container::ContainerError;
use libcontainer::error::LibcontainerError;

/// What went wrong in a checkpoint or a restore.
#[derive(Debug, thiserror::Error)]
pub enum CrError {
    /// runc's refusal for a created or stopped container.
    #[error("Container cannot be checkpointed in {0} state")]
    CannotCheckpoint(&'static str),
    /// The engine's container checkpoint failed (the container runs on).
    #[error("checkpoint of container {id}: {source}")]
    Checkpoint {
        /// container id
        id: String,
        /// the engine's error
        #[source]
        source: Box<ContainerError>,
    },
    /// Restoring the container's resources failed.
    #[error("restore of container {id}: {source}")]
    Resources {
        /// container id
        id: String,
        /// the engine's error
        #[source]
        source: Box<ContainerError>,
    },
    /// The container's init (the engine's in-place restore) reported a failure.
    #[error("restore of container {id}: {message}")]
    Init {
        /// container id
        id: String,
        /// the init's report
        message: String,
    },
    /// The image directory cannot be restored from.
    #[error("restore of container {id}: image directory {path:?}: {problem}")]
    BadImages {
        /// container id
        id: String,
        /// the directory
        path: PathBuf,
        /// what is wrong
        problem: String,
    },
    /// The images need an option the caller did not give (CRIU's rules).
    #[error("{stage}: {message}")]
    Refused {
        /// restore of which container
        stage: String,
        /// why
        message: String,
    },
    /// A capability this build does not have yet.
    #[error("{stage}: not supported yet: {what}")]
    NotSupported {
        /// checkpoint or restore, and of what
        stage: String,
        /// the missing piece
        what: String,
    },
    /// libcontainer failed.
    #[error("{stage}: {source}")]
    Container {
        /// what ferry was doing
        stage: String,
        /// libcontainer's error
        #[source]
        source: Box<LibcontainerError>,
    },
    /// Building the restored container failed (ferry's side or its init's, in its words).
    #[error("{stage}: {message}")]
    Build {
        /// what ferry was doing
        stage: String,
        /// what failed
        message: String,
    },
    /// The cgroup manager failed.
    #[error("{stage}: {message}")]
    Cgroup {
        /// what ferry was doing
        stage: String,
        /// its error, rendered
        message: String,
    },
    /// I/O on a path.
    #[error("{stage} {path:?}: {source}")]
    Io {
        /// what ferry was doing
        stage: &'static str,
        /// the path
        path: PathBuf,
        /// the OS error
        #[source]
        source: std::io::Error,
    },
    /// JSON (descriptors.json, config.json).
    #[error("{stage}: {source}")]
    Json {
        /// what ferry was doing
        stage: String,
        /// serde_json's error
        #[source]
        source: serde_json::Error,
    },
}

impl CrError {
    /// Wraps an I/O error with the stage and path.
    pub fn io(
        stage: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CrError::Io {
            stage,
            path,
            source,
        }
    }

    /// A typed "not supported yet".
    pub fn unsupported(stage: impl Into<String>, what: impl Into<String>) -> Self {
        CrError::NotSupported {
            stage: stage.into(),
            what: what.into(),
        }
    }
}

//! UTS namespace: hostname and NIS domainname.
//!
//! Both strings live in the task's `uts_namespace` (`uname(2)` reads them,
//! `sethostname(2)`/`setdomainname(2)` write them, each per namespace). Dump enters the
//! namespace from a helper thread ([`enter`]) and writes one `utsns_entry` to
//! `utsns-ID.img`; restore enters the caller's prepared namespace and sets both back.
//! A never-set domainname reads as `(none)`, which CRIU stores verbatim and so does ferry.

pub mod dump;
pub mod enter;
pub mod restore;

pub use dump::dump_uts;
pub use restore::restore_uts;

/// Hostname and domainname of one UTS namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtsState {
    /// `uname().nodename`, the hostname.
    pub nodename: String,
    /// `uname().domainname`.
    pub domainname: String,
}

/// Name of the image for UTS namespace `ns_id`.
pub fn image_name(ns_id: u32) -> String {
    format!("utsns-{ns_id}.img")
}

/// Errors of the UTS module.
#[derive(Debug, thiserror::Error)]
pub enum UtsError {
    /// Entering the task's namespace failed.
    #[error("uts {stage}: {source}")]
    Enter {
        /// Stage (dump or restore).
        stage: &'static str,
        /// Cause.
        source: enter::EnterError,
    },
    /// A system call failed.
    #[error("uts {stage} of task {pid}: {call}: {source}")]
    Sys {
        /// Stage.
        stage: &'static str,
        /// Task.
        pid: i32,
        /// The call.
        call: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// Image I/O.
    #[error("uts {stage}: image {file}: {source}")]
    Image {
        /// Stage.
        stage: &'static str,
        /// Image file.
        file: String,
        /// Cause.
        source: ferry_images::dir::DirError,
    },
    /// A value the kernel cannot take.
    #[error("uts restore of task {pid}: {file}: {what}")]
    Invalid {
        /// Task.
        pid: i32,
        /// Image file.
        file: String,
        /// What is wrong.
        what: String,
    },
}

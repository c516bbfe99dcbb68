//! PID namespaces: a tree whose root is the init (PID 1) of its own pid namespace, as in a
//! container.
//!
//! Kernel mechanism. A task has one pid per pid namespace it is a member of, from the one
//! /proc was mounted in down to its own; /proc/PID/status lists them in `NSpid` (and the group
//! and session leaders' in `NSpgid`/`NSsid`), the last number being the innermost. Dump works on
//! host pids (ptrace, /proc) and writes the innermost ones, as CRIU does for containers.
//! Restore creates the namespace with `clone3(CLONE_NEWPID)` for the root, which becomes its
//! PID 1; every later `clone3(set_tid)` made inside the namespace names the pid in that
//! namespace (`set_tid[0]` is the innermost level), so the tree gets its pids back. The in-place
//! mode ([`inplace`]) runs in a process that already is PID 1 of a fresh namespace, the way a
//! container runtime's init is, and is finished from outside the namespace ([`inplace_finish`]).

pub mod dump;
pub mod inplace;
pub mod inplace_finish;
pub mod restore;

use thiserror::Error;

/// Errors of the pid namespace stages.
#[derive(Debug, Error)]
pub enum PidNsError {
    /// /proc could not be read.
    #[error("pid namespace: task {pid}: reading {path}: {source}")]
    Proc {
        /// Task (host pid).
        pid: i32,
        /// File.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// /proc/PID/status has no usable NSpid-style line.
    #[error("pid namespace: task {pid}: {path} has no usable {field} line")]
    NoField {
        /// Task (host pid).
        pid: i32,
        /// File.
        path: String,
        /// Line.
        field: &'static str,
    },
    /// A shape of namespaces ferry does not dump or restore.
    #[error("pid namespace: task {pid}: {what} is not supported by ferry")]
    Unsupported {
        /// Task (host pid on dump, namespace pid on restore).
        pid: i32,
        /// What.
        what: String,
    },
    /// clone3 of the namespace's init failed.
    #[error("pid namespace: clone3(CLONE_NEWPID) for the init of the tree: {0}")]
    Clone(std::io::Error),
}

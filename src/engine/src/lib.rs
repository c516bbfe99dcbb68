//! ferry-engine: checkpoint/restore of process trees in CRIU's v1.1 image format.
//!
//! Dump freezes a tree with ptrace (ferry-inject), collects each resource, and writes images
//! through ferry-images; restore forks the tree with its original PIDs and hands every task to
//! the restorer blob, which rebuilds the address space and returns with rt_sigreturn. Each
//! resource lives in one module holding both halves; `dump` and `restore` only order stages.

pub mod container;
pub mod criu;
pub mod dump;
pub mod dump_log;
pub mod dump_task;
pub mod freeze;
pub mod log;
pub mod restore;
pub mod restore_finish;
pub mod restore_range;
pub mod restore_task;
pub mod restore_verify;
pub mod restorer;
pub mod stage;
pub mod tree_images;

pub mod creds;
pub mod files;
pub mod fs;
pub mod mem;
pub mod pidns;
pub mod pstree;
pub mod regs;
pub mod seccomp;
pub mod sigact;
pub mod timens;
pub mod timers;
pub mod userns;

// Container-level resources (issue 7).
pub mod cgroups;
pub mod ipc;
pub mod mounts;
pub mod net;
pub mod uts;

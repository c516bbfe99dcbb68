//! ferry-engine: checkpoint/restore of process trees in CRIU's v1.1 image format.
//!
//! Dump freezes a tree with ptrace (ferry-inject), collects each resource, and writes images
//! through ferry-images; restore forks the tree with its original PIDs and hands every task to
//! the restorer blob, which rebuilds the address space and returns with rt_sigreturn. Each
//! resource lives in one module holding both halves; `dump` and `restore` only order stages.

pub mod criu;
pub mod dump;
pub mod freeze;
pub mod restore;

pub mod creds;
pub mod files;
pub mod fs;
pub mod mem;
pub mod pstree;
pub mod regs;
pub mod sigact;
pub mod timers;

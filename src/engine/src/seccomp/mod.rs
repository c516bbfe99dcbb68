//! seccomp: each thread's mode and filter chain (thread_core.seccomp_* + seccomp.img).

pub mod dump;
pub mod restore;

//! itimers and POSIX timers (core.tc.timers).

pub mod dump;
pub mod restore;

//! cwd, root and umask (fs-PID.img).

pub mod dump;
pub mod restore;

//! File descriptors (files.img + fdinfo-N.img): for now /dev/null, regular files, pipes and ttys.

pub mod dump;
pub mod restore;

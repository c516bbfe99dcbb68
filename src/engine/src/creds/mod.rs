//! Credentials, capabilities, securebits, personality, rlimits.

pub mod dump;
pub mod restore;

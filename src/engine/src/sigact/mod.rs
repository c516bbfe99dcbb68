//! Signals: sigactions, blocked masks, pending signals (task and shared), sigaltstack.

pub mod dump;
pub mod restore;

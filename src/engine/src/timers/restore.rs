//! Restore half.

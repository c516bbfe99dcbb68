//! Dump half.

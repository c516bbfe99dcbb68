//! Shared helpers for ferry's end-to-end tests.

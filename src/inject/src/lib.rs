//! Parasite injection (placeholder).

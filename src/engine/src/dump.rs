//! The dump pipeline: orders the stages, undoes them on error.

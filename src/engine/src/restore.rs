//! The restore pipeline: orders the stages, kills what it forked on error.

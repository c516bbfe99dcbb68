//! CRIU v1.1 image format for ferry.
//!
//! A checkpoint is a directory of image files. Each protobuf image starts with one or two
//! little-endian u32 magics and holds a sequence of `u32 length + protobuf message` entries, some
//! followed by a raw payload; page data and archives are raw files with no header. This crate
//! holds the schemas (generated from `proto/`), the magic table, a strict framing reader/writer,
//! crit-compatible JSON conversion, an image-directory type with cross-reference checks and
//! ferry's own integrity manifest, and the `ferry image` subcommands.

pub mod cmd;
pub mod dir;
pub mod dynamic;
pub mod framing;
pub mod json;
pub mod magic;
pub mod manifest;
pub mod pagemap;
pub mod pretty;
pub mod schema;
pub mod show;
pub mod verify;

/// Prost types generated from `proto/` (CRIU's message names in Rust case).
#[allow(clippy::all, missing_docs, non_camel_case_types)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use dir::ImageDir;
pub use framing::{FrameError, ImageReader, ImageWriter};
pub use magic::ImageKind;

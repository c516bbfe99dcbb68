//! Builds blobs/parasite into a flat binary, checks it, and generates the Rust that embeds it
//! (the shared discipline is in blobs/build_blob.rs; see docs/blob-abi.md).

#[path = "src/elfcheck.rs"]
mod elfcheck;

#[path = "../../blobs/build_blob.rs"]
mod build_blob;

use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("ferry-inject build: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    println!("cargo:rerun-if-changed=src/elfcheck.rs");
    let built = build_blob::build(&build_blob::blobs_dir()?, "parasite", &out)?;
    build_blob::write_embedding(&out, "parasite", "PARASITE", &built)
}

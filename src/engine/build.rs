//! Builds blobs/restorer into a flat binary, checks it, and generates the Rust that embeds it.
//!
//! The same discipline as the parasite's (blobs/build_blob.rs, docs/blob-abi.md): a nested cargo
//! compiles the no_std blob for the host target as a static PIE with our linker script,
//! `objcopy -O binary` cuts the flat image, and the shared `elfcheck` fails the build on any
//! relocation but R_X86_64_RELATIVE, undefined symbols, TLS or INTERP. The relocation table goes
//! into the generated file because lld leaves the addends out of the image.

#[path = "../inject/src/elfcheck.rs"]
#[allow(dead_code)]
mod elfcheck;

#[path = "../../blobs/build_blob.rs"]
mod build_blob;

use std::path::PathBuf;

/// Offset of the `syscall; int3` pair (ferry_blob_abi::restorer::RESTORER_SYSCALL_OFFSET).
const SYSCALL_OFFSET: usize = 2;

fn main() {
    if let Err(e) = run() {
        eprintln!("ferry-engine build: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    println!("cargo:rerun-if-changed=../inject/src/elfcheck.rs");
    let built = build_blob::build(&build_blob::blobs_dir()?, "restorer", &out)?;
    // The final munmap runs from a fixed `syscall; int3` pair right after the entry's short jump.
    let flat =
        std::fs::read(&built.bin).map_err(|e| format!("read {}: {e}", built.bin.display()))?;
    if flat.get(SYSCALL_OFFSET..SYSCALL_OFFSET + 3) != Some(&[0x0f, 0x05, 0xcc][..]) {
        return Err(format!(
            "{}: no `syscall; int3` at offset {SYSCALL_OFFSET}",
            built.bin.display()
        ));
    }
    build_blob::write_embedding(&out, "restorer", "RESTORER", &built)
}

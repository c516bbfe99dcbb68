//! Builds blobs/restorer into a flat binary, checks it, and generates the Rust that embeds it.
//!
//! The same discipline as the parasite's (src/inject/build.rs, docs/blob-abi.md): a nested cargo
//! compiles the no_std blob for the host target as a static PIE with our linker script,
//! `objcopy -O binary` cuts the flat image, and the shared `elfcheck` fails the build on any
//! relocation but R_X86_64_RELATIVE, undefined symbols, TLS or INTERP. The relocation table goes
//! into the generated file because lld leaves the addends out of the image.

#[path = "../inject/src/elfcheck.rs"]
#[allow(dead_code)]
mod elfcheck;

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Offset of the `syscall; int3` pair (ferry_blob_abi::restorer::RESTORER_SYSCALL_OFFSET).
const SYSCALL_OFFSET: usize = 2;

fn main() {
    if let Err(e) = run() {
        eprintln!("ferry-engine build: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let blobs = manifest.join("../../blobs");
    let blobs = blobs
        .canonicalize()
        .map_err(|e| format!("blob sources at {}: {e}", blobs.display()))?;
    for p in [
        "abi/src",
        "abi/Cargo.toml",
        "restorer/src",
        "restorer/Cargo.toml",
        "restorer/Cargo.lock",
        "restorer/restorer.ld",
    ] {
        println!("cargo:rerun-if-changed={}", blobs.join(p).display());
    }
    println!("cargo:rerun-if-changed=../inject/src/elfcheck.rs");
    println!("cargo:rerun-if-env-changed=OBJCOPY");

    let dir = blobs.join("restorer");
    let elf = build_blob(&dir, "ferry-restorer", "restorer.ld", &out)?;
    let bin = out.join("restorer.bin");
    fs::copy(&elf, out.join("restorer.elf")).map_err(|e| format!("copy {}: {e}", elf.display()))?;
    let elf_bytes = fs::read(&elf).map_err(|e| format!("read {}: {e}", elf.display()))?;
    let checked = elfcheck::check(&elf_bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
    objcopy(&elf, &bin)?;
    let flat = fs::read(&bin).map_err(|e| format!("read {}: {e}", bin.display()))?;
    if flat.len() as u64 != checked.image_end {
        return Err(format!(
            "{}: objcopy produced {} bytes, the ELF's image ends at {}",
            bin.display(),
            flat.len(),
            checked.image_end
        ));
    }
    // The final munmap runs from a fixed `syscall; int3` pair right after the entry's short jump.
    if flat.get(SYSCALL_OFFSET..SYSCALL_OFFSET + 3) != Some(&[0x0f, 0x05, 0xcc][..]) {
        return Err(format!(
            "{}: no `syscall; int3` at offset {SYSCALL_OFFSET}",
            bin.display()
        ));
    }

    let mut gen = String::new();
    let _ = writeln!(gen, "/// The flat restorer image; entry at offset 0.");
    let _ = writeln!(
        gen,
        "pub static RESTORER_BLOB: &[u8] = include_bytes!({:?});",
        bin.display().to_string()
    );
    let _ = writeln!(
        gen,
        "/// RELATIVE relocations of the restorer: (offset, addend), store `base + addend` at `base + offset`."
    );
    let _ = write!(gen, "pub static RESTORER_RELOCS: &[(u64, u64)] = &[");
    for (off, add) in &checked.relocs {
        let _ = write!(gen, "({off:#x}, {add:#x}), ");
    }
    let _ = writeln!(gen, "];");
    fs::write(out.join("restorer_blob.rs"), gen).map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the nested cargo for the blob crate and returns the path of the linked ELF.
fn build_blob(dir: &Path, bin_name: &str, script: &str, out: &Path) -> Result<PathBuf, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("blob-target");
    let flags = [
        "-C",
        "relocation-model=pie",
        "-C",
        "relro-level=off",
        "-C",
        "link-arg=-nostartfiles",
        "-C",
        "link-arg=-nostdlib",
        "-C",
        "link-arg=-static-pie",
        "-C",
        &format!("link-arg=-Wl,-T,{}", dir.join(script).display()),
    ]
    .join("\x1f");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--release", "--offline", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // cargo sets CARGO_ENCODED_RUSTFLAGS for build scripts and the child prefers it.
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS");
    for (k, _) in env::vars_os() {
        if k.to_string_lossy().starts_with("CARGO_PROFILE_") {
            cmd.env_remove(k);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run nested cargo for {}: {e}", dir.display()))?;
    if !status.success() {
        return Err(format!(
            "nested cargo build of {} failed: {status}",
            dir.display()
        ));
    }
    Ok(target_dir.join("release").join(bin_name))
}

fn objcopy(elf: &Path, bin: &Path) -> Result<(), String> {
    let tool = env::var_os("OBJCOPY").unwrap_or_else(|| "objcopy".into());
    let mut cmd = Command::new(&tool);
    cmd.args(["-O", "binary"]);
    for s in elfcheck::STRIPPED {
        cmd.args(["-R", s]);
    }
    let status = cmd
        .arg(elf)
        .arg(bin)
        .status()
        .map_err(|e| format!("cannot run {} (binutils): {e}", tool.to_string_lossy()))?;
    if !status.success() {
        return Err(format!(
            "objcopy -O binary {} failed: {status}",
            elf.display()
        ));
    }
    Ok(())
}

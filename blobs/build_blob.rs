//! Host-side build-script helper shared by src/inject/build.rs (parasite) and src/engine/build.rs
//! (restorer), included with `#[path]`; the including build script must also include
//! `elfcheck` as a module of its own root.
//!
//! A nested cargo compiles the no_std blob crate `blobs/NAME` for the host target with the blob's
//! own flags (position-independent static-pie, no start files, `NAME.ld`) into a target dir under
//! OUT_DIR. `objcopy -O binary` then cuts the flat image, and `elfcheck` fails the build on any
//! relocation but R_X86_64_RELATIVE, any undefined symbol, TLS or INTERP. The relocation table
//! (offset, addend) goes into the generated file for the loader, because lld leaves the addends
//! out of the image itself.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A built and checked blob.
pub struct Built {
    /// The flat image (OUT_DIR/NAME.bin).
    pub bin: PathBuf,
    /// RELATIVE relocations: (offset, addend).
    pub relocs: Vec<(u64, u64)>,
}

/// The canonical `blobs/` directory beside the including crate (`src/CRATE`).
pub fn blobs_dir() -> Result<PathBuf, String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let blobs = manifest.join("../../blobs");
    blobs
        .canonicalize()
        .map_err(|e| format!("blob sources at {}: {e}", blobs.display()))
}

/// Builds `blobs/NAME` (bin `ferry-NAME`, linker script `NAME.ld`) into OUT_DIR/NAME.bin, checks
/// it, and prints the rerun-if-changed lines for its sources.
pub fn build(blobs: &Path, name: &str, out: &Path) -> Result<Built, String> {
    for p in [
        "abi/src".to_string(),
        "abi/Cargo.toml".to_string(),
        "build_blob.rs".to_string(),
        "mem.rs".to_string(),
        format!("{name}/src"),
        format!("{name}/Cargo.toml"),
        format!("{name}/Cargo.lock"),
        format!("{name}/{name}.ld"),
    ] {
        println!("cargo:rerun-if-changed={}", blobs.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=OBJCOPY");

    let dir = blobs.join(name);
    let elf = nested_cargo(&dir, &format!("ferry-{name}"), &format!("{name}.ld"), out)?;
    let bin = out.join(format!("{name}.bin"));
    fs::copy(&elf, out.join(format!("{name}.elf")))
        .map_err(|e| format!("copy {}: {e}", elf.display()))?;
    let elf_bytes = fs::read(&elf).map_err(|e| format!("read {}: {e}", elf.display()))?;
    let checked =
        crate::elfcheck::check(&elf_bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
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
    Ok(Built {
        bin,
        relocs: checked.relocs,
    })
}

/// Writes OUT_DIR/NAME_blob.rs with `PREFIX_BLOB` (the image) and `PREFIX_RELOCS`.
pub fn write_embedding(out: &Path, name: &str, prefix: &str, built: &Built) -> Result<(), String> {
    let mut gen = String::new();
    let _ = writeln!(gen, "/// The flat {name} image; entry at offset 0.");
    let _ = writeln!(
        gen,
        "pub static {prefix}_BLOB: &[u8] = include_bytes!({:?});",
        built.bin.display().to_string()
    );
    let _ = writeln!(
        gen,
        "/// RELATIVE relocations of the {name}: (offset, addend), store `base + addend` at `base + offset`."
    );
    let _ = write!(gen, "pub static {prefix}_RELOCS: &[(u64, u64)] = &[");
    for (off, add) in &built.relocs {
        let _ = write!(gen, "({off:#x}, {add:#x}), ");
    }
    let _ = writeln!(gen, "];");
    fs::write(out.join(format!("{name}_blob.rs")), gen).map_err(|e| e.to_string())
}

/// Runs the nested cargo for one blob crate and returns the path of the linked ELF.
fn nested_cargo(dir: &Path, bin_name: &str, script: &str, out: &Path) -> Result<PathBuf, String> {
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
        // The child prefers CARGO_ENCODED_RUSTFLAGS over RUSTFLAGS, and cargo always sets it for
        // build scripts (to the host crate's flags): replace it with the blob's.
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        // clippy-driver wraps workspace members of the outer build only.
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
    for s in crate::elfcheck::STRIPPED {
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

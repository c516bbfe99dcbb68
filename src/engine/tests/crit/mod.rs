//! Debian's `crit` (criu package) as the outside reader of the engine's images: ferry writes
//! CRIU's v1.1 format, so every protobuf image a dump leaves must decode with it. The tests'
//! one place to run `crit decode`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// `crit decode -i DIR/IMG` must succeed; returns its JSON.
pub fn decode(dir: &Path, img: &str) -> String {
    let out = Command::new("/usr/bin/crit")
        .args(["decode", "-i"])
        .arg(dir.join(img))
        .output()
        .expect("run crit (Debian's criu package)");
    assert!(
        out.status.success(),
        "crit decode {img} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Decodes every file of `dir` that `wanted` keeps (by name); returns their names, sorted.
pub fn decode_all(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("images in {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| wanted(n))
        .collect();
    names.sort();
    for n in &names {
        decode(dir, n);
    }
    names
}

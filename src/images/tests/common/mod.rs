//! Shared helpers for the crate's fixture tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `$FERRY_FIXTURES` or `../shared/fixtures/criu-4.2` beside the workspace; panics when missing so
/// a CI without fixtures fails instead of skipping.
pub fn fixtures() -> PathBuf {
    let p = match std::env::var_os("FERRY_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/criu-4.2"),
    };
    assert!(
        p.join("README.md").is_file(),
        "CRIU 4.2 fixtures not found at {} (set FERRY_FIXTURES)",
        p.display()
    );
    p
}

/// The plain fixtures with crit decodes beside them.
pub const SETS: &[&str] = &["loop", "tree", "sigs", "files", "runc-busybox"];

/// Every (set, image file name) that has a crit JSON decode.
pub fn decoded_images() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for s in SETS {
        let dir = fixtures().join(s).join("json");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        v.extend(names.into_iter().map(|n| (s.to_string(), n)));
    }
    v
}

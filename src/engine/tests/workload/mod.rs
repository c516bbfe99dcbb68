//! Builds the tests' static C workloads once per source content, safely across the parallel test
//! processes nextest runs: the binary sits in a directory named by a hash of its source, the
//! shared workload.h and its flags;
//! it is built under an flock into a temporary name and renamed into place, and an existing binary
//! is never replaced — so a workload another test is running never turns into "(deleted)" under
//! it (a dump refuses mappings of deleted files).
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

/// `gcc -static FLAGS -o .../NAME tests/workloads/SRC`, built once; returns the binary's path.
pub fn build(src: &str, name: &str, flags: &[&str]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(src);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    // The shared header is part of every workload that includes it.
    if let Ok(hdr) = std::fs::read(path.with_file_name("workload.h")) {
        hdr.hash(&mut h);
    }
    flags.hash(&mut h);
    let stem = src.trim_end_matches(".c");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("workloads")
        .join(format!("{stem}-{:016x}", h.finish()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    if out.exists() {
        return out;
    }
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a file this function holds open; released when it is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !out.exists() {
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let st = Command::new("gcc")
            .arg("-static")
            .args(flags)
            .arg("-o")
            .arg(&tmp)
            .arg(&path)
            .status()
            .expect("run gcc");
        assert!(st.success(), "gcc {src} failed: {st}");
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

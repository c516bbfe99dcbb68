//! Debian's `crit` (CRIU 3.17, an outside decoder) accepts the images ferry encodes: every
//! fixture re-encoded from crit's JSON, and images written through the typed writer API.
//! The test fails (never skips) when /usr/bin/crit is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_images::{json, pb, ImageDir};

fn crit() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("FERRY_CRIT").unwrap_or_else(|| "/usr/bin/crit".into()));
    assert!(
        p.is_file(),
        "crit not found at {} (install Debian's criu package or set FERRY_CRIT)",
        p.display()
    );
    p
}

fn crit_decode(file: &Path) -> serde_json::Value {
    let out = Command::new(crit())
        .args(["decode", "-i"])
        .arg(file)
        .output()
        .expect("run crit");
    assert!(
        out.status.success(),
        "crit decode {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("crit output for {}: {e}", file.display()))
}

#[test]
fn crit_accepts_every_image_ferry_encodes() {
    let t = tempfile::tempdir().unwrap();
    let all = common::decoded_images();
    let jobs: Vec<(PathBuf, String, usize)> = all
        .iter()
        .map(|(set, name)| {
            let j: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    common::fixtures()
                        .join(set)
                        .join("json-plain")
                        .join(format!("{name}.json")),
                )
                .unwrap(),
            )
            .unwrap();
            let img = json::json_to_image(name, &j).unwrap();
            let bytes = img.encode(name).unwrap();
            let dir = t.path().join(set);
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            (p, img.kind.name.to_string(), img.entries.len())
        })
        .collect();
    // Two workers: crit is a Python start-up per file.
    let (a, b) = jobs.split_at(jobs.len() / 2);
    std::thread::scope(|s| {
        for part in [a, b] {
            s.spawn(move || {
                for (p, magic, n) in part {
                    let v = crit_decode(p);
                    assert_eq!(v["magic"], magic.as_str(), "{}", p.display());
                    assert_eq!(
                        v["entries"].as_array().map(Vec::len),
                        Some(*n),
                        "{}",
                        p.display()
                    );
                }
            });
        }
    });
    assert!(jobs.len() > 60);
}

#[test]
fn crit_reads_images_written_with_the_typed_api() {
    let t = tempfile::tempdir().unwrap();
    let d = ImageDir::create(t.path()).unwrap();
    let tree = vec![
        pb::PstreeEntry {
            pid: 4242,
            ppid: 0,
            pgid: 4242,
            sid: 4242,
            threads: vec![4242, 4243],
        },
        pb::PstreeEntry {
            pid: 4244,
            ppid: 4242,
            pgid: 4242,
            sid: 4242,
            threads: vec![4244],
        },
    ];
    d.write_entries("pstree.img", &tree).unwrap();
    let core = pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        tc: Some(pb::TaskCoreEntry {
            task_state: 1,
            comm: "ferry-test".into(),
            blk_sigset: 0x4_0000_0001,
            ..Default::default()
        }),
        ..Default::default()
    };
    d.write_entries("core-4242.img", std::slice::from_ref(&core))
        .unwrap();
    let mut w = d.writer("pagemap-4242.img").unwrap();
    w.write_entry(&pb::PagemapHead { pages_id: 1 }).unwrap();
    w.write_entry(&pb::PagemapEntry {
        vaddr: 0x7f00_0000_0000,
        compat_nr_pages: Some(0),
        flags: Some(4),
        nr_pages: Some(3),
        ..Default::default()
    })
    .unwrap();
    w.finish().unwrap();
    let v = crit_decode(&t.path().join("pstree.img"));
    assert_eq!(v["magic"], "PSTREE");
    assert_eq!(v["entries"][0]["threads"], serde_json::json!([4242, 4243]));
    assert_eq!(v["entries"][1]["ppid"], 4242);
    let v = crit_decode(&t.path().join("core-4242.img"));
    assert_eq!(v["entries"][0]["mtype"], "X86_64");
    assert_eq!(v["entries"][0]["tc"]["comm"], "ferry-test");
    assert_eq!(v["entries"][0]["tc"]["blk_sigset"], 0x4_0000_0001u64);
    let v = crit_decode(&t.path().join("pagemap-4242.img"));
    assert_eq!(v["magic"], "PAGEMAP");
    assert_eq!(v["entries"][0]["pages_id"], 1);
    assert_eq!(v["entries"][1]["vaddr"], 0x7f00_0000_0000u64);
    assert_eq!(v["entries"][1]["flags"], 4);
}

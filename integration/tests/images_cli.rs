//! `ferry image` end to end, through the real binary, on the CRIU 4.2 fixtures: decode (plain and
//! `--pretty`) equals crit's JSON as data, encode of either reproduces every image byte for byte,
//! Debian's `crit` reads what ferry encodes, `show` summarises the runc container, `verify`
//! accepts the clean sets, and every corrupted fixture gives a one-line error naming file and
//! offset with a non-zero exit. Missing fixtures or crit fail the test; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_integration::{ferry_bin, fixtures_dir};

const SETS: &[&str] = &["loop", "tree", "sigs", "files", "runc-busybox"];

fn fixtures() -> PathBuf {
    let f = fixtures_dir();
    assert!(
        f.join("README.md").is_file(),
        "CRIU 4.2 fixtures missing at {} (set FERRY_FIXTURES)",
        f.display()
    );
    f
}

fn ferry(args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .output()
        .expect("run ferry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (set, image name) for every image that has a crit decode beside it.
fn images() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for s in SETS {
        let mut names: Vec<String> = std::fs::read_dir(fixtures().join(s).join("json"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        v.extend(names.into_iter().map(|n| (s.to_string(), n)));
    }
    assert!(v.len() > 60, "only {} fixture images found", v.len());
    v
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn decode_matches_crit_plain_and_pretty() {
    let t = tempfile::tempdir().unwrap();
    let mut bad = Vec::new();
    for (set, name) in images() {
        let img = fixtures().join(&set).join("images").join(&name);
        for (sub, extra) in [("json-plain", None), ("json", Some("--pretty"))] {
            let out = t.path().join(format!("{set}-{name}-{sub}.json"));
            let mut args = vec![
                "image",
                "decode",
                "-i",
                img.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ];
            args.extend(extra);
            let o = ferry(&args);
            assert!(
                o.status.success(),
                "decode {set}/{name}: {}",
                text(&o.stderr)
            );
            let want = read_json(&fixtures().join(&set).join(sub).join(format!("{name}.json")));
            if read_json(&out) != want {
                bad.push(format!("{set}/{name} ({sub})"));
            }
        }
    }
    assert!(bad.is_empty(), "decode differs from crit for: {bad:?}");
}

#[test]
fn encode_reproduces_every_image_and_crit_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let crit = PathBuf::from("/usr/bin/crit");
    assert!(
        crit.is_file(),
        "Debian's crit is required at /usr/bin/crit (apt-get install criu)"
    );
    for (set, name) in images() {
        let orig = std::fs::read(fixtures().join(&set).join("images").join(&name)).unwrap();
        for sub in ["json-plain", "json"] {
            let src = fixtures().join(&set).join(sub).join(format!("{name}.json"));
            let out = t.path().join(format!("{set}-{sub}-{name}"));
            let o = ferry(&[
                "image",
                "encode",
                "-i",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ]);
            assert!(
                o.status.success(),
                "encode {set}/{name} from {sub}: {}",
                text(&o.stderr)
            );
            assert!(
                std::fs::read(&out).unwrap() == orig,
                "{set}/{name}: encode from {sub} is not byte-identical"
            );
        }
        // Debian's crit (an outside decoder) reads what ferry wrote.
        let out = t.path().join(format!("{set}-json-plain-{name}"));
        let c = Command::new(&crit)
            .args(["decode", "-i"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            c.status.success(),
            "crit decode of ferry's {set}/{name}: {}",
            text(&c.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
        let ours = read_json(
            &fixtures()
                .join(&set)
                .join("json-plain")
                .join(format!("{name}.json")),
        );
        assert_eq!(v["magic"], ours["magic"], "{set}/{name}");
    }
}

#[test]
fn info_prints_type_and_count() {
    let f = fixtures();
    let o = ferry(&[
        "image",
        "info",
        f.join("tree/images/pagemap-8774.img").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["magic"], "PAGEMAP");
    assert_eq!(v["count"], 8);
    let o = ferry(&[
        "image",
        "info",
        f.join("sigs/images/core-8612.img").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["magic"].as_str(), v["count"].as_u64()),
        (Some("CORE"), Some(1))
    );
}

#[test]
fn show_summarises_the_runc_container() {
    let dir = fixtures().join("runc-busybox/images");
    let o = ferry(&["image", "show", dir.to_str().unwrap()]);
    let s = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for want in [
        "Process tree (2 tasks, 2 threads)",
        "1 sh [running] pgid 1 sid 1 threads 1",
        "  9 sleep [running]",
        "exe /bin/busybox",
        "memory: 11 VMAs",
        "file private",
        "pages: 17 in pages-1.img",
        "pages: 16 in pages-2.img",
        "fds (fdinfo-2.img):",
        "/dev/null (pos 0, flags O_RDWR | O_LARGEFILE)",
        "uts    id 12  tasks 1,9 hostname \"runc\"",
        "Mounts (mountpoints-13.img, 25 entries)",
        "/dev/shm",
        "tmpfs-dev-41.tar.gz.img",
    ] {
        assert!(s.contains(want), "show output lacks {want:?}:\n{s}");
    }
}

#[test]
fn verify_accepts_clean_fixtures() {
    for s in SETS {
        let dir = fixtures().join(s).join("images");
        let o = ferry(&["image", "verify", dir.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{s}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert!(
            text(&o.stdout).contains(": OK ("),
            "{s}: {}",
            text(&o.stdout)
        );
    }
}

/// (case, damaged file, what the one-line error must contain).
const CORRUPT: &[(&str, &str, &str)] = &[
    (
        "core-truncated-mid-entry",
        "core-8612.img",
        "offset 8: CORE entry of 2825 bytes runs past the end of the file",
    ),
    (
        "core-bad-common-magic",
        "core-8612.img",
        "offset 0: bad magic 0xdeadbeef",
    ),
    (
        "core-wrong-type-magic",
        "core-8612.img",
        "offset 4: bad magic 0x50273030, expected CORE magic",
    ),
    (
        "inventory-bad-magic",
        "inventory.img",
        "offset 0: bad magic 0xdeadbeef, expected INVENTORY magic",
    ),
    (
        "pstree-entry-length-exceeds-file",
        "pstree.img",
        "offset 8: PSTREE entry of 4096 bytes runs past the end",
    ),
    (
        "pstree-entry-length-0xffffffff",
        "pstree.img",
        "offset 8: entry length 4294967295 exceeds the cap",
    ),
    (
        "pstree-truncated-in-length-prefix",
        "pstree.img",
        "offset 8: truncated entry length prefix",
    ),
    (
        "pagemap-nr-pages-exceeds-pages-file",
        "pagemap-8612.img",
        "offset 74: entry 5 (vaddr 0x3efb3000, 18 pages) points past the end of pages-1.img",
    ),
];

fn one_line_error(o: &Output, what: &str) -> String {
    assert!(!o.status.success(), "{what}: must fail");
    let err = text(&o.stderr);
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one error line, got {err:?}"
    );
    lines[0].to_string()
}

#[test]
fn corrupted_fixtures_give_one_line_errors() {
    let cases = read_json(&fixtures().join("corrupt/cases.json"));
    assert_eq!(cases.as_array().unwrap().len(), CORRUPT.len());
    for (case, file, want) in CORRUPT {
        let dir = fixtures().join("corrupt").join(case);
        let o = ferry(&["image", "verify", dir.to_str().unwrap()]);
        let line = one_line_error(&o, &format!("verify {case}"));
        assert!(
            line.contains(&format!("{file}: {want}")),
            "verify {case}: {line}"
        );
        if !case.starts_with("pagemap") {
            let p = dir.join(file);
            let o = ferry(&["image", "decode", "-i", p.to_str().unwrap()]);
            let line = one_line_error(&o, &format!("decode {case}"));
            assert!(
                line.contains(&format!("{}: {want}", p.display())),
                "decode {case}: {line}"
            );
        }
    }
}

#[test]
fn encode_rejects_bad_json_in_one_line() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bad.json");
    std::fs::write(&p, r#"{"magic": "PSTREE", "entries": [{"pid": 1, "ppid": 0, "pgid": 1, "sid": 1, "thredas": [1]}]}"#).unwrap();
    let out = t.path().join("out.img");
    let o = ferry(&[
        "image",
        "encode",
        "-i",
        p.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let line = one_line_error(&o, "encode with a misspelt field");
    assert!(
        line.contains("entries[0].thredas: pstree_entry has no field"),
        "{line}"
    );
    assert!(!out.exists(), "nothing may be written on error");
}

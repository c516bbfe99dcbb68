//! Every deliberately corrupted CRIU 4.2 fixture (corrupt/cases.json) is rejected with a
//! one-line error naming the damaged file, the byte offset and the problem — both when the
//! single file is decoded and when the whole directory is verified.

mod common;

use std::path::Path;

use ferry_images::{cmd, verify, ImageDir};

/// What the error must say for each case: (case, offset, words of the problem).
const EXPECT: &[(&str, &str, &str)] = &[
    (
        "core-truncated-mid-entry",
        "offset 8:",
        "runs past the end of the file",
    ),
    ("core-bad-common-magic", "offset 0:", "bad magic 0xdeadbeef"),
    (
        "core-wrong-type-magic",
        "offset 4:",
        "expected CORE magic 0x55053847",
    ),
    (
        "inventory-bad-magic",
        "offset 0:",
        "expected INVENTORY magic 0x58313116",
    ),
    (
        "pstree-entry-length-exceeds-file",
        "offset 8:",
        "entry of 4096 bytes runs past the end of the file (14 bytes left)",
    ),
    (
        "pstree-entry-length-0xffffffff",
        "offset 8:",
        "entry length 4294967295 exceeds the cap",
    ),
    (
        "pstree-truncated-in-length-prefix",
        "offset 8:",
        "truncated entry length prefix (2 of 4 bytes)",
    ),
    (
        "pagemap-nr-pages-exceeds-pages-file",
        "offset 74:",
        "points past the end of pages-1.img: the pagemap claims 31 pages, the file holds 15",
    ),
];

fn cases() -> Vec<serde_json::Value> {
    let p = common::fixtures().join("corrupt/cases.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let a = v.as_array().unwrap().clone();
    assert_eq!(
        a.len(),
        EXPECT.len(),
        "cases.json has cases this test does not know"
    );
    a
}

fn expect_for(case: &str) -> (&'static str, &'static str) {
    let e = EXPECT
        .iter()
        .find(|e| e.0 == case)
        .unwrap_or_else(|| panic!("no expectation for {case}"));
    (e.1, e.2)
}

#[test]
fn verify_rejects_every_corrupt_directory_with_one_line() {
    for c in cases() {
        let case = c["case"].as_str().unwrap();
        let file = c["file"].as_str().unwrap();
        let dir = common::fixtures().join("corrupt").join(case);
        let d = ImageDir::open(&dir).unwrap();
        let r = verify::verify(&d);
        assert_eq!(
            r.errors.len(),
            1,
            "{case}: expected exactly one error, got {:?}",
            r.errors
        );
        let e = &r.errors[0];
        let (off, words) = expect_for(case);
        let want_file = if case.starts_with("pagemap") {
            "pagemap-8612.img"
        } else {
            file
        };
        assert!(e.starts_with(&format!("{want_file}: {off}")), "{case}: {e}");
        assert!(e.contains(words), "{case}: {e}");
        assert!(!e.contains('\n'), "{case}: multi-line error {e:?}");
    }
}

#[test]
fn decoding_the_damaged_file_alone_fails_cleanly() {
    for c in cases() {
        let case = c["case"].as_str().unwrap();
        let file = c["file"].as_str().unwrap();
        let path = common::fixtures().join("corrupt").join(case).join(file);
        let res = cmd::decode_file(&path);
        if case.starts_with("pagemap") {
            // The pagemap alone is well-formed; only the directory shows it overruns pages-1.img.
            assert!(res.is_ok(), "{case}: {:?}", res.err());
            continue;
        }
        let e = format!("{:#}", res.expect_err(case));
        let (off, words) = expect_for(case);
        assert!(
            e.starts_with(&format!("{}: {off}", path.display())),
            "{case}: {e}"
        );
        assert!(e.contains(words), "{case}: {e}");
        assert!(!e.contains('\n'), "{case}: {e:?}");
    }
}

#[test]
fn clean_fixture_directories_verify() {
    for s in common::SETS {
        let d = ImageDir::open(common::fixtures().join(s).join("images")).unwrap();
        let r = verify::verify(&d);
        assert!(r.errors.is_empty(), "{s}: {:?}", r.errors);
        assert!(
            r.files_checked >= 12,
            "{s}: only {} files checked",
            r.files_checked
        );
    }
}

#[test]
fn manifest_round_trip_on_a_copy_of_a_fixture() {
    let t = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("sigs/images");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), t.path().join(e.file_name())).unwrap();
    }
    ferry_images::manifest::write(t.path()).unwrap();
    let r = verify::verify(&ImageDir::open(t.path()).unwrap());
    assert!(r.errors.is_empty() && r.manifest_checked, "{:?}", r.errors);
    // Flip one byte of page data: framing cannot see it, the manifest must.
    let p = t.path().join("pages-1.img");
    let mut b = std::fs::read(&p).unwrap();
    b[4096] ^= 1;
    std::fs::write(&p, b).unwrap();
    let r = verify::verify(&ImageDir::open(t.path()).unwrap());
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].starts_with("pages-1.img: offset 0: crc32c is"),
        "{}",
        r.errors[0]
    );
    let _ = Path::new("");
}

//! All or nothing: restores that must fail, with a clear message naming the task, stage or
//! file, and leave no process with the image's pids behind.

mod restore_common;

use restore_common::*;

fn fails(dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let out = restore(dir, env);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "restore should fail; log:\n{}",
        log_of(dir)
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn missing_page_file() {
    let _g = fixture_lock();
    setup();
    let d = fixture("sigs");
    std::fs::remove_file(d.path().join("pages-1.img")).unwrap();
    let err = fails(d.path(), &[]);
    assert!(err.contains("pages-1.img"), "{err}");
    assert!(err.contains("8612"), "{err}");
    assert_gone(&[8612]);
}

#[test]
fn truncated_core() {
    let _g = fixture_lock();
    setup();
    let d = copy_images(&std::path::Path::new(FIXTURES).join("corrupt/core-truncated-mid-entry"));
    let err = fails(d.path(), &[]);
    assert!(err.contains("core-8612.img"), "{err}");
    assert_gone(&[8612]);
}

#[test]
fn pagemap_past_pages_file() {
    let _g = fixture_lock();
    setup();
    let d = copy_images(
        &std::path::Path::new(FIXTURES).join("corrupt/pagemap-nr-pages-exceeds-pages-file"),
    );
    let err = fails(d.path(), &[]);
    assert!(
        err.contains("pagemap-8612.img") && err.contains("pages-1.img"),
        "{err}"
    );
    assert_gone(&[8612]);
}

/// Puts the right binary back however the test ends.
struct Reinstall;
impl Drop for Reinstall {
    fn drop(&mut self) {
        let _ = std::fs::remove_file("/tmp/ferry-fixture/bin/sigs");
        setup();
    }
}

#[test]
fn executable_changed() {
    let _g = fixture_lock();
    setup();
    let _r = Reinstall;
    let d = fixture("sigs");
    // Same path, other content: size, then build-id must be caught.
    let other = std::fs::read(format!("{FIXTURES}/src/bin/loop")).unwrap();
    let _k = Killer(vec![8612]);
    // A new inode (the old one may be busy as a running executable).
    let _ = std::fs::remove_file("/tmp/ferry-fixture/bin/sigs");
    std::fs::write("/tmp/ferry-fixture/bin/sigs", &other).unwrap();
    let err = fails(d.path(), &[]);
    assert!(
        err.contains("/tmp/ferry-fixture/bin/sigs") && err.contains("changed"),
        "{err}"
    );
    assert_gone(&[8612]);
    // Same size, different bytes (build-id region flipped): still refused.
    let mut same = std::fs::read(format!("{FIXTURES}/src/bin/sigs")).unwrap();
    let f = std::fs::File::open(format!("{FIXTURES}/src/bin/sigs")).unwrap();
    let id = ferry_engine::files::restore::build_id(&f).expect("fixture has a build-id");
    let needle: Vec<u8> = id.iter().flat_map(|w| w.to_le_bytes()).collect();
    let at = same.windows(20).position(|w| w == &needle[..]).unwrap();
    same[at] ^= 0xff;
    let _ = std::fs::remove_file("/tmp/ferry-fixture/bin/sigs");
    std::fs::write("/tmp/ferry-fixture/bin/sigs", &same).unwrap();
    std::fs::set_permissions(
        "/tmp/ferry-fixture/bin/sigs",
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let err = fails(d.path(), &[]);
    assert!(err.contains("build-id"), "{err}");
    assert_gone(&[8612]);
}

#[test]
fn pid_taken() {
    let _g = fixture_lock();
    setup();
    let _k = Killer(vec![8612]);
    let first = fixture("sigs");
    let out = restore(first.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = maps(8612);
    let second = fixture("sigs");
    let err = fails(second.path(), &[]);
    assert!(err.contains("pid 8612 is taken"), "{err}");
    // The running task is untouched.
    assert_eq!(maps(8612), before);
    assert_runs(8612);
    kill_all(&[8612]);
    assert_gone(&[8612]);
}

#[test]
fn failure_after_fork_kills_the_whole_tree() {
    let _g = fixture_lock();
    setup();
    let _k = Killer(vec![8773, 8774, 8772]);
    let d = fixture("tree");
    let err = fails(d.path(), &[("FERRY_TEST_FAIL_TASK", "8774")]);
    assert!(
        err.contains("task 8774") && err.contains("injected failure"),
        "{err}"
    );
    assert!(err.contains("stage"), "{err}");
    assert_gone(&[8772, 8773, 8774, 8775]);
    // And the same images restore fine right after.
    let out = restore(d.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_runs(8774);
    kill_all(&[8773, 8774, 8772]);
    assert_gone(&[8772, 8773, 8774, 8775]);
}

#[test]
fn failure_inside_the_restorer_kills_the_whole_tree() {
    let _g = fixture_lock();
    setup();
    let _k = Killer(vec![8773, 8774, 8772]);
    let d = fixture("tree");
    let err = fails(d.path(), &[("FERRY_TEST_FAIL_RESTORER", "8773")]);
    assert!(err.contains("task 8773") && err.contains("mremap"), "{err}");
    assert_gone(&[8772, 8773, 8774, 8775]);
}

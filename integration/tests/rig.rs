//! The rig's own promises, checked for real: a test that panics still leaves no container
//! process, cgroup, mount or temp directory behind; the rootfs holds what the tests rely on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use ferry_integration::cleanup::{cgroup_dirs, mounts_under, process_alive};
use ferry_integration::cmd::wait_until;
use ferry_integration::rootfs::{rootfs, WORKLOADS};
use ferry_integration::TestEnv;

#[test]
fn teardown_cleans_up_after_a_panicking_test() {
    let mut seen: Option<(PathBuf, String, i32, i32)> = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let env = TestEnv::new("rigpanic");
        let id = env.id("c");
        let b = env.bundle(&id, &["sh", "-c", "sleep 1000 & exec counter /count 100"]);
        let init = env.start_running(&b);
        // A child the runtime does not know by pid, and a mount inside the temp dir.
        let child: i32 = {
            let mut pids = Vec::new();
            assert!(wait_until(Duration::from_secs(10), || {
                pids = env
                    .ferry(&["ps", "--format", "json", &id])
                    .ok()
                    .json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_i64())
                    .map(|p| p as i32)
                    .filter(|p| *p != init)
                    .collect();
                !pids.is_empty()
            }));
            pids[0]
        };
        let mnt = env.dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
        env.ferry(&["pause", &id]).ok(); // frozen tasks are the hardest to remove
        seen = Some((env.dir.clone(), b.cgroups_path.clone(), init, child));
        panic!("deliberate panic with a paused container, a child and a mount");
    }));
    assert!(r.is_err(), "the closure panicked");
    let (dir, cg, init, child) = seen.expect("the test got as far as the panic");
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(init)),
        "init {init} left"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(child)),
        "child {child} left"
    );
    assert!(
        cgroup_dirs(&cg).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(&cg)
    );
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    assert!(!dir.exists(), "temp dir {} left", dir.display());
}

#[test]
fn rootfs_has_busybox_applets_and_the_workloads() {
    let r = rootfs();
    for f in [
        "bin/busybox",
        "bin/sh",
        "bin/sleep",
        "bin/cat",
        "etc/passwd",
        "etc/group",
    ] {
        assert!(r.join(f).exists(), "{} lacks {f}", r.display());
    }
    for w in WORKLOADS {
        assert!(
            r.join("bin").join(w).is_file(),
            "{} lacks workload {w}",
            r.display()
        );
    }
    // Links point inside the container (/bin/busybox), not at a host path.
    assert_eq!(
        std::fs::read_link(r.join("bin/sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
}

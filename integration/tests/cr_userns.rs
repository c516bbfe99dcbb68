//! `ferry checkpoint` / `ferry restore` of a container with its own user namespace (Kubernetes
//! `hostUsers: false`, podman `--userns=auto`): ids 0..65535 inside mapped to 100000.. on the
//! host, the rootfs handed to the mapped range as podman does. The workload (`userns_ids`) runs
//! its init as root inside and a child as uid/gid 1000 with supplementary groups, owning a file
//! on the /dev/shm tmpfs and one in the rootfs, plus a SysV segment given to 1000; each process
//! reports what it sees from inside (ids, groups, owners, its own uid_map), which must be the
//! same after every restore, also under another mapping (the migration case).

mod cr_build;
mod cr_common;

use std::collections::BTreeMap;
use std::path::Path;

use cr_build::build_workload;
use cr_common::*;
use ferry_integration::cleanup::staging_left;
use ferry_integration::cmd::wait_until;
use ferry_integration::{Bundle, TestEnv};
use serde_json::json;

/// Gives bundle `b` a user namespace mapping 0..size to `host`.., its rootfs shifted by
/// `shift` to match, and the capabilities the workload's init needs inside.
fn userns_workload_bundle(b: &Bundle, host: u32, size: u32, shift: i64) {
    userns_bundle(b, host, size, shift);
    b.edit_config(|c| {
        // What the workload's init needs inside to hand things to uid 1000 and become it.
        let caps = json!([
            "CAP_CHOWN",
            "CAP_FOWNER",
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_KILL"
        ]);
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set] = caps.clone();
        }
        c["process"]["capabilities"]["ambient"] = json!([]);
    });
}

type Report = BTreeMap<String, String>;

fn read_report(b: &Bundle, rel: &str) -> Option<Report> {
    let text = b.read_rootfs_file(rel)?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn count(r: &Report) -> u64 {
    r["count"].parse().unwrap()
}

/// Both reports once each has counted past `after`.
#[track_caller]
fn reports_past(b: &Bundle, after: (u64, u64)) -> (Report, Report) {
    let mut got = None;
    let ok = wait_until(T, || {
        let i = read_report(b, "/report-init");
        let c = read_report(b, "/home/u/report-child");
        match (i, c) {
            (Some(i), Some(c)) if count(&i) > after.0 + 2 && count(&c) > after.1 + 2 => {
                got = Some((i, c));
                true
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "the workload's processes did not count on past {after:?}"
    );
    got.unwrap()
}

/// The view inside, the same whatever the mapping but the maps themselves.
#[track_caller]
fn assert_inside_view(init: &Report, child: &Report, host: u32, what: &str) {
    let map = format!("0 {host} 65536");
    assert_eq!(init["uid"], "0 0 0", "{what}: init uids {init:?}");
    assert_eq!(init["gid"], "0 0 0", "{what}: init gids");
    assert_eq!(init["uid_map"], map, "{what}: init uid_map");
    assert_eq!(init["gid_map"], map, "{what}: init gid_map");
    assert_eq!(
        init["ipc"], "1000 1000 0 0 640",
        "{what}: the SysV segment's owner, creator and mode inside"
    );
    assert_eq!(
        child["uid"], "1000 1000 1000",
        "{what}: child uids {child:?}"
    );
    assert_eq!(child["gid"], "1000 1000 1000", "{what}: child gids");
    assert_eq!(child["groups"].trim(), "1000 1001 2000", "{what}: groups");
    assert_eq!(child["uid_map"], map, "{what}: child uid_map");
    assert_eq!(
        child["shm_file"], "1000 1000",
        "{what}: /dev/shm/child owner"
    );
    assert_eq!(
        child["rootfs_file"], "1000 1000",
        "{what}: /home/u/child owner"
    );
}

/// Host uids (real uid) of the container's processes, sorted.
fn host_uids(b: &Bundle) -> Vec<u32> {
    let mut v: Vec<u32> = processes_in(&b.rootfs())
        .into_iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let l = s.lines().find(|l| l.starts_with("Uid:"))?;
            l.split_whitespace().nth(1)?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// Every protobuf image of `img` decodes with Debian's crit.
#[track_caller]
fn crit_decodes_all(img: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(img).unwrap().flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let raw = ["pages-", "ifaddr-", "route-", "route6-", "rule-"]
            .iter()
            .any(|p| f.starts_with(p))
            || f.ends_with(".tar.gz.img");
        if raw || f.ends_with(".json") || f.ends_with(".log") || f == "stats-dump" {
            continue;
        }
        let o = ferry_integration::cmd::run(
            std::process::Command::new("/usr/bin/crit")
                .args(["decode", "-i"])
                .arg(e.path()),
            T,
        );
        assert!(o.success(), "crit decode {f}:\n{o}");
        n += 1;
    }
    assert!(n > 5, "images decoded: {n}");
}

/// The userns image: CRIU's userns_entry with the mapping at the checkpoint.
#[track_caller]
fn assert_userns_image(img: &Path, host: u32) {
    let name = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("userns-"))
        .expect("a userns-ID.img");
    let o = ferry_integration::cmd::run(
        std::process::Command::new("/usr/bin/crit")
            .args(["decode", "-i"])
            .arg(img.join(&name)),
        T,
    );
    let e = &o.json()["entries"][0];
    for m in ["uid_map", "gid_map"] {
        assert_eq!(
            e[m],
            json!([{"first": 0, "lower_first": host, "count": 65536}]),
            "{name}: {m}"
        );
    }
}

/// Starts the workload in a 0 -> 100000 container; returns its bundle.
fn start(env: &TestEnv, id: &str) -> Bundle {
    let b = env.bundle(id, &["userns_ids", TICK_MS]);
    build_workload(&b, "userns_ids");
    userns_workload_bundle(&b, 100000, 65536, 100000);
    run_detached(env, &b);
    let (init, child) = reports_past(&b, (0, 0));
    assert_inside_view(&init, &child, 100000, "before any checkpoint");
    assert_eq!(
        host_uids(&b),
        [100000, 101000],
        "host uids of init and child"
    );
    b
}

#[test]
fn cr_userns_ids_owners_and_maps_inside_survive_restore_of_restore() {
    let env = TestEnv::new("cruns");
    let id = env.id("c");
    let b = start(&env, &id);
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        assert_userns_image(&img, 100000);
        crit_decodes_all(&img);
        let stopped = (
            count(&read_report(&b, "/report-init").unwrap()),
            count(&read_report(&b, "/home/u/report-child").unwrap()),
        );
        let o = restore(&env, &b, &id, &img, &[]);
        assert!(o.success(), "round {round}: restore:\n{o}");
        assert_eq!(env.status(&id), "running", "round {round}: state");
        let (init, child) = reports_past(&b, stopped);
        assert_inside_view(&init, &child, 100000, &format!("round {round}"));
        assert_eq!(host_uids(&b), [100000, 101000], "round {round}: host uids");
    }
    env.ferry(&["kill", &id, "KILL"]).ok();
    env.wait_status(&id, "stopped", T);
    env.ferry(&["delete", &id]).ok();
    assert_nothing_left(&env, &b, &id);
}

/// A bundle for `id2` whose rootfs is a copy of `b`'s (what the container wrote there
/// included), its owners shifted by `shift`, with a mapping 0..size -> host.
fn migrated_bundle(
    env: &TestEnv,
    b: &Bundle,
    id2: &str,
    host: u32,
    size: u32,
    shift: i64,
) -> Bundle {
    let b2 = env.bundle(id2, &["userns_ids", TICK_MS]);
    std::fs::remove_dir_all(b2.rootfs()).unwrap();
    let o = ferry_integration::cmd::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(b.rootfs())
            .arg(b2.rootfs()),
        T,
    );
    assert!(o.success(), "{o}");
    for f in ["/report-init", "/home/u/report-child"] {
        let _ = std::fs::remove_file(b2.rootfs().join(f.trim_start_matches('/')));
    }
    userns_workload_bundle(&b2, host, size, shift);
    b2
}

#[test]
fn cr_userns_restore_under_another_mapping_and_a_too_small_one_fails_cleanly() {
    let env = TestEnv::new("crunsmig");
    let id = env.id("c");
    let b = start(&env, &id);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    assert!(wait_until(T, || processes_in(&b.rootfs()).is_empty()));
    let stopped = (
        count(&read_report(&b, "/report-init").unwrap()),
        count(&read_report(&b, "/home/u/report-child").unwrap()),
    );

    // A mapping without room for uid 1000: refused before anything is made.
    let id3 = env.id("small");
    let b3 = migrated_bundle(&env, &b, &id3, 300000, 1000, 200000);
    let copy3 = env.dir.join("img-small");
    copy_dir(&img, &copy3);
    restore(&env, &b3, &id3, &copy3, &[])
        .code_is(1)
        .stderr_has("uid 1000 (credentials of task")
        .stderr_has("has no place in the new container's uid mapping (0-999 -> 300000-300999)");
    assert_nothing_left(&env, &b3, &id3);

    // Migration: a copy of the images, another id, a 0 -> 200000 mapping.
    let id2 = env.id("m");
    let b2 = migrated_bundle(&env, &b, &id2, 200000, 65536, 100000);
    let copy = env.dir.join("img-copy");
    copy_dir(&img, &copy);
    let o = restore(&env, &b2, &id2, &copy, &[]);
    assert!(o.success(), "restore under 0 -> 200000:\n{o}");
    // The report files are new in this rootfs: counts go on from the checkpoint's.
    let (init, child) = reports_past(&b2, stopped);
    assert_inside_view(&init, &child, 200000, "under the new mapping");
    assert_eq!(
        host_uids(&b2),
        [200000, 201000],
        "host uids under the new mapping"
    );
    let pid2 = env.state(&id2)["pid"].as_i64().unwrap();
    let shm = std::fs::metadata(format!("/proc/{pid2}/root/dev/shm/child")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&shm),
            std::os::unix::fs::MetadataExt::gid(&shm)
        ),
        (201000, 201000),
        "the tmpfs file's owner on the host"
    );
    // And once more from there: the restored container checkpoints and restores in place.
    let img2 = env.dir.join("img-2");
    checkpoint(&env, &id2, &img2, &[]).ok();
    assert_userns_image(&img2, 200000);
    let stopped = (
        count(&read_report(&b2, "/report-init").unwrap()),
        count(&read_report(&b2, "/home/u/report-child").unwrap()),
    );
    let o = restore(&env, &b2, &id2, &img2, &[]);
    assert!(o.success(), "second restore under 0 -> 200000:\n{o}");
    let (init, child) = reports_past(&b2, stopped);
    assert_inside_view(&init, &child, 200000, "restore of the migrated container");
    env.ferry(&["kill", &id2, "KILL"]).ok();
    env.wait_status(&id2, "stopped", T);
    env.ferry(&["delete", &id2]).ok();
    assert_nothing_left(&env, &b2, &id2);
    assert_no_state(&env, &id);
}

/// The container's mountinfo line for `dest`.
fn mount_line(pid: i32, dest: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dest))
        .unwrap_or_else(|| panic!("no mount at {dest} in the container"))
        .to_string()
}

/// Bind mounts from a directory only host root may enter (0700, like podman's per-container
/// directories) into a container whose root is host uid 100000: ferry stages them (see
/// bind_stage.rs), so they are there inside, the same file and directory, read-only as the
/// config says; after checkpoint and restore (twice) too; and no staging mount or directory
/// is left at any point.
#[test]
fn cr_userns_binds_from_a_root_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new("crubind");
    let id = env.id("b");
    let b = counter_bundle(&env, &id);
    userns_bundle(&b, 100000, 65536, 100000);
    let secret = env.dir.join("secret");
    std::fs::create_dir_all(secret.join("dir")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret.join("file"), "file content\n").unwrap();
    std::fs::write(secret.join("dir/inner"), "dir content\n").unwrap();
    let src = |p: &str| secret.join(p).to_str().unwrap().to_string();
    // The mount's root within its filesystem: the tail of the source's real path.
    let root_of = |p: &str, line: &str| {
        let real = std::fs::canonicalize(secret.join(p)).unwrap();
        let root = line.split(' ').nth(3).unwrap().to_string();
        assert!(
            root.ends_with(&format!("/secret/{p}")) && real.ends_with(root.trim_start_matches('/')),
            "mount root {root} is not {}: {line}",
            real.display()
        );
    };
    b.edit_config(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/bound-file", "type": "bind",
            "source": src("file"), "options": ["bind", "ro"]}));
        m.push(json!({"destination": "/bound-dir", "type": "bind",
            "source": src("dir"), "options": ["rbind", "rprivate"]}));
    });
    let check = |what: &str| {
        let o = env
            .ferry(&["exec", &id, "cat", "/bound-file", "/bound-dir/inner"])
            .ok();
        assert_eq!(o.stdout, "file content\ndir content\n", "{what}");
        let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
        // The source's own file and directory (the mount's root within its filesystem).
        let f = mount_line(pid, "/bound-file");
        root_of("file", &f);
        assert!(
            f.split(' ').nth(5).unwrap().starts_with("ro,"),
            "{what}: {f}"
        );
        let d = mount_line(pid, "/bound-dir");
        root_of("dir", &d);
        assert!(
            d.split(' ').nth(5).unwrap().starts_with("rw,"),
            "{what}: {d}"
        );
        assert!(
            staging_left(&id).is_empty(),
            "{what}: {:?}",
            staging_left(&id)
        );
    };
    start_counter(&env, &b);
    check("after run");
    for round in 1..=2 {
        let img = env.dir.join(format!("img-{round}"));
        checkpoint(&env, &id, &img, &[]).ok();
        let stopped = settled_count(&b);
        restore(&env, &b, &id, &img, &[]).ok();
        assert_counts_on_from(&b, stopped);
        check(&format!("after restore {round}"));
    }
    force_delete_and_check(&env, &b, &id);
    assert!(staging_left(&id).is_empty(), "{:?}", staging_left(&id));
}

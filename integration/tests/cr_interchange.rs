//! Interchange with runc+CRIU, through the command line.
//!
//! * The CRIU 4.2 fixture `runc-busybox` (images `runc checkpoint` wrote for a busybox counter
//!   container in /tmp/ferry-fixture/runc-bundle, cgroups /ferry-busybox and a memory cgroup
//!   below /process_api/...) restores with `ferry restore` in a bundle elsewhere, made from the
//!   fixture's own config.json, under another id and in other cgroups — what runc does with
//!   CRIU's `--root`, `--cgroup-root` and external mounts. The shell counts on from 4, and the
//!   container answers state, ps, exec, pause, kill and delete.
//! * A ferry checkpoint restores into a bundle whose cgroupsPath and bind-mount source differ
//!   from the checkpointed one (cgroup root remap, external bind mounts).
//! * Every image of a ferry checkpoint decodes with Debian's crit, and crit's own view of the
//!   tree (`crit x DIR ps`) is the container's.

mod cr_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cr_common::*;
use ferry_integration::cmd::wait_until;
use ferry_integration::{Bundle, TestEnv};

/// Size of the busybox-static binary the fixture's shell ran (CRIU and ferry check it).
const FIXTURE_BUSYBOX_LEN: u64 = 1_982_256;

fn fixture() -> PathBuf {
    let p = ferry_integration::fixtures_dir().join("runc-busybox");
    assert!(
        p.join("images/inventory.img").is_file(),
        "fixture {} is missing",
        p.display()
    );
    p
}

/// The cgroup path of `pid` in the hierarchy whose controller list contains `ctl`.
fn cgroup_of(pid: i32, ctl: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, c, p) = (it.next()?, it.next()?, it.next()?);
            c.split(',').any(|x| x == ctl).then(|| p.to_string())
        })
        .unwrap_or_else(|| panic!("no {ctl} line in /proc/{pid}/cgroup:\n{text}"))
}

/// Pid of `pid` in its innermost pid namespace.
fn ns_pid(pid: i32) -> i32 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = st.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// A bundle (the rig's busybox-static rootfs) with the fixture's config.json, its cgroupsPath
/// set to `cgroups_path` (None: the config's own, i.e. none at all).
fn fixture_bundle(env: &TestEnv, id: &str, cgroups_path: Option<&str>) -> Bundle {
    let b = env.bundle(id, &["true"]);
    let bb = std::fs::metadata(b.rootfs().join("bin/busybox")).unwrap();
    assert_eq!(
        bb.len(),
        FIXTURE_BUSYBOX_LEN,
        "/bin/busybox is not the busybox-static 1:1.35.0-4+deb12u1+b1 the fixture ran"
    );
    let text = std::fs::read(fixture().join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&text).unwrap();
    match cgroups_path {
        Some(p) => cfg["linux"]["cgroupsPath"] = p.into(),
        // libcontainer's default for a config without one; removed at teardown.
        None => env.track_cgroup(&format!("/:youki:{id}")),
    }
    b.write_config(&cfg);
    b
}

/// Watches /counter from the moment the restore returned: the first value the restored shell
/// writes is 5 (it was 4 at the checkpoint, in `sleep 1`), give or take one tick missed; a shell
/// started afresh would write 1. Returns the first value seen.
fn assert_counts_on_from_4(b: &Bundle) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(v) = b.counter("/counter") {
            assert!(
                (5..=6).contains(&v),
                "first count after the restore is {v}; the checkpoint stopped at 4"
            );
            return v;
        }
        assert!(
            start.elapsed() < T,
            "the restored shell never wrote /counter"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the shell's /counter passes `value`; returns what it read.
fn counter_above(b: &Bundle, value: u64) -> u64 {
    let mut last = 0;
    assert!(
        wait_until(T, || {
            last = b.counter("/counter").unwrap_or(0);
            last > value
        }),
        "/counter did not pass {value} (last {last})"
    );
    last
}

/// Restores the fixture into `b` as `id`; checks it from outside and inside, then drives it
/// through pause, resume, kill and delete. `want_cg` is the cgroup the config asks for.
fn restore_fixture_and_drive(env: &TestEnv, b: &Bundle, id: &str, want_cg: &str, extra: &[&str]) {
    let img = env.dir.join(format!("img-{id}"));
    copy_dir(&fixture().join("images"), &img);
    let work = env.dir.join(format!("work-{id}"));
    let mut args = vec!["--work-path", work.to_str().unwrap()];
    args.extend_from_slice(extra);
    restore(env, b, id, &img, &args).ok();
    let first = assert_counts_on_from_4(b);

    // Outside: the state names the init, which is the fixture's shell as PID 1 of its own pid
    // namespace, in the cgroups of the new config in every hierarchy the runtime manages.
    let st = env.state(id);
    assert_eq!(st["status"], "running", "{st}");
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "sh"
    );
    assert_eq!(ns_pid(pid), 1, "the shell is PID 1 of its namespace");
    for ctl in [
        "pids", "memory", "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio",
    ] {
        assert_eq!(cgroup_of(pid, ctl), want_cg, "{ctl} cgroup of the init");
    }
    assert!(
        !Path::new("/sys/fs/cgroup/pids/ferry-busybox").exists(),
        "the checkpointed cgroup was not recreated"
    );
    let log = std::fs::read_to_string(work.join("restore-resources.log")).unwrap();
    assert!(
        log.contains(&format!("\"pids\": /ferry-busybox -> {want_cg}\n")),
        "cgroup root remap logged:\n{log}"
    );
    // libcontainer leaves the init in the runtime's own cgroup2 and name=systemd cgroups:
    // nothing of the images is written there, whatever the mode.
    let own = cgroup_of(std::process::id() as i32, "name=systemd");
    assert_eq!(cgroup_of(pid, "name=systemd"), own);
    assert!(
        log.contains("\"name=systemd\": /ferry-busybox -> ")
            && log.contains("(the runtime's own, not restored)"),
        "shared hierarchies logged:\n{log}"
    );
    let o = env.ferry(&["ps", id]).ok();
    assert!(
        o.stdout.contains(&pid.to_string()),
        "ps lists the init:\n{o}"
    );
    assert!(
        o.stdout.contains("sleep"),
        "ps lists the shell's sleep:\n{o}"
    );

    // Inside: the same shell (PID 1, its script), the hostname of the images, the counter.
    let o = env
        .ferry(&[
            "exec",
            id,
            "sh",
            "-c",
            "read c < /counter; echo $c; hostname; tr '\\0' ' ' < /proc/1/cmdline",
        ])
        .ok();
    let lines: Vec<&str> = o.stdout.lines().collect();
    let inside: u64 = lines[0].parse().unwrap();
    assert!(inside >= first, "inside {inside}, outside first {first}");
    assert_eq!(lines[1], "runc", "hostname from utsns-12.img");
    assert!(
        lines[2].contains("i=$((i+1)); echo $i > /counter"),
        "PID 1 is the fixture's shell: {}",
        lines[2]
    );
    let c = counter_above(b, inside);
    // Pause freezes the counter; resume lets it go on.
    env.ferry(&["pause", id]).ok();
    assert_eq!(env.status(id), "paused");
    let frozen = b.counter("/counter").unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(b.counter("/counter").unwrap(), frozen, "paused: no count");
    env.ferry(&["resume", id]).ok();
    counter_above(b, frozen.max(c));
    // kill and delete like any container: nothing left.
    env.ferry(&["kill", id, "KILL"]).ok();
    env.wait_status(id, "stopped", T);
    env.ferry(&["delete", id]).ok();
    env.ferry(&["state", id]).code_is(1);
    assert!(
        wait_until(T, || !ferry_integration::cleanup::process_alive(pid)),
        "init {pid} gone"
    );
    let left: Vec<PathBuf> = ["pids", "memory", "cpu", "freezer"]
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join(want_cg.trim_start_matches('/'))
        })
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left after delete: {left:?}");
    assert!(processes_in(&b.rootfs()).is_empty());
    assert!(ferry_integration::cleanup::mounts_under(&b.path).is_empty());
}

#[test]
fn runc_criu_busybox_fixture_restores_in_the_configs_cgroups() {
    let env = TestEnv::new("cric");
    let id = env.id("fx");
    let cg = format!("/ferry-it-{id}");
    let b = fixture_bundle(&env, &id, Some(&cg));
    restore_fixture_and_drive(&env, &b, &id, &cg, &[]);
}

#[test]
fn runc_criu_busybox_fixture_restores_with_its_config_unchanged_in_full_cgroup_mode() {
    let env = TestEnv::new("cricd");
    let id = env.id("fx");
    let b = fixture_bundle(&env, &id, None);
    // Full mode writes the images' settings into the cgroups the runtime made for the
    // container (the fixture's are the kernel's defaults) and never into the runtime's own.
    restore_fixture_and_drive(
        &env,
        &b,
        &id,
        &format!("/:youki:{id}"),
        &["--manage-cgroups-mode", "full"],
    );
}

/// A ferry checkpoint restored under a new id into a second bundle whose cgroupsPath, pids
/// limit and bind-mount source differ: the tree lands in the new cgroups (nothing made at the
/// old path), keeps the new config's limit (soft mode writes no property into cgroups the
/// runtime made), and sees the new source through the bind mount.
#[test]
fn cr_restore_remaps_cgroup_root_and_bind_sources() {
    let env = TestEnv::new("crremap");
    let id = env.id("a");
    let a = counter_bundle(&env, &id);
    let add_bind = |b: &Bundle, src: &Path, pids: i64| {
        b.edit_config(|c| {
            c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": "/data", "type": "bind",
                "source": src.to_str().unwrap(), "options": ["rbind", "rw"]
            }));
            c["linux"]["resources"]["pids"] = serde_json::json!({ "limit": pids });
        })
    };
    let (src_a, src_b) = (env.dir.join("data-a"), env.dir.join("data-b"));
    for (d, text) in [(&src_a, "host a\n"), (&src_b, "host b\n")] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("f"), text).unwrap();
    }
    add_bind(&a, &src_a, 40);
    start_counter(&env, &a);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&a);
    env.ferry(&["delete", &id]).code_is(1);

    // The second bundle: another id, cgroupsPath, limit and bind source; the same count file.
    let id2 = env.id("b");
    let b = env.bundle(&id2, &["counter", "/count", TICK_MS]);
    add_bind(&b, &src_b, 77);
    std::fs::copy(a.rootfs().join("count"), b.rootfs().join("count")).unwrap();
    assert_ne!(a.cgroups_path, b.cgroups_path);
    restore(&env, &b, &id2, &img, &[]).ok();
    assert_counts_on_from(&b, stopped_at);
    let pid = env.state(&id2)["pid"].as_i64().unwrap() as i32;
    for ctl in ["pids", "memory", "cpu", "freezer", "devices"] {
        assert_eq!(cgroup_of(pid, ctl), b.cgroups_path, "{ctl} cgroup");
    }
    let old: Vec<PathBuf> = ferry_integration::cleanup::cgroup_dirs(&a.cgroups_path)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(old.is_empty(), "old cgroups recreated: {old:?}");
    let pids_max = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids")
            .join(b.cgroups_path.trim_start_matches('/'))
            .join("pids.max"),
    )
    .unwrap();
    assert_eq!(pids_max.trim(), "77", "the new config's limit stays");
    let o = env.ferry(&["exec", &id2, "cat", "/data/f"]).ok();
    assert_eq!(
        o.stdout, "host b\n",
        "bind mount from the new config's source"
    );
    env.ferry(&["delete", "-f", &id2]).ok();
    assert_nothing_left(&env, &b, &id2);
}

/// A restore whose bundle no longer mounts what the images hold (here: a bind mount dropped
/// from the config) is refused before anything runs, naming the mount, and leaves nothing.
#[test]
fn cr_restore_refuses_a_config_without_the_images_bind_mount() {
    let env = TestEnv::new("crnobind");
    let id = env.id("a");
    let a = counter_bundle(&env, &id);
    let src = env.dir.join("data");
    std::fs::create_dir(&src).unwrap();
    a.edit_config(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind",
            "source": src.to_str().unwrap(), "options": ["rbind", "rw"]
        }));
    });
    start_counter(&env, &a);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let id2 = env.id("b");
    let b = env.bundle(&id2, &["counter", "/count", TICK_MS]);
    let o = restore(&env, &b, &id2, &img, &[]).failed();
    assert!(
        o.stderr.contains("/data") && o.stderr.contains("does not make"),
        "the error names the missing mount:\n{o}"
    );
    assert_nothing_left(&env, &b, &id2);
}

/// Every image file of a ferry checkpoint decodes with Debian's crit (3.17), which also shows
/// the container's tree; the container-level image kinds are those runc+CRIU 4.2 wrote for the
/// same kind of container (fixture `runc-busybox`).
#[test]
fn ferry_checkpoint_decodes_fully_with_crit() {
    let env = TestEnv::new("crcrit");
    let id = env.id("c");
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /counter; sleep 1; done",
        ],
    );
    run_detached(&env, &b);
    assert!(wait_until(T, || b.counter("/counter").unwrap_or(0) >= 2));
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let crit = |args: &[&str]| {
        ferry_integration::cmd::run(std::process::Command::new("/usr/bin/crit").args(args), T)
    };
    let mut names: Vec<String> = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut decoded = Vec::new();
    for f in &names {
        // Raw page data, tar archives and iproute2's `ip addr/route save` dumps are not
        // protobuf images (CRIU writes the same raw files); runc's and ferry's json files are
        // not CRIU images. Everything else is.
        let raw = ["pages-", "ifaddr-", "route-", "route6-", "rule-"]
            .iter()
            .any(|p| f.starts_with(p))
            || f.ends_with(".tar.gz.img");
        if raw || f.ends_with(".json") || f.ends_with(".log") {
            continue;
        }
        let p = img.join(f);
        let o = crit(&["decode", "-i", p.to_str().unwrap()]);
        assert!(o.success(), "crit decode {f}:\n{o}");
        let v = o.json();
        assert!(
            v["entries"].as_array().is_some_and(|e| !e.is_empty()),
            "{f}: no entries: {v}"
        );
        decoded.push(kind(f));
    }
    // Every kind of image runc+CRIU wrote for the busybox container (inventory, pstree, core,
    // mm, pagemap, fs, ids, files, fdinfo, cgroup, mountpoints, utsns, ipcns-var, seccomp,
    // timens) is among what ferry wrote and crit decoded.
    let mut want: Vec<String> = std::fs::read_dir(fixture().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".img") && !f.starts_with("pages-") && !f.contains(".tar.gz"))
        .map(|f| kind(&f))
        .collect();
    want.sort();
    want.dedup();
    let missing: Vec<&String> = want.iter().filter(|k| !decoded.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "image kinds runc+CRIU write that ferry did not: {missing:?} (ferry wrote {names:?})"
    );
    let o = crit(&["x", img.to_str().unwrap(), "ps"]);
    assert!(o.success(), "crit x ps:\n{o}");
    let rows: Vec<Vec<&str>> = o
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.first() == Some(&"1") && r.last() == Some(&"sh")),
        "crit sees sh as pid 1:\n{}",
        o.stdout
    );
    assert!(
        rows.iter().any(|r| r.last() == Some(&"sleep")),
        "crit sees the shell's sleep:\n{}",
        o.stdout
    );
}

/// `core-9.img` -> `core`, `ipcns-var-11.img` -> `ipcns-var`, `inventory.img` -> `inventory`.
fn kind(file: &str) -> String {
    let stem = file.trim_end_matches(".img");
    let parts: Vec<&str> = stem.split('-').collect();
    let keep = parts
        .iter()
        .rposition(|p| p.parse::<u64>().is_err())
        .map_or(0, |i| i + 1);
    parts[..keep].join("-")
}

//! End-to-end `ps`, `list`, `events --stats`, `update`, `spec` and `features`.

use std::fs;
use std::time::Duration;

use ferry_integration::cleanup::cgroup_dirs;
use ferry_integration::cmd::wait_until;
use ferry_integration::TestEnv;

const T: Duration = Duration::from_secs(15);

fn pids_of(env: &TestEnv, id: &str) -> Vec<i64> {
    let v = env.ferry(&["ps", "--format", "json", id]).ok().json();
    v.as_array()
        .unwrap_or_else(|| panic!("ps --format json prints an array: {v}"))
        .iter()
        .map(|p| {
            p.as_i64()
                .unwrap_or_else(|| panic!("pid entries are numbers: {v}"))
        })
        .collect()
}

#[test]
fn ps_table_and_json() {
    let env = TestEnv::new("ps");
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", "sleep 1000 & exec counter /count 100"]);
    let init = env.start_running(&b) as i64;
    let mut pids = Vec::new();
    assert!(
        wait_until(T, || {
            pids = pids_of(&env, &id);
            pids.len() >= 2
        }),
        "init and its sleep child: {pids:?}"
    );
    assert!(
        pids.contains(&init),
        "ps json lists the init {init}: {pids:?}"
    );

    let o = env.ferry(&["ps", &id]).ok();
    let mut lines = o.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert!(
        header.first() == Some(&"UID") && header.contains(&"PID") && header.contains(&"CMD"),
        "ps(1) -ef style header:\n{o}"
    );
    let pid_col = header.iter().position(|h| *h == "PID").unwrap();
    let table_pids: Vec<i64> = lines
        .filter_map(|l| l.split_whitespace().nth(pid_col)?.parse().ok())
        .collect();
    assert!(
        table_pids.contains(&init),
        "table lists the init {init}:\n{o}"
    );
    assert!(
        o.stdout.contains("counter"),
        "CMD column shows the workload:\n{o}"
    );
    assert!(o.stdout.contains("sleep 1000"), "and its child:\n{o}");
}

#[test]
fn list_table_json_and_quiet() {
    let env = TestEnv::new("list");
    let a = env.id("a");
    let c = env.id("b");
    let ba = env.bundle(&a, &["counter", "/count", "100"]);
    let bc = env.bundle(&c, &["counter", "/count", "100"]);
    env.start_running(&ba);
    env.create(&bc, &[]).ok();

    let o = env.ferry(&["list", "-q"]).ok();
    let mut ids: Vec<&str> = o.stdout.lines().collect();
    ids.sort();
    let mut want = vec![a.as_str(), c.as_str()];
    want.sort();
    assert_eq!(ids, want, "list -q prints one id per line:\n{o}");

    let o = env.ferry(&["list"]).ok();
    let header: Vec<&str> = o
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
        "{o}"
    );
    let row = |id: &str| {
        o.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{o}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(row(&a)[2], "running", "{o}");
    assert_eq!(row(&c)[2], "created", "{o}");
    assert_eq!(row(&a)[3], ba.path.to_str().unwrap(), "{o}");

    let v = env.ferry(&["list", "--format", "json"]).ok().json();
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("json list is an array: {v}"));
    assert_eq!(arr.len(), 2, "{v}");
    for e in arr {
        for k in ["id", "pid", "status", "bundle", "created"] {
            assert!(!e[k].is_null(), "entry lacks {k}: {e}");
        }
        let want = if e["id"] == a.as_str() {
            "running"
        } else {
            "created"
        };
        assert_eq!(e["status"], want, "{e}");
    }
}

#[test]
fn list_of_an_empty_root() {
    let env = TestEnv::new("listempty");
    let o = env.ferry(&["list", "-q"]).ok();
    assert!(o.stdout.trim().is_empty(), "{o}");
    let o = env.ferry(&["list"]).ok();
    assert_eq!(o.stdout.lines().count(), 1, "only the header:\n{o}");
    assert!(o.stdout.starts_with("ID"), "{o}");
    // runc prints `null` for an empty JSON list; an empty array says the same.
    let v = env.ferry(&["list", "--format", "json"]).ok().json();
    assert!(
        v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
        "{v}"
    );
}

#[test]
fn events_stats_prints_one_stats_event() {
    let env = TestEnv::new("events");
    let id = env.id("c");
    let b = env.bundle(&id, &["sh", "-c", "sleep 1000 & exec counter /count 100"]);
    env.start_running(&b);
    assert!(wait_until(T, || pids_of(&env, &id).len() >= 2));
    let o = env.ferry(&["events", "--stats", &id]).ok();
    let v = o.json();
    assert_eq!(v["type"], "stats", "{o}");
    assert_eq!(v["id"], id.as_str(), "{o}");
    let d = &v["data"];
    assert!(
        d["pids"]["current"].as_u64().unwrap_or(0) >= 2,
        "pids.current counts both: {o}"
    );
    assert!(
        d["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 0,
        "memory usage: {o}"
    );
    assert!(
        d["cpu"]["usage"]["total"].as_u64().is_some(),
        "cpu usage: {o}"
    );
}

fn read_cgroup_file(cgroups_path: &str, file: &str) -> String {
    let dirs = cgroup_dirs(cgroups_path);
    dirs.iter()
        .find_map(|d| fs::read_to_string(d.join(file)).ok())
        .unwrap_or_else(|| panic!("no {file} under {dirs:?}"))
        .trim()
        .to_string()
}

#[test]
fn update_pids_limit_and_memory_from_flags_and_json() {
    let env = TestEnv::new("update");
    let id = env.id("c");
    let b = env.bundle(&id, &["counter", "/count", "100"]);
    env.start_running(&b);

    env.ferry(&["update", "--pids-limit", "42", "--memory", "64M", &id])
        .ok();
    assert_eq!(read_cgroup_file(&b.cgroups_path, "pids.max"), "42");
    assert_eq!(
        read_cgroup_file(&b.cgroups_path, "memory.limit_in_bytes"),
        "67108864"
    );

    let r = env.dir.join("resources.json");
    fs::write(
        &r,
        r#"{"pids": {"limit": 77}, "memory": {"limit": 134217728}}"#,
    )
    .unwrap();
    env.ferry(&["update", "-r", r.to_str().unwrap(), &id]).ok();
    assert_eq!(read_cgroup_file(&b.cgroups_path, "pids.max"), "77");
    assert_eq!(
        read_cgroup_file(&b.cgroups_path, "memory.limit_in_bytes"),
        "134217728"
    );

    // The limit is enforced: with pids.max at the current count, no fork succeeds inside (the
    // exec itself may already fail, as runc's does; if it runs, its own fork must fail).
    let fork = ["exec", &id, "sh", "-c", "sleep 0 & wait $! && echo forked"];
    let n = read_cgroup_file(&b.cgroups_path, "pids.current");
    env.ferry(&["update", "--pids-limit", &n, &id]).ok();
    let o = env.ferry(&fork);
    assert!(
        !o.stdout.contains("forked"),
        "forked past pids.max={n}:\n{o}"
    );
    env.ferry(&["update", "--pids-limit", "100", &id]).ok();
    env.ferry(&fork).ok().stdout_has("forked");
    assert_eq!(env.status(&id), "running");
}

#[test]
fn spec_writes_a_default_config() {
    let env = TestEnv::new("spec");
    let dir = env.dir.join("specdir");
    fs::create_dir(&dir).unwrap();
    env.ferry_in(&dir, &["spec"]).ok();
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert!(
        cfg["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{cfg}"
    );
    assert_eq!(cfg["process"]["args"], serde_json::json!(["sh"]), "{cfg}");
    assert_eq!(cfg["process"]["terminal"], true, "{cfg}");
    assert_eq!(cfg["root"]["path"], "rootfs", "{cfg}");
    let ns: Vec<&str> = cfg["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["type"].as_str())
        .collect();
    for want in ["pid", "network", "ipc", "uts", "mount"] {
        assert!(ns.contains(&want), "namespace {want} in {ns:?}");
    }
    // An existing config.json is never overwritten.
    let o = env.ferry_in(&dir, &["spec"]).failed();
    assert!(o.stderr.contains("exists"), "{o}");

    // --bundle writes elsewhere; --rootless adds a user namespace with mappings.
    let rl = env.dir.join("rootless");
    fs::create_dir(&rl).unwrap();
    env.ferry_bare(&["spec", "--rootless", "--bundle", rl.to_str().unwrap()])
        .ok();
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(rl.join("config.json")).unwrap()).unwrap();
    let ns: Vec<&str> = cfg["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["type"].as_str())
        .collect();
    assert!(
        ns.contains(&"user"),
        "rootless spec has a user namespace: {ns:?}"
    );
    assert!(
        cfg["linux"]["uidMappings"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "{cfg}"
    );
    assert!(
        cfg["linux"]["gidMappings"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "{cfg}"
    );
}

#[test]
fn spec_output_runs_as_a_container() {
    // The generated config, with the rig's rootfs and non-terminal args, runs for real.
    let env = TestEnv::new("specrun");
    let id = env.id("c");
    let b = env.bundle(&id, &["true"]);
    fs::remove_file(b.config_path()).unwrap();
    env.ferry_in(&b.path, &["spec"]).ok();
    b.edit_config(|c| {
        c["process"]["terminal"] = false.into();
        c["process"]["args"] = serde_json::json!(["probe", "9"]);
        c["linux"]["cgroupsPath"] = b.cgroups_path.clone().into();
    });
    let o = env.ferry_in(&b.path, &["run", &id]).code_is(9);
    assert!(o.stdout.contains("pid=1\n"), "{o}");
}

#[test]
fn features_describes_the_runtime() {
    let env = TestEnv::new("features");
    let o = env.ferry_bare(&["features"]).ok();
    let v = o.json();
    assert!(
        v["ociVersionMin"]
            .as_str()
            .is_some_and(|s| s.starts_with("1.")),
        "{o}"
    );
    assert!(
        v["ociVersionMax"]
            .as_str()
            .is_some_and(|s| s.starts_with("1.")),
        "{o}"
    );
    let hooks: Vec<&str> = v["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    for h in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        assert!(hooks.contains(&h), "hook {h} in {hooks:?}");
    }
    let opts = v["mountOptions"].as_array().expect("mountOptions");
    assert!(
        opts.iter().any(|o| o == "rbind") && opts.iter().any(|o| o == "ro"),
        "{o}"
    );
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for n in ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"] {
        assert!(ns.contains(&n), "namespace {n} in {ns:?}");
    }
    let caps = v["linux"]["capabilities"]
        .as_array()
        .expect("linux.capabilities");
    assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{o}");
    assert_eq!(
        v["linux"]["cgroup"]["v1"], true,
        "this build drives cgroup v1: {o}"
    );
    assert_eq!(v["linux"]["cgroup"]["v2"], true, "and cgroup v2: {o}");
}

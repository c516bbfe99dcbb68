//! `ferry exec` into a container with its own user namespace (0 -> 100000, 65536 ids; the
//! rootfs handed to the mapped range as podman `--uidmap` does): the exec'd process joins the
//! init's user namespace and every other one, takes its user as ids inside, lands in the
//! container's cgroup, keeps the config's capabilities, no_new_privs and seccomp filter, and
//! behaves the same with `-t`, `-d`, `--process`, and after a checkpoint and restore.

mod cr_common;

use std::os::unix::fs::MetadataExt;

use cr_common::*;
use ferry_integration::cmd::wait_until;
use ferry_integration::{Bundle, TestEnv};
use serde_json::json;

const HOST: u32 = 100000;

/// A counter container with its own user namespace, running; returns its bundle and init pid.
fn start(env: &TestEnv, tag: &str, seccomp: bool) -> (String, Bundle, i32) {
    let id = env.id(tag);
    let b = counter_bundle(env, &id);
    userns_bundle(&b, HOST, 65536, i64::from(HOST));
    if seccomp {
        b.edit_config(|c| {
            // Left out, as podman writes it: the filter goes in before the capability drop.
            c["process"]
                .as_object_mut()
                .unwrap()
                .remove("noNewPrivileges");
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 13}]});
        });
    }
    let pid = start_counter(env, &b);
    (id, b, pid)
}

/// `/proc/PID/FILE` read from the host.
fn proc_file(pid: i32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap()
}

/// The `Key:` line of /proc/PID/status, its value trimmed.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status:\n{status}"))
        .trim()
        .to_string()
}

/// stdout of an attached `exec ID ARGS...` that must succeed.
#[track_caller]
fn exec_out(env: &TestEnv, id: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", id];
    all.extend_from_slice(args);
    env.ferry(&all).ok().stdout
}

/// Every check of an exec'd process's place in the container, from inside and from the host.
#[track_caller]
fn assert_exec_joins(env: &TestEnv, id: &str, b: &Bundle, init: i32, what: &str) {
    let map = proc_file(init, "uid_map");
    assert!(
        map.contains(&HOST.to_string()),
        "{what}: init's uid_map {map:?}"
    );
    // Ids and maps from inside: the maps are the init's, root is 0 and --user is as given.
    let o = exec_out(
        env,
        id,
        &["cat", "/proc/self/uid_map", "/proc/self/gid_map"],
    );
    assert_eq!(
        o,
        format!("{map}{}", proc_file(init, "gid_map")),
        "{what}: maps"
    );
    let o = exec_out(env, id, &["sh", "-c", "id -u; id -g; id -G"]);
    assert_eq!(
        o, "0\n0\n0\n",
        "{what}: ids of an exec as the config's user"
    );
    let o = env
        .ferry(&[
            "exec",
            "--user",
            "1000:1000",
            "--additional-gids",
            "2000",
            id,
            "sh",
            "-c",
            "id -u; id -g; id -G",
        ])
        .ok()
        .stdout;
    assert_eq!(
        o, "1000\n1000\n1000 2000\n",
        "{what}: ids of --user 1000:1000"
    );

    // Every namespace is the init's, the user namespace included.
    let kinds = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}; "))
        .collect();
    let o = exec_out(env, id, &["sh", "-c", &script]);
    let want: String = kinds
        .iter()
        .map(|k| {
            let l = std::fs::read_link(format!("/proc/{init}/ns/{k}")).unwrap();
            format!("{}\n", l.display())
        })
        .collect();
    assert_eq!(o, want, "{what}: namespaces of the exec'd process");
    assert_ne!(
        std::fs::read_link(format!("/proc/{init}/ns/user")).unwrap(),
        std::fs::read_link("/proc/self/ns/user").unwrap(),
        "{what}: the container has a user namespace of its own"
    );

    // Files it makes belong to the mapped ids on the host.
    exec_out(
        env,
        id,
        &[
            "sh",
            "-c",
            "rm -rf /u /by-root; mkdir -m 1777 /u; touch /by-root",
        ],
    );
    env.ferry(&["exec", "--user", "1000:1000", id, "touch", "/u/by-1000"])
        .ok();
    let md = std::fs::metadata(b.rootfs().join("by-root")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (HOST, HOST),
        "{what}: /by-root on the host"
    );
    let md = std::fs::metadata(b.rootfs().join("u/by-1000")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (HOST + 1000, HOST + 1000),
        "{what}: /u/by-1000 on the host"
    );

    // Exit codes come through.
    env.ferry(&["exec", id, "sh", "-c", "exit 7"]).code_is(7);
    env.ferry(&["exec", "--user", "1000", id, "sh", "-c", "exit 9"])
        .code_is(9);

    // Detached: seen from the host it is in the container's namespaces and cgroup, as the
    // mapped uid, with the init's capabilities, no_new_privs and seccomp mode.
    let pid_file = env.dir.join(format!("{id}-exec.pid"));
    let _ = std::fs::remove_file(&pid_file);
    env.ferry(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
        "sleep",
        "300",
    ])
    .ok();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("--pid-file written")
        .trim()
        .parse()
        .unwrap();
    env.track_pid(pid);
    assert!(
        wait_until(T, || proc_file(pid, "cmdline").starts_with("sleep")),
        "{what}: the detached exec reached its command"
    );
    for k in kinds {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/{k}")).unwrap(),
            std::fs::read_link(format!("/proc/{init}/ns/{k}")).unwrap(),
            "{what}: detached exec's {k} namespace"
        );
    }
    assert_eq!(
        proc_file(pid, "cgroup"),
        proc_file(init, "cgroup"),
        "{what}: detached exec's cgroup"
    );
    let (s, si) = (proc_file(pid, "status"), proc_file(init, "status"));
    assert_eq!(
        status_field(&s, "Uid"),
        format!("{HOST}\t{HOST}\t{HOST}\t{HOST}"),
        "{what}: host uids of the exec'd process"
    );
    for key in [
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ] {
        assert_eq!(
            status_field(&s, key),
            status_field(&si, key),
            "{what}: {key} of the exec'd process and of the init"
        );
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);

    // -t: a pty, the same ids; the pty is the exec'd user's.
    let o = env
        .ferry(&[
            "exec",
            "-t",
            "--user",
            "1000:1000",
            id,
            "sh",
            "-c",
            "tty; id -u; stat -c %u $(tty); cat /proc/self/uid_map; exit 5",
        ])
        .code_is(5)
        .stdout
        .replace('\r', "");
    let lines: Vec<&str> = o.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("/dev/pts/")),
        "{what}: -t has a pty: {o:?}"
    );
    assert_eq!(
        lines.get(1..3),
        Some(&["1000", "1000"][..]),
        "{what}: -t ids: {o:?}"
    );
    assert_eq!(
        lines
            .get(3)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["0", "100000", "65536"]),
        "{what}: -t uid_map: {o:?}"
    );
}

#[test]
fn exec_joins_the_user_namespace_of_a_userns_container() {
    let env = TestEnv::new("execuns");
    let (id, b, init) = start(&env, "c", false);
    assert_exec_joins(&env, &id, &b, init, "fresh container");
    // --process: the same user, taken as ids inside.
    let p = env.dir.join("process.json");
    let process = json!({"user": {"uid": 1000, "gid": 1000, "additionalGids": [3000]},
        "args": ["sh", "-c", "id -u; id -g; id -G; cat /proc/self/uid_map"],
        "env": [ferry_integration::bundle::CONTAINER_PATH], "cwd": "/"});
    std::fs::write(&p, process.to_string()).unwrap();
    let o = env
        .ferry(&["exec", "--process", p.to_str().unwrap(), &id])
        .ok()
        .stdout;
    let words: Vec<&str> = o.split_whitespace().collect();
    assert_eq!(
        words,
        ["1000", "1000", "1000", "3000", "0", "100000", "65536"],
        "--process: {o}"
    );
    // An id the namespace does not map is a clear error, and the container runs on.
    env.ferry(&["exec", "--user", "70000", &id, "true"])
        .failed()
        .stderr_has("uid 70000");
    assert_eq!(env.status(&id), "running");
    kill_delete_and_check(&env, &b, &id, "KILL");
}

#[test]
fn exec_in_a_userns_container_keeps_its_seccomp_filter() {
    let env = TestEnv::new("execunssc");
    let (id, b, init) = start(&env, "c", true);
    let si = proc_file(init, "status");
    assert_eq!(status_field(&si, "Seccomp"), "2", "the init is filtered");
    assert_eq!(
        status_field(&si, "NoNewPrivs"),
        "0",
        "the init has no no_new_privs"
    );
    let script = "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; \
                  cat /proc/self/uid_map; id -u";
    for (user, nnp) in [
        ("0", false),
        ("1000:1000", false),
        ("0", true),
        ("1000:1000", true),
    ] {
        let mut args = vec!["exec", "--user", user];
        if nnp {
            args.push("--no-new-privs");
        }
        args.push(&id);
        let mut mkdir = args.clone();
        mkdir.extend(["mkdir", "/blocked"]);
        env.ferry(&mkdir).failed().stderr_has("Permission denied");
        args.extend(["sh", "-c", script]);
        let o = env.ferry(&args).ok().stdout;
        let what = format!("--user {user} no_new_privs {nnp}");
        let map: Vec<&str> = o.lines().rev().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(map, ["0", "100000", "65536"], "{what}: uid_map: {o}");
        assert!(o.contains("Seccomp:\t2\n"), "{what}: {o}");
        let want_nnp = format!("NoNewPrivs:\t{}\n", u8::from(nnp));
        assert!(o.contains(&want_nnp), "{what}: {o}");
        // Without no_new_privs the filter went in through widened capabilities, since
        // dropped to the config's: the same sets as the init's (none left for uid 1000).
        let bnd = format!("CapBnd:\t{}\n", status_field(&si, "CapBnd"));
        assert!(o.contains(&bnd), "{what}: {o}\ninit:\n{si}");
        if user == "0" {
            let eff = format!("CapEff:\t{}\n", status_field(&si, "CapEff"));
            assert!(o.contains(&eff), "{what}: {o}\ninit:\n{si}");
        }
        let uid = user.split(':').next().unwrap();
        assert!(o.ends_with(&format!("\n{uid}\n")), "{what}: {o}");
    }
    assert!(!b.rootfs().join("blocked").exists());
    kill_delete_and_check(&env, &b, &id, "KILL");
}

#[test]
fn exec_joins_the_user_namespace_of_a_restored_userns_container() {
    let env = TestEnv::new("execunscr");
    let (id, b, _) = start(&env, "c", false);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped = settled_count(&b);
    let o = restore(&env, &b, &id, &img, &[]);
    assert!(o.success(), "restore:\n{o}");
    assert_counts_on_from(&b, stopped);
    let init = env.state(&id)["pid"].as_i64().unwrap() as i32;
    assert_exec_joins(&env, &id, &b, init, "restored container");
    kill_delete_and_check(&env, &b, &id, "KILL");
}

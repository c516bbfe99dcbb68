//! A tree in its own pid namespace (root = PID 1 with children, a session, process groups and a
//! thread), dumped from the host and restored by ferry as the coordinator on the host
//! (`criu restore`: a new pid namespace made with clone3(CLONE_NEWPID)), twice in a row, each
//! time checked from the inside.

mod crit;
mod pidns_common;

use std::collections::BTreeMap;

use pidns_common::*;

#[test]
fn pidns_dump_restore_twice() {
    two_cycles(
        &|imgs| {
            let pidfile = imgs.join("pid");
            let out = criu(&[
                "restore",
                "-D",
                imgs.to_str().unwrap(),
                "-d",
                "-v4",
                "-o",
                "restore.log",
                "--pidfile",
                pidfile.to_str().unwrap(),
            ]);
            assert_ok(&out, "restore", &imgs.join("restore.log"));
            let host = std::fs::read_to_string(&pidfile)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            (host, String::new())
        },
        &|_, host, _| {
            assert_ne!(host, 1);
            assert_eq!(
                ns_pid(host),
                1,
                "pidfile must hold the host pid of the new init"
            );
        },
    );
}

#[test]
fn pidns_dump_refuses_non_init_root() {
    subreaper();
    let reports = tempfile::tempdir().unwrap();
    let (mut unshare, init) = start(reports.path());
    let guard = NsGuard(init);
    let r = wait_reports(reports.path(), &BTreeMap::new());
    // "b" is pid r["b"].pid inside: dumping it alone leaves its namespace's init behind.
    let b_host = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse::<i32>().unwrap())
        .find(|&h| ns_pid(h) == r["b"].pid)
        .unwrap();
    let imgs = tempfile::tempdir().unwrap();
    let pid = b_host.to_string();
    let out = criu(&[
        "dump",
        "-t",
        &pid,
        "-D",
        imgs.path().to_str().unwrap(),
        "--leave-running",
        "--shell-job",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the namespace's init"), "{err}");
    // The tree runs on.
    wait_reports(reports.path(), &counters(&r));
    drop(guard);
    let _ = unshare.wait();
}

#[test]
fn pidns_dump_refuses_nested_namespace() {
    use std::os::unix::process::CommandExt;
    subreaper();
    // sh (in ferry's pid namespace) -> unshare (its children in a new one) -> sleep (PID 1 there)
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "unshare -p -f sleep 1000 & wait"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    };
    let mut sh = cmd.spawn().unwrap();
    let root = sh.id() as i32;
    let kids = |p: i32| -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let start = std::time::Instant::now();
    let (unshare, sleep) = loop {
        if let Some(&u) = kids(root).first() {
            if let Some(&s) = kids(u).first() {
                if ns_pid(s) == 1 {
                    break (u, s);
                }
            }
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let imgs = tempfile::tempdir().unwrap();
    let pid = root.to_string();
    let out = criu(&[
        "dump",
        "-t",
        &pid,
        "-D",
        imgs.path().to_str().unwrap(),
        "--leave-running",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // Never harm the victim: every task still there and not stopped.
    for p in [root, unshare, sleep] {
        let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        let state = st[st.rfind(')').unwrap() + 2..].chars().next().unwrap();
        assert!(
            state == 'S' || state == 'R',
            "task {p} left in state {state}"
        );
    }
    for p in [sleep, unshare, root] {
        // SAFETY: SIGKILL to tasks this test started.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = sh.wait();
    kill_ns(sleep);
    assert!(
        !out.status.success(),
        "dump of a nested pid namespace succeeded"
    );
    assert!(err.contains("nested pid namespace"), "{err}");
}

#[test]
fn pidns_restore_failure_leaves_nothing() {
    let Dumped {
        reports,
        imgs,
        before,
    } = dumped_tree();
    // Task "a1" (a grandchild) fails after the namespace and the rest of the tree exist.
    let a1 = before["a1"].pid.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["restore", "-D", imgs.path().to_str().unwrap(), "-d"])
        .env("FERRY_TEST_FAIL_TASK", &a1)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("task {a1}")) && err.contains("injected failure"),
        "{err}"
    );
    // Nothing of the tree runs: no report moves any more.
    let snap = |_: ()| -> Vec<Option<Report>> {
        ROLES
            .iter()
            .map(|r| read_report(reports.path(), r))
            .collect()
    };
    let first = snap(());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        first,
        snap(()),
        "some task of the failed restore still runs"
    );
}

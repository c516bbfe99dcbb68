//! seccomp across checkpoints, zdtm style: tests/workloads/seccomp_chains.c installs its filters
//! (or strict mode) in each mode, says "ready", is dumped and restored twice in a row by
//! `ferry-criu`, then is told (SIGUSR1) to verify from the inside (the filtered syscalls still
//! fail with their errnos, each thread has its own chain, no_new_privs and capabilities as they
//! were, a TSYNC still possible) and writes PASS or what failed. Between the cycles the test
//! compares each thread's Seccomp / Seccomp_filters / NoNewPrivs / Cap* lines in /proc.
//! Also: the dumpee's two stacked filters (one with SECCOMP_FILTER_FLAG_LOG), and a filter
//! returning SECCOMP_RET_USER_NOTIF refused by name at dump (the task runs on).

mod crit;
mod restore_common;
mod support;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use restore_common::*;
use support::{assert_ok, dump, restore_ok, start, verdict, wait_gone};

fn chains_bin(libseccomp: bool) -> PathBuf {
    if libseccomp {
        workload::build(
            "seccomp_chains.c",
            "seccomp-chains-libseccomp",
            &[
                "-O1",
                "-pthread",
                "-Wall",
                "-DWITH_LIBSECCOMP",
                // gcc places these before the source: the whole archive, not a -l lookup.
                "-Wl,--whole-archive,/usr/lib/x86_64-linux-gnu/libseccomp.a,--no-whole-archive",
            ],
        )
    } else {
        workload::build(
            "seccomp_chains.c",
            "seccomp-chains",
            &["-O1", "-pthread", "-Wall"],
        )
    }
}

/// Per thread (sorted by tid): the seccomp, no_new_privs and capability lines of /proc.
fn seccomp_view(pid: u32) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        let keep = [
            "Seccomp:",
            "Seccomp_filters:",
            "NoNewPrivs:",
            "CapEff:",
            "CapPrm:",
            "CapInh:",
            "CapBnd:",
        ];
        let lines = st
            .lines()
            .filter(|l| keep.iter().any(|k| l.starts_with(k)))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push((tid, lines));
    }
    out.sort();
    out
}

/// Two dump/restore cycles comparing the /proc view, then (with `work`) SIGUSR1 and the
/// workload's own verdict from WORK/result.
fn two_cycles(pid: u32, work: Option<&Path>) {
    for round in 0..2 {
        let before = seccomp_view(pid);
        let d = tempfile::tempdir().unwrap();
        let out = dump(pid, d.path(), &[]);
        assert_ok(&out, d.path(), &format!("round {round}: dump"));
        assert!(
            d.path().join("seccomp.img").exists(),
            "round {round}: no seccomp.img"
        );
        wait_gone(&[pid]);
        restore_ok(d.path(), &format!("round {round}"));
        assert!(exists(pid), "round {round}: restored task {pid} is gone");
        assert_eq!(
            seccomp_view(pid),
            before,
            "round {round}: seccomp view of {pid}"
        );
    }
    let Some(work) = work else { return };
    assert_eq!(verdict(pid, work), "PASS");
}

fn run_mode(mode: &str, libseccomp: bool) {
    setup();
    let bin = chains_bin(libseccomp);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();
    let pid = start(&bin, &[mode, dir], Some(&work.path().join("ready")));
    let _k = Killer(vec![pid]);
    two_cycles(pid, Some(work.path()));
}

#[test]
fn seccomp_two_stacked_filters_without_nnp_or_cap_sys_admin_two_cycles() {
    run_mode("single", false);
}

#[test]
fn seccomp_threads_with_own_chains_strict_and_none_two_cycles() {
    run_mode("threads", false);
}

#[test]
fn seccomp_shared_filter_still_allows_tsync_after_two_cycles() {
    run_mode("tsync", false);
}

#[test]
fn seccomp_chain_at_the_kernels_instruction_limit_two_cycles() {
    run_mode("long", false);
}

#[test]
fn seccomp_libseccomp_filter_with_argument_rules_two_cycles() {
    run_mode("libseccomp", true);
}

#[test]
fn seccomp_dumpee_stacked_filters_with_log_flag_two_cycles() {
    setup();
    let bin = workload::build(
        "dumpee.c",
        "ferry-dumpee",
        &["-O1", "-pthread", "-mavx2", "-Wall"],
    );
    let pid = start(&bin, &["seccomp", "0"], None);
    let _k = Killer(vec![pid]);
    let t = Instant::now();
    while seccomp_view(pid).len() < 2 || status_field(pid, "Seccomp_filters") != "2" {
        assert!(t.elapsed() < Duration::from_secs(10), "dumpee never set up");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    two_cycles(pid, None);
    assert_runs(pid);
}

#[test]
fn seccomp_user_notif_filter_fails_the_dump_by_name_and_the_task_runs_on() {
    setup();
    let bin = chains_bin(false);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();
    let pid = start(&bin, &["notif", dir], Some(&work.path().join("ready")));
    let _k = Killer(vec![pid]);
    let before = seccomp_view(pid);
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the dump of a USER_NOTIF filter succeeded"
    );
    assert!(
        err.contains("SECCOMP_RET_USER_NOTIF") && err.contains(&pid.to_string()),
        "error does not name the filter kind and thread: {err}"
    );
    // Not stopped, not traced: the verdict below shows it runs on.
    let state = status_field(pid, "State");
    assert!(state.starts_with('S') || state.starts_with('R'), "{state}");
    assert_eq!(status_field(pid, "TracerPid"), "0");
    assert_eq!(seccomp_view(pid), before);
    assert_eq!(verdict(pid, work.path()), "PASS");
}

#[test]
fn seccomp_filter_the_kernel_refuses_fails_the_restore_by_step_and_leaves_nothing() {
    use ferry_images::{pb, ImageDir};
    setup();
    let bin = chains_bin(false);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap();
    let pid = start(&bin, &["single", dir], Some(&work.path().join("ready")));
    let _k = Killer(vec![pid]);
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_gone(&[pid]);
    // The newest filter becomes a program the kernel's checker rejects (an unknown opcode):
    // well-formed in the image, so only the install in the restorer can fail.
    let img = ImageDir::open(d.path()).unwrap();
    let mut e: Vec<pb::SeccompEntry> = img.read_entries("seccomp.img").unwrap();
    e[0].seccomp_filters[1].filter[0..2].copy_from_slice(&0xffffu16.to_le_bytes());
    img.write_entries("seccomp.img", &e).unwrap();
    std::fs::remove_file(d.path().join("ferry-manifest.json")).unwrap();
    let out = restore(d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused filter restored");
    assert!(err.contains("seccomp") && err.contains("errno 22"), "{err}");
    assert_gone(&[pid]);
}

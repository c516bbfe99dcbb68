//! cgroups: membership and controller settings (v1 cpu and pids, cgroup2) dumped from a real
//! task, restored per --manage-cgroups-mode into a fresh task, verified, twice in a row.
//! Runs as root; every cgroup made here is removed on drop, after the tasks are killed.

#[path = "container_res_common.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{crit_decodes_all, NsChild};
use ferry_engine::cgroups::{self, CgroupMode};
use ferry_images::{pb, ImageDir};

const CG: &str = "/sys/fs/cgroup";

/// Removes the listed cgroups (deepest first) on drop, retrying while tasks drain.
struct CgGuard(Vec<PathBuf>);
impl Drop for CgGuard {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            for _ in 0..100 {
                if !d.exists() || std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn w(p: impl AsRef<Path>, v: &str) {
    std::fs::write(p.as_ref(), v)
        .unwrap_or_else(|e| panic!("write {v:?} to {}: {e}", p.as_ref().display()));
}

fn r(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .unwrap()
        .trim()
        .to_string()
}

fn task_path(pid: i32, ctl: &str) -> String {
    cgroups::dump::task_cgroups(pid)
        .unwrap()
        .into_iter()
        .find(|(c, _)| c == ctl)
        .unwrap()
        .1
}

#[test]
fn cgroup_membership_and_properties_survive_two_cycles() {
    let name = common::unique("cg");
    let pids_d = PathBuf::from(CG).join("pids").join(&name);
    let cpu_d = PathBuf::from(CG).join("cpu").join(&name);
    let cpu_sub = cpu_d.join("sub");
    let v2_d = PathBuf::from(CG).join("unified").join(&name);
    let _guard = CgGuard(vec![
        pids_d.clone(),
        cpu_d.clone(),
        cpu_sub.clone(),
        v2_d.clone(),
    ]);
    for d in [&pids_d, &cpu_d, &cpu_sub, &v2_d] {
        std::fs::create_dir(d).unwrap();
    }
    w(pids_d.join("pids.max"), "77");
    w(cpu_d.join("cpu.shares"), "512");
    w(cpu_sub.join("cpu.shares"), "256");
    let a = NsChild::spawn(&[]);
    for d in [&pids_d, &cpu_d, &v2_d] {
        w(d.join("cgroup.procs"), &a.pid.to_string());
    }
    let want = format!("/{name}");
    let mut src = a;
    let mut keep = Vec::new();
    for round in 1..=2 {
        let t = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(t.path()).unwrap();
        let d = cgroups::dump_cgroups(&dir, &[src.pid], CgroupMode::Soft).unwrap();
        assert!(d.written);
        let set = d.sets[&src.pid];
        assert_eq!(crit_decodes_all(t.path()), ["cgroup.img"]);
        let img: pb::CgroupEntry = dir.read_one("cgroup.img").unwrap();
        let pids_ctl = img
            .controllers
            .iter()
            .find(|c| c.cnames == ["pids"])
            .unwrap();
        assert_eq!(pids_ctl.dirs[0].dir_name, name);
        let pm = pids_ctl.dirs[0]
            .properties
            .iter()
            .find(|p| p.name == "pids.max")
            .unwrap();
        assert_eq!(pm.value, "77");
        let cpu_ctl = img
            .controllers
            .iter()
            .find(|c| c.cnames == ["cpu"])
            .unwrap();
        assert_eq!(cpu_ctl.dirs[0].children[0].dir_name, "sub");
        // The host-wide root cgroups are listed in the set but never walked.
        let sysd = img
            .controllers
            .iter()
            .find(|c| c.cnames == ["name=systemd"])
            .unwrap();
        assert!(sysd.dirs.iter().all(|d| d.children.is_empty()));

        let b = NsChild::spawn(&[]);
        let mode = if round == 1 {
            // Soft: the task left, the cgroups are removed, restore recreates them and their
            // properties.
            drop(std::mem::replace(&mut src, NsChild::spawn(&[])));
            for d in [&cpu_sub, &pids_d, &cpu_d, &v2_d] {
                for _ in 0..100 {
                    if std::fs::remove_dir(d).is_ok() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                assert!(!d.exists(), "{} still there", d.display());
            }
            CgroupMode::Soft
        } else {
            // Full: the cgroups exist with other settings; restore rewrites them.
            w(pids_d.join("pids.max"), "5");
            w(cpu_sub.join("cpu.shares"), "100");
            // Strict refuses existing cgroups, leaving them and the task alone.
            let err = cgroups::restore_cgroups(&dir, CgroupMode::Strict, &[(b.pid, set)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("strict") || err.contains("Strict"), "{err}");
            assert_eq!(task_path(b.pid, "pids"), "/");
            CgroupMode::Full
        };
        let st = cgroups::restore_cgroups(&dir, mode, &[(b.pid, set)]).unwrap();
        assert_eq!(
            st.created.len(),
            if round == 1 { 4 } else { 0 },
            "round {round}"
        );
        for ctl in ["pids", "cpu", ""] {
            assert_eq!(
                task_path(b.pid, ctl),
                want,
                "round {round} controller {ctl:?}"
            );
        }
        assert_eq!(
            task_path(b.pid, "memory"),
            task_path(std::process::id() as i32, "memory")
        );
        assert_eq!(r(pids_d.join("pids.max")), "77", "round {round}");
        assert_eq!(r(cpu_d.join("cpu.shares")), "512");
        assert_eq!(r(cpu_sub.join("cpu.shares")), "256", "round {round}");
        keep.push(std::mem::replace(&mut src, b));
    }
}

#[test]
fn cgroup_modes_none_props_and_ignore() {
    let name = common::unique("cgm");
    let pids_d = PathBuf::from(CG).join("pids").join(&name);
    let _guard = CgGuard(vec![pids_d.clone()]);
    std::fs::create_dir(&pids_d).unwrap();
    w(pids_d.join("pids.max"), "33");
    let a = NsChild::spawn(&[]);
    w(pids_d.join("cgroup.procs"), &a.pid.to_string());
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    // Ignore writes nothing.
    let d = cgroups::dump_cgroups(&dir, &[a.pid], CgroupMode::Ignore).unwrap();
    assert!(!d.written && d.sets.is_empty());
    assert!(!t.path().join("cgroup.img").exists());
    let d = cgroups::dump_cgroups(&dir, &[a.pid], CgroupMode::Props).unwrap();
    let set = d.sets[&a.pid];
    w(pids_d.join("pids.max"), "9");
    let b = NsChild::spawn(&[]);
    // None: joins, leaves the property alone.
    cgroups::restore_cgroups(&dir, CgroupMode::None, &[(b.pid, set)]).unwrap();
    assert_eq!(task_path(b.pid, "pids"), format!("/{name}"));
    assert_eq!(r(pids_d.join("pids.max")), "9");
    // Props: rewrites it.
    cgroups::restore_cgroups(&dir, CgroupMode::Props, &[(b.pid, set)]).unwrap();
    assert_eq!(r(pids_d.join("pids.max")), "33");
    // Ignore on restore: the task is not moved.
    let c = NsChild::spawn(&[]);
    cgroups::restore_cgroups(&dir, CgroupMode::Ignore, &[(c.pid, set)]).unwrap();
    assert_eq!(task_path(c.pid, "pids"), "/");
    // An unknown set is an error naming it; an unknown mode name too.
    let err = cgroups::restore_cgroups(&dir, CgroupMode::Full, &[(c.pid, 99)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("set 99"), "{err}");
    assert!("bogus"
        .parse::<CgroupMode>()
        .unwrap_err()
        .to_string()
        .contains("bogus"));
    // Props/None need the cgroups to exist.
    drop((a, b));
    for _ in 0..100 {
        if std::fs::remove_dir(&pids_d).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let err = cgroups::restore_cgroups(&dir, CgroupMode::Props, &[(c.pid, set)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(task_path(c.pid, "pids"), "/");
}

//! Shared pieces of the pid namespace tests: the workload tree started as PID 1 of a new pid
//! namespace (`unshare --pid --fork`), its reports from the inside, dumps, and cleanup by pid.
#![allow(dead_code)]

#[path = "../workload/mod.rs"]
mod workload_build;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_images::{pb, ImageDir};

/// Roles the workload reports under, with the namespace pid, ppid, pgid and sid each must see.
pub const ROLES: [&str; 5] = ["root", "thread", "a", "a1", "b"];

/// What a task reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub tid: i32,
    pub ok: bool,
    pub counter: u64,
}

/// tests/workloads/pidns_tree.c, built once (see `workload::build`).
pub fn workload() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        workload_build::build(
            "pidns_tree.c",
            "ferry-pidns-tree",
            &["-O1", "-pthread", "-Wall"],
        )
    })
    .clone()
}

/// Makes this test process a child subreaper: restored namespace inits orphaned by ferry or the
/// harness come to us, so we can reap them.
pub fn subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

pub fn read_report(dir: &Path, role: &str) -> Option<Report> {
    let s = std::fs::read_to_string(dir.join(role)).ok()?;
    let v: Vec<i64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 7).then(|| Report {
        pid: v[0] as i32,
        ppid: v[1] as i32,
        pgid: v[2] as i32,
        sid: v[3] as i32,
        tid: v[4] as i32,
        ok: v[5] == 1,
        counter: v[6] as u64,
    })
}

/// Waits until every role reports a counter above `after` (per role); returns the reports.
pub fn wait_reports(dir: &Path, after: &BTreeMap<String, u64>) -> BTreeMap<String, Report> {
    let start = Instant::now();
    loop {
        let mut got = BTreeMap::new();
        for r in ROLES {
            if let Some(rep) = read_report(dir, r) {
                if rep.counter > after.get(r).copied().unwrap_or(0) + 2 {
                    got.insert(r.to_string(), rep);
                }
            }
        }
        if got.len() == ROLES.len() {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "workload did not report on: got {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tree's shape from the inside: root is PID 1 leading session and group 1, a leads its own
/// group with a1 in it, b is in the root's group, the thread is in the root.
pub fn check_shape(r: &BTreeMap<String, Report>) {
    let root = r["root"];
    assert_eq!(
        (root.pid, root.ppid, root.pgid, root.sid, root.tid),
        (1, 0, 1, 1, 1)
    );
    let th = r["thread"];
    assert_eq!((th.pid, th.sid), (1, 1));
    assert_ne!(th.tid, 1);
    let a = r["a"];
    assert_eq!((a.ppid, a.pgid, a.sid), (1, a.pid, 1));
    let a1 = r["a1"];
    assert_eq!((a1.ppid, a1.pgid, a1.sid), (a.pid, a.pid, 1));
    let b = r["b"];
    assert_eq!((b.ppid, b.pgid, b.sid), (1, 1, 1));
    for (role, rep) in r {
        assert!(
            rep.ok,
            "{role}: its memory no longer holds its pattern: {rep:?}"
        );
    }
}

/// Same pids, parents, groups and threads as before, and memory intact.
pub fn assert_same(before: &BTreeMap<String, Report>, after: &BTreeMap<String, Report>) {
    check_shape(after);
    for r in ROLES {
        let (b, a) = (before[r], after[r]);
        assert_eq!(
            (b.pid, b.ppid, b.pgid, b.sid, b.tid),
            (a.pid, a.ppid, a.pgid, a.sid, a.tid),
            "{r}: ids changed across dump/restore"
        );
    }
}

pub fn counters(r: &BTreeMap<String, Report>) -> BTreeMap<String, u64> {
    r.iter().map(|(k, v)| (k.clone(), v.counter)).collect()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Starts the workload as PID 1 of a new pid namespace; returns (the unshare process, the host
/// pid of the namespace init).
// The caller waits for the returned child once its namespace init is gone.
#[allow(clippy::zombie_processes)]
pub fn start(report_dir: &Path) -> (std::process::Child, i32) {
    start_exe(&workload(), report_dir)
}

/// [`start`] with the workload binary at `exe` (a copy of it).
#[allow(clippy::zombie_processes)]
pub fn start_exe(exe: &Path, report_dir: &Path) -> (std::process::Child, i32) {
    let child = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(exe)
        .arg(report_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    let start = Instant::now();
    loop {
        if let Some(&init) = children(child.id() as i32).first() {
            return (child, init);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no namespace init"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last NSpid of a host pid.
pub fn ns_pid(host: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{host}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .unwrap()
}

pub fn criu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry-criu")
}

pub fn assert_ok(out: &Output, what: &str, log: &Path) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstderr: {}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Dumps the tree of host pid `root` into `dir` and checks the images: crit decodes all,
/// pstree has the namespace pids, ids and inventory name the tree's own pid namespace.
pub fn dump_and_check(root: i32, dir: &Path) {
    let pid = root.to_string();
    let dir_s = dir.to_str().unwrap();
    let out = criu(&["dump", "-t", &pid, "-D", dir_s, "-v4", "-o", "dump.log"]);
    assert_ok(&out, "dump", &dir.join("dump.log"));
    super::crit::decode_all(dir, |n| {
        !(n.starts_with("pages-") || n.ends_with(".log") || n.contains("manifest"))
    });
    let d = ImageDir::open(dir).unwrap();
    let ps: Vec<pb::PstreeEntry> = d.read_entries("pstree.img").unwrap();
    assert_eq!(ps.len(), 4, "{ps:?}");
    assert_eq!((ps[0].pid, ps[0].ppid, ps[0].pgid, ps[0].sid), (1, 0, 1, 1));
    assert_eq!(ps[0].threads.len(), 2);
    assert_eq!(ps[0].threads[0], 1);
    for e in &ps {
        assert!(e.pid < 100, "pstree holds a host pid: {e:?}");
        for t in &e.threads {
            assert!(d.has(&format!("core-{t}.img")), "core-{t}.img missing");
        }
        assert!(d.has(&format!("mm-{}.img", e.pid)));
    }
    let inv: pb::InventoryEntry = d.read_one("inventory.img").unwrap();
    let ids: pb::TaskKobjIdsEntry = d.read_one("ids-1.img").unwrap();
    let root_ids = inv.root_ids.expect("root_ids");
    assert_ne!(
        root_ids.pid_ns_id, ids.pid_ns_id,
        "the tree's pid ns is its own"
    );
    assert_eq!(
        root_ids.net_ns_id, ids.net_ns_id,
        "the net ns is the host's"
    );
    for e in &ps[1..] {
        let i: pb::TaskKobjIdsEntry = d.read_one(&format!("ids-{}.img", e.pid)).unwrap();
        assert_eq!(i.pid_ns_id, ids.pid_ns_id);
    }
}

/// Kills the host pid of a namespace init (which takes the namespace with it) and reaps.
pub fn kill_ns(init: i32) {
    // SAFETY: SIGKILL to a namespace init this test started or restored.
    unsafe { libc::kill(init, libc::SIGKILL) };
    let start = Instant::now();
    while Path::new(&format!("/proc/{init}")).exists() && start.elapsed() < Duration::from_secs(10)
    {
        let mut st = 0;
        // SAFETY: reaps our (subreaper) children; harmless otherwise.
        unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills a namespace init on drop.
pub struct NsGuard(pub i32);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if self.0 > 0 {
            kill_ns(self.0);
        }
    }
}

/// A tree checkpointed from its own pid namespace: its reports directory, its images and the
/// reports it gave before the dump (which killed it).
pub struct Dumped {
    pub reports: tempfile::TempDir,
    pub imgs: tempfile::TempDir,
    pub before: BTreeMap<String, Report>,
}

/// Starts the workload at `exe` as PID 1 of a new pid namespace ([`start_exe`]), waits for its
/// first reports, dumps it ([`dump_and_check`]) and waits for the unshare process that ends
/// with it; the namespace is killed by pid if any step fails.
pub fn dumped_tree_of(exe: &Path) -> Dumped {
    subreaper();
    let reports = tempfile::tempdir().unwrap();
    let (mut unshare, init) = start_exe(exe, reports.path());
    let guard = NsGuard(init);
    let before = wait_reports(reports.path(), &BTreeMap::new());
    let imgs = tempfile::tempdir().unwrap();
    dump_and_check(init, imgs.path());
    drop(guard);
    let _ = unshare.wait();
    Dumped {
        reports,
        imgs,
        before,
    }
}

/// [`dumped_tree_of`] the workload itself.
pub fn dumped_tree() -> Dumped {
    dumped_tree_of(&workload())
}

/// Two checkpoints of the tree in its own pid namespace: each round dumps it ([`dump_and_check`]),
/// `restore` brings it back from the images and returns the new init's host pid (killed by pid
/// from then on) with what to check, `check(round, host, what)` looks at it, and every task
/// must report as before the first dump.
pub fn two_cycles(restore: &dyn Fn(&Path) -> (i32, String), check: &dyn Fn(usize, i32, &str)) {
    subreaper();
    let reports = tempfile::tempdir().unwrap();
    let (mut unshare, init) = start(reports.path());
    let mut guard = NsGuard(init);
    let before = wait_reports(reports.path(), &BTreeMap::new());
    check_shape(&before);
    assert_eq!(ns_pid(init), 1, "the workload is its namespace's init");

    let mut host = init;
    let mut last = before.clone();
    for round in 0..2 {
        let imgs = tempfile::tempdir().unwrap();
        dump_and_check(host, imgs.path());
        guard.0 = 0;
        if round == 0 {
            // The unshare process ends with its child, which the dump killed.
            let _ = unshare.wait();
        }
        let (h, what) = restore(imgs.path());
        host = h;
        guard.0 = host;
        check(round, host, &what);
        let now = wait_reports(reports.path(), &counters(&last));
        assert_same(&before, &now);
        last = now;
    }
}

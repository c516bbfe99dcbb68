//! Freeze-then-seize against real cgroup freezers, v1 (`freezer.state`) and v2
//! (`cgroup.freeze` on the unified hierarchy at /sys/fs/cgroup/unified): the tree of
//! `frozen_loop` (a thread spinning on a counter it mirrors into a shared file, a
//! job-control-stopped child, a napping main thread) is frozen, dumped with
//! `dump_in_frozen_cgroup`, and the counter in the memory images must be the one the frozen
//! tree showed: no user code ran between the freeze and the seize. A cgroup frozen before the
//! dump (a paused container) is frozen again afterwards and the counter has not moved; one that
//! was running runs on. The stopped child stays stopped either way. Another process of the
//! cgroup, outside the tree, is held still too (not dumped; a paused one does not move).

mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_engine::dump::{dump_in_frozen_cgroup, DumpOptions};
use ferry_engine::dump_log::DumpLog;
use ferry_engine::freeze::Freezer;

const MAGIC: u64 = 0x706f6f6c7a727266;
const V1_ROOT: &str = "/sys/fs/cgroup/freezer";
const V2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A cgroup of the test's own, with the freezer of its version; removed (thawed, emptied) on
/// drop.
struct Cg {
    dir: PathBuf,
    v2: bool,
    was_frozen: bool,
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Cg {
    fn new(v2: bool, name: &str) -> Cg {
        let dir = Path::new(if v2 { V2_ROOT } else { V1_ROOT }).join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cg {
            dir,
            v2,
            was_frozen: false,
        }
    }

    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn frozen(&self) -> bool {
        if self.v2 {
            std::fs::read_to_string(self.dir.join("cgroup.events"))
                .unwrap()
                .lines()
                .any(|l| l == "frozen 1")
        } else {
            std::fs::read_to_string(self.dir.join("freezer.state"))
                .unwrap()
                .trim()
                == "FROZEN"
        }
    }

    fn write(&self, frozen: bool) -> Result<(), String> {
        let (file, val) = match (self.v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        std::fs::write(self.dir.join(file), val).map_err(|e| format!("{file}: {e}"))
    }
}

impl Freezer for Cg {
    fn freeze(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            self.write(true)?;
            if self.frozen() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err("the cgroup does not freeze".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn thaw(&mut self) -> Result<(), String> {
        self.write(false)
    }

    fn was_frozen(&self) -> bool {
        self.was_frozen
    }

    fn processes(&self) -> Result<Vec<i32>, String> {
        Ok(self.procs())
    }
}

impl Drop for Cg {
    fn drop(&mut self) {
        let _ = self.write(false);
        for p in self.procs() {
            // SAFETY: kill(2) on the test's own workload processes.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let start = Instant::now();
        while std::fs::remove_dir(&self.dir).is_err() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn counter(file: &Path) -> u64 {
    let b = std::fs::read(file).unwrap();
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// The spinning counter as the memory images hold it (the word after the magic).
fn image_counter(dir: &Path) -> u64 {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pages-") {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        for (i, w) in data.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(w.try_into().unwrap()) == MAGIC {
                let v = &data[(i + 1) * 8..(i + 2) * 8];
                found.push(u64::from_le_bytes(v.try_into().unwrap()));
            }
        }
    }
    // The parent's copy (the stopped child's, inherited at fork, holds an early value).
    found
        .into_iter()
        .max()
        .expect("the counter's magic in the pages images")
}

fn state(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

fn run(v2: bool) {
    let name = format!(
        "ferry-frz-{}-v{}",
        std::process::id(),
        if v2 { 2 } else { 1 }
    );
    let bin = workload::build("frozen_loop.c", "frozen_loop", &["-O2", "-pthread"]);
    let shared = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
    let mut cg = Cg::new(v2, &name);
    let mut child = std::process::Command::new(&bin)
        .arg(&name)
        .arg(shared.path())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::fs::write(cg.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    // Another process of the cgroup, outside the dumped tree (as a runtime's exec would be).
    let other_shared = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
    let mut other = std::process::Command::new(&bin)
        .arg(&name)
        .arg(other_shared.path())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(cg.dir.join("cgroup.procs"), other.id().to_string()).unwrap();
    wait_for("the other loop spins", || {
        std::fs::metadata(other_shared.path()).unwrap().len() >= 8
            && counter(other_shared.path()) > 1000
    });
    wait_for("the loop spins", || {
        std::fs::metadata(shared.path()).unwrap().len() >= 8 && counter(shared.path()) > 1000
    });
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .next()
    };
    wait_for("a stopped child", || {
        stopped().is_some_and(|c| state(c) == 'T')
    });
    let kid = stopped().unwrap();

    for paused in [false, true] {
        let case = format!("v{} paused={paused}", if v2 { 2 } else { 1 });
        cg.was_frozen = paused;
        cg.freeze().unwrap();
        let at_freeze = counter(shared.path());
        let other_at_freeze = counter(other_shared.path());
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut opts = DumpOptions::new(pid, d.path());
        opts.leave_running = true;
        let report =
            dump_in_frozen_cgroup(&opts, &mut DumpLog::none(), &mut cg, Default::default())
                .unwrap_or_else(|e| panic!("{case}: dump: {e}"));
        assert_eq!(
            report.tasks, 2,
            "{case}: the loop and its stopped child, not the other process"
        );
        let seized = image_counter(d.path());
        // Frozen between the increment and the copy, the global is one ahead of the file.
        assert!(
            seized == at_freeze || seized == at_freeze + 1,
            "{case}: the tree ran between freeze and seize: counter {at_freeze} when frozen, \
             {seized} in the images"
        );
        if paused {
            assert!(cg.frozen(), "{case}: frozen again after the dump");
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                counter(shared.path()),
                at_freeze,
                "{case}: the paused tree ran during its dump"
            );
            assert_eq!(
                counter(other_shared.path()),
                other_at_freeze,
                "{case}: the paused cgroup's other process ran during the dump"
            );
            cg.thaw().unwrap();
        } else {
            assert!(!cg.frozen(), "{case}: thawed after the dump");
        }
        wait_for("the loop spins on", || {
            counter(shared.path()) > at_freeze + 1000
        });
        wait_for("the other process spins on", || {
            counter(other_shared.path()) > other_at_freeze + 1000
        });
        // Detached with SIGSTOP queued again: it stops once more and stays stopped.
        wait_for("the stopped child stopped again", || state(kid) == 'T');
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(state(kid), 'T', "{case}: the stopped child stays stopped");
    }
    drop(cg);
    let _ = child.wait();
    let _ = other.wait();
}

#[test]
fn freeze_then_seize_cgroup_v1() {
    run(false);
}

#[test]
fn freeze_then_seize_cgroup_v2() {
    assert!(
        Path::new(V2_ROOT).join("cgroup.controllers").exists(),
        "cgroup2 at {V2_ROOT}"
    );
    run(true);
}

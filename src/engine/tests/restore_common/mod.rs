//! Helpers shared by the restore tests: fixture copies, running `ferry-criu restore`, reading a
//! restored task's memory and /proc view, and killing by pid.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const FIXTURES: &str = "/work/shared/fixtures/criu-4.2";

/// Serialises the tests of one binary: they restore the same fixed pids.
pub fn lock() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held while a test restores the CRIU fixtures: their tasks take fixed pids and their binaries
/// sit at fixed paths, and nextest runs every test in a process of its own, from several test
/// binaries at once, so [`lock`] alone does not keep two such restores apart. An flock on one
/// file does (across processes, and across threads too: each call opens the file anew).
pub struct FixtureLock(std::fs::File);

pub fn fixture_lock() -> FixtureLock {
    let path = Path::new("/tmp/ferry-fixture/pids.lock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    // SAFETY: flock on a file this guard holds open (close-on-exec); released when it is closed.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", path.display());
    FixtureLock(f)
}

/// Installs the fixture binaries where the images expect them (byte-identical), and makes
/// this test process a child subreaper so restored trees (orphaned when ferry exits) are ours
/// to reap after a kill.
pub fn setup() {
    for b in ["loop", "sigs", "tree", "files"] {
        let src = Path::new(FIXTURES).join("src/bin").join(b);
        let dst = Path::new("/tmp/ferry-fixture/bin").join(b);
        let want = std::fs::read(&src).expect("fixture binary");
        if std::fs::read(&dst).ok().as_deref() != Some(&want[..]) {
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let tmp = dst.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &want).unwrap();
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            std::fs::rename(&tmp, &dst).unwrap();
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// A private copy of a fixture's images (restore writes its log and stats into it).
pub fn copy_images(src: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
        }
    }
    d
}

pub fn fixture(name: &str) -> tempfile::TempDir {
    copy_images(&Path::new(FIXTURES).join(name).join("images"))
}

/// The same, run from `dir`'s parent with a relative `-D` (tasks change their cwd while
/// restoring: the images must still be found).
pub fn restore_relative(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .current_dir(dir.parent().unwrap())
        .args(["restore", "-d", "-v4", "-o", "restore.log", "--pidfile"])
        .arg(Path::new(dir.file_name().unwrap()).join("pid"))
        .arg("-D")
        .arg(dir.file_name().unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ferry-criu")
}

/// `ferry-criu restore -D dir -d -v4 -o restore.log --pidfile dir/pid` plus `extra`.
pub fn restore(dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-criu"));
    c.args(["restore", "-D"])
        .arg(dir)
        .args(["-d", "-v4", "-o", "restore.log", "--pidfile"])
        .arg(dir.join("pid"))
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run ferry-criu")
}

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default()
}

pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills by pid and waits (bounded) until every one is gone from /proc, reaping what we can.
pub fn kill_all(pids: &[u32]) {
    for &p in pids {
        // SAFETY: SIGKILL by pid to tasks this test restored.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    reap(pids);
}

/// Waits (10 s at most) until none of `pids` is in /proc, reaping our (subreaper) children.
fn reap(pids: &[u32]) {
    let start = Instant::now();
    while pids.iter().any(|&p| exists(p)) && start.elapsed() < Duration::from_secs(10) {
        for &p in pids {
            let mut st = 0;
            // SAFETY: reaps our (subreaper) child if it is one; harmless otherwise.
            unsafe { libc::waitpid(p as i32, &mut st, libc::WNOHANG | libc::__WALL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the listed pids when dropped, so a failing test leaves nothing running.
pub struct Killer(pub Vec<u32>);

impl Drop for Killer {
    fn drop(&mut self) {
        kill_all(&self.0);
    }
}

/// Asserts none of `pids` exists (bounded wait for zombies to be reaped).
pub fn assert_gone(pids: &[u32]) {
    reap(pids);
    for &p in pids {
        assert!(!exists(p), "pid {p} still exists after a failed restore");
    }
}

pub fn status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

pub fn status_field(pid: u32, key: &str) -> String {
    status(pid)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Reads `len` bytes of a task's memory.
pub fn read_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, addr).unwrap();
    b
}

pub fn read_u64(pid: u32, addr: u64) -> u64 {
    u64::from_le_bytes(read_mem(pid, addr, 8).try_into().unwrap())
}

/// Address of a symbol in a fixture binary (static, not relocated).
pub fn symbol(bin: &str, name: &str) -> u64 {
    let out = Command::new("nm").arg(bin).output().expect("nm (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .unwrap_or_else(|| panic!("symbol {name} in {bin}"))
}

/// The address/permission/path columns of /proc/PID/maps (inode numbers differ per machine).
pub fn maps(pid: u32) -> Vec<String> {
    normalise(&std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap())
}

/// Adjacent VMAs of one file with the same protection are merged first: the kernel merges a
/// RELRO piece with its neighbour once both are rebuilt (CRIU's restore shows the same, see the
/// fixture README); everything else must match exactly.
pub fn normalise(maps: &str) -> Vec<String> {
    let mut v: Vec<(u64, u64, String, String)> = Vec::new();
    for l in maps
        .lines()
        .filter(|l| l.contains('-') && !l.starts_with('#'))
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let (perm, path) = (
            f[1].to_string(),
            f.get(5).copied().unwrap_or("").to_string(),
        );
        if let Some(last) = v.last_mut() {
            if last.1 == a && last.2 == perm && last.3 == path && path.starts_with('/') {
                last.1 = b;
                continue;
            }
        }
        v.push((a, b, perm, path));
    }
    v.into_iter()
        .map(|(a, b, p, n)| format!("{a:x}-{b:x} {p} {n}"))
        .collect()
}

/// The `# maps` section of a fixture's proc-before.txt for one pid.
pub fn maps_before(fixture: &str, pid: u32) -> Vec<String> {
    let text = std::fs::read_to_string(
        PathBuf::from(FIXTURES)
            .join(fixture)
            .join("proc-before.txt"),
    )
    .unwrap();
    let mut out = String::new();
    let (mut in_pid, mut in_maps) = (false, false);
    for l in text.lines() {
        if let Some(p) = l.strip_prefix("### pid ") {
            in_pid = p.trim() == pid.to_string();
            in_maps = false;
            continue;
        }
        if l.starts_with('#') {
            in_maps = in_pid && l == "# maps";
            continue;
        }
        if in_maps {
            out.push_str(l);
            out.push('\n');
        }
    }
    normalise(&out)
}

/// Waits until the task's voluntary context switches rise: it runs on.
pub fn assert_runs(pid: u32) {
    let n = |p| {
        status_field(p, "voluntary_ctxt_switches")
            .parse::<u64>()
            .unwrap_or(0)
    };
    let a = n(pid);
    let start = Instant::now();
    while n(pid) <= a {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "task {pid} does not run after restore"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Shared pieces of the dump tests: the C workload, spawned as a session leader with a piped
//! stdout, ferry-criu runs, image checks with Debian's crit and ferry-images, /proc snapshots.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_images::{pb, ImageDir};

/// tests/workloads/dumpee.c, built once (see `workload::build`).
pub fn dumpee() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        crate::workload::build(
            "dumpee.c",
            "ferry-dumpee",
            &["-O1", "-pthread", "-mavx2", "-Wall"],
        )
    })
    .clone()
}

/// A running workload; every process of its tree is killed by PID on drop.
pub struct Workload {
    pub child: Child,
    pub pid: i32,
    pub info: HashMap<String, String>,
    pub lines: Arc<Mutex<Vec<String>>>,
    reaped: bool,
}

impl Workload {
    /// Spawns `dumpee MODE ARG` in a new session, waits for its "ready" line.
    pub fn spawn(mode: &str, arg: &str) -> Workload {
        Self::spawn_with(mode, arg, Stdio::null())
    }

    /// Like `spawn`, with a given stdin.
    pub fn spawn_with(mode: &str, arg: &str, stdin: Stdio) -> Workload {
        let mut cmd = Command::new(dumpee());
        cmd.args([mode, arg])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        let mut child = cmd.spawn().expect("spawn dumpee");
        let pid = child.id() as i32;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "workload said {line:?}");
        let info = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                l2.lock().unwrap().push(l);
            }
        });
        Workload {
            child,
            pid,
            info,
            lines,
            reaped: false,
        }
    }

    /// Number of "tick" lines so far; panics on a CORRUPT line.
    pub fn ticks(&self) -> usize {
        let l = self.lines.lock().unwrap();
        if let Some(c) = l.iter().find(|l| l.starts_with("CORRUPT")) {
            panic!("workload {} reported {c}", self.pid);
        }
        l.iter().filter(|l| l.starts_with("tick")).count()
    }

    /// Waits until `n` more ticks arrive (the workload is alive and working).
    pub fn wait_ticks(&self, n: usize) {
        let start = self.ticks();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ticks() < start + n {
            assert!(
                Instant::now() < deadline,
                "workload {} stopped ticking",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the workload's own exit status (after a dump that kills it).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.reaped = true;
        self.child.wait().unwrap()
    }
}

/// Every descendant of `pid` (children lists of every thread, recursively).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let p = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(p) {
            for c in s.split_whitespace().filter_map(|v| v.parse::<i32>().ok()) {
                out.push(c);
                out.extend(descendants(c));
            }
        }
    }
    out
}

impl Drop for Workload {
    fn drop(&mut self) {
        for p in descendants(self.pid) {
            // SAFETY: killing a process this test started (a descendant of its own child).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `ferry-criu ARGS`.
pub fn criu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(args)
        .output()
        .expect("run ferry-criu")
}

/// `criu dump -t PID -D DIR -v4 [-o dump.log] EXTRA...`.
pub fn dump(pid: i32, dir: &Path, extra: &[&str]) -> Output {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", dir.to_str().unwrap(), "-v4"];
    // As CRIU, no log file without -o: the tests read dump.log unless they choose their own.
    if !extra.contains(&"-o") {
        args.extend_from_slice(&["-o", "dump.log"]);
    }
    args.extend_from_slice(extra);
    criu(&args)
}

/// Asserts a successful dump, printing its log otherwise.
pub fn assert_ok(out: &Output, dir: &Path) {
    let log = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "dump failed: {}\nstderr: {}\nlog:\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's crit decodes every protobuf image; ferry-images verifies the directory.
pub fn check_images(dir: &Path) {
    let n = super::crit::decode_all(dir, |n| {
        !(n.starts_with("pages-") || n.ends_with(".log") || n.ends_with(".json"))
    })
    .len();
    assert!(n >= 10, "only {n} images decoded");
    let d = ImageDir::open(dir).unwrap();
    let r = ferry_images::verify::verify(&d);
    assert!(r.errors.is_empty(), "verify: {:#?}", r.errors);
    assert!(r.manifest_checked, "no manifest checked");
}

/// Reads the one entry of an image.
pub fn one<M: prost::Message + Default>(dir: &Path, name: &str) -> M {
    ImageDir::open(dir).unwrap().read_one(name).unwrap()
}

/// Reads all entries of an image.
pub fn all<M: prost::Message + Default>(dir: &Path, name: &str) -> Vec<M> {
    ImageDir::open(dir).unwrap().read_entries(name).unwrap()
}

/// /proc/PID/maps as (start, end, perms, name), [vvar]+[vvar_vclock] merged like CRIU.
pub fn maps(pid: i32) -> Vec<(u64, u64, String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut out: Vec<(u64, u64, String, String)> = Vec::new();
    for l in text.lines() {
        let mut it = l.splitn(6, ' ');
        let (s, e) = it.next().unwrap().split_once('-').unwrap();
        let perms = it.next().unwrap().to_string();
        let name = it.nth(3).unwrap_or("").trim().to_string();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        if name == "[vvar_vclock]" {
            if let Some(last) = out.last_mut() {
                if last.3 == "[vvar]" && last.1 == s {
                    last.1 = e;
                    continue;
                }
            }
        }
        out.push((s, e, perms, name));
    }
    out
}

/// A field of /proc/PID/status.
pub fn status(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The fds of a task.
pub fn fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Checks mm-PID.img against the maps taken while the task was frozen-equivalent (idle).
pub fn check_mm(dir: &Path, pid: i32, before: &[(u64, u64, String, String)]) -> pb::MmEntry {
    let mm: pb::MmEntry = one(dir, &format!("mm-{pid}.img"));
    assert_eq!(mm.vmas.len(), before.len(), "VMA count vs /proc/{pid}/maps");
    for (v, m) in mm.vmas.iter().zip(before) {
        assert_eq!((v.start, v.end), (m.0, m.1), "VMA {m:?}");
        let p = m.2.as_bytes();
        let prot =
            (p[0] == b'r') as u32 | ((p[1] == b'w') as u32) << 1 | ((p[2] == b'x') as u32) << 2;
        assert_eq!(v.prot, prot, "prot of {m:?}");
        let shared = p[3] == b's';
        assert_eq!(v.flags & 1 != 0, shared, "MAP_SHARED of {m:?}");
        let st = v.status;
        match m.3.as_str() {
            "[heap]" => assert_ne!(st & (1 << 5), 0, "heap status"),
            "[vdso]" => assert_ne!(st & (1 << 3), 0, "vdso status"),
            "[vvar]" => assert_ne!(st & (1 << 12), 0, "vvar status"),
            "[vsyscall]" => assert_eq!(st, (1 << 2) | (1 << 9), "vsyscall status"),
            "[stack]" => assert_ne!(v.flags & 0x100, 0, "stack grows down"),
            n if n.starts_with('/') => assert_ne!(st & (1 << 6 | 1 << 7 | 1 << 8), 0, "file {n}"),
            _ => assert_ne!(st & (1 << 9), 0, "anon private {m:?}"),
        }
    }
    mm
}

/// Bytes of task memory at `addr..addr+len` as the images hold them (private pages only).
pub fn image_bytes(dir: &Path, pid: i32, addr: u64, len: usize) -> Vec<u8> {
    let d = ImageDir::open(dir).unwrap();
    let data = d.read(&format!("pagemap-{pid}.img")).unwrap();
    let mut r = ferry_images::ImageReader::new("pagemap", &data).unwrap();
    let head: pb::PagemapHead = r.next_entry().unwrap().unwrap();
    let e: Vec<pb::PagemapEntry> = r.entries().unwrap();
    let pages = std::fs::read(dir.join(format!("pages-{}.img", head.pages_id))).unwrap();
    let total: u64 = e.iter().map(|x| x.nr_pages.unwrap()).sum();
    assert_eq!(
        total * 4096,
        pages.len() as u64,
        "pagemap page count vs pages file"
    );
    let mut out = vec![0u8; len];
    let mut off = 0u64;
    for x in &e {
        let n = x.nr_pages.unwrap() * 4096;
        let (s, en) = (x.vaddr, x.vaddr + n);
        let (a, b) = (addr.max(s), (addr + len as u64).min(en));
        if a < b {
            let src = (off + a - s) as usize;
            out[(a - addr) as usize..(b - addr) as usize]
                .copy_from_slice(&pages[src..src + (b - a) as usize]);
        }
        off += n;
    }
    out
}

/// A temp dir on /dev/shm (fast, and page data is large).
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-dump-test")
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// The dump log must name the stages.
pub fn check_log(dir: &Path) {
    let log = std::fs::read_to_string(dir.join("dump.log")).unwrap();
    for stage in ["stage prepare", "stage freeze", "stage task", "stage sync"] {
        assert!(log.contains(stage), "dump.log lacks {stage:?}:\n{log}");
    }
}

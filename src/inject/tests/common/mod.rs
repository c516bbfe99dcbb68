//! Victim processes for the injection tests: a C program built once per test run with the
//! system compiler, spawned with a piped stdout, killed by PID when the guard drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What the victim printed about itself.
#[derive(Debug, Clone)]
pub struct Info {
    pub pid: i32,
    pub handler: u64,
    pub altsp: u64,
    pub altsize: u64,
    pub buf: u64,
    pub buflen: u64,
    /// Every other key=value the victim printed before its first tick.
    pub extra: std::collections::HashMap<String, String>,
}

pub struct Victim {
    pub child: Child,
    pub out: BufReader<ChildStdout>,
    pub info: Info,
    pub mode: String,
    last_tick: Option<u64>,
}

fn victim_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        use std::os::fd::AsRawFd;
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/victim.c");
        let text = std::fs::read(&src).expect("read tests/victim.c");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        // Test binaries (and nextest's per-test processes) run it concurrently: one directory
        // per source content, built once under an flock and never replaced, so a running victim
        // never maps a deleted file (the maps comparisons would see "(deleted)").
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("inject-victim-{:016x}", h.finish()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("ferry-inject-victim");
        if out.exists() {
            return out;
        }
        let lock = std::fs::File::create(dir.join(".lock")).unwrap();
        // SAFETY: flock on a file this closure holds open; released when it is closed.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        if !out.exists() {
            let tmp = out.with_extension(format!("tmp{}", std::process::id()));
            let st = Command::new("cc")
                .args(["-O1", "-Wall", "-pthread", "-o"])
                .arg(&tmp)
                .arg(&src)
                .status()
                .expect("run cc for tests/victim.c");
            assert!(st.success(), "cc tests/victim.c failed: {st}");
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

impl Victim {
    /// Spawns the victim in `mode` ("sleep" or "spin") and reads its info line and first tick.
    pub fn spawn(mode: &str) -> Victim {
        let mut child = Command::new(victim_bin())
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn victim");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let mut info = Info {
            pid: 0,
            handler: 0,
            altsp: 0,
            altsize: 0,
            buf: 0,
            buflen: 0,
            extra: Default::default(),
        };
        // Lines of key=value pairs up to the first tick.
        let first_tick;
        loop {
            let mut more = String::new();
            out.read_line(&mut more).unwrap();
            if let Some(t) = more.strip_prefix("tick ") {
                first_tick = t.trim().parse::<u64>().ok();
                break;
            }
            assert!(!more.is_empty(), "victim ended before its first tick");
            line.push_str(&more);
        }
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "pid" => info.pid = v.parse().unwrap(),
                "handler" => info.handler = u64::from_str_radix(v, 16).unwrap(),
                "altsp" => info.altsp = u64::from_str_radix(v, 16).unwrap(),
                "altsize" => info.altsize = v.parse().unwrap(),
                "buf" => info.buf = u64::from_str_radix(v, 16).unwrap(),
                "buflen" => info.buflen = v.parse().unwrap(),
                _ => {
                    info.extra.insert(k.to_string(), v.to_string());
                }
            }
        }
        assert_eq!(info.pid, child.id() as i32, "victim info line: {line}");
        assert_eq!(first_tick, Some(0));
        Victim {
            child,
            out,
            info,
            mode: mode.to_string(),
            last_tick: first_tick,
        }
    }

    pub fn pid(&self) -> i32 {
        self.info.pid
    }

    /// Reads `n` more tick lines, checking the counter goes up by one each time and the victim
    /// never reported a failed syscall.
    pub fn expect_ticks(&mut self, n: usize) {
        for _ in 0..n {
            let mut line = String::new();
            let got = self.out.read_line(&mut line).unwrap();
            assert!(
                got > 0,
                "victim {} closed its stdout (died?): {:?}",
                self.pid(),
                self.child.try_wait()
            );
            let tick: u64 = line
                .strip_prefix("tick ")
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("victim {} printed {line:?}", self.pid()));
            if let Some(last) = self.last_tick {
                assert_eq!(tick, last + 1, "victim {} skipped ticks", self.pid());
            }
            self.last_tick = Some(tick);
        }
    }

    /// Waits until /proc says the task is in `state` (e.g. 'T').
    pub fn wait_state(&self, state: char) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if proc_state(self.pid()) == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "victim {} never reached state {state}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Waits until the task sleeps inside syscall `nr` (per /proc/PID/syscall), so a test seizes
/// it in the middle of a restartable syscall; gives up quietly after a while.
pub fn wait_in_syscall(pid: i32, nr: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if s.split_whitespace().next() == Some(&nr.to_string()) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The victim's pattern byte at offset `i` of its buffer.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) + (i >> 12)) as u8
}

/// Sorted fd numbers and link targets of the task.
pub fn fds(pid: i32) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), target)
        })
        .collect();
    v.sort();
    v
}

/// SigPnd and ShdPnd of the task.
pub fn pending(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    (get("SigPnd:"), get("ShdPnd:"))
}

pub fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

impl Drop for Victim {
    fn drop(&mut self) {
        // By PID, never by name.
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

//! Running a program with a deadline and capturing what it printed.
//!
//! A hung runtime must fail the test that hit it, not the whole run: every command gets a
//! deadline after which it is killed (SIGKILL) and the test panics with its command line and
//! whatever it had printed. A detached container may inherit the command's stdout/stderr pipes
//! and keep them open forever, so once the command itself has exited the readers get a short
//! grace period and the output read so far is returned.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default deadline for one runtime invocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Exit status and output of a finished command.
#[derive(Debug, Clone)]
pub struct Out {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The exit code, or `128 + signal` when it was killed by a signal (the shell's convention).
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the full context unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed:\n{self}");
        self
    }

    /// Panics with the full context unless the command failed.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(
            !self.success(),
            "command succeeded but was expected to fail:\n{self}"
        );
        self
    }

    /// Panics unless the command exited with exactly `code`.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "unexpected exit code:\n{self}");
        self
    }

    /// Panics unless stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{self}"
        );
        self
    }

    /// Panics unless stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{self}"
        );
        self
    }

    /// stdout parsed as JSON; panics with context when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  command: {}", self.cmdline)?;
        writeln!(f, "  status:  {} (code {})", self.status, self.code())?;
        writeln!(f, "  stdout:  {}", indent(&self.stdout))?;
        write!(f, "  stderr:  {}", indent(&self.stderr))
    }
}

fn indent(s: &str) -> String {
    if s.is_empty() {
        return "<empty>".into();
    }
    s.trim_end().replace('\n', "\n           ")
}

/// A printable command line.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn reader(
    src: Option<impl Read + Send + 'static>,
) -> (Arc<Mutex<Vec<u8>>>, Option<JoinHandle<()>>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let handle = src.map(|mut src| {
        let buf = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match src.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        })
    });
    (buf, handle)
}

/// Runs `cmd` (stdin from /dev/null unless the caller set it) with a deadline, capturing
/// stdout and stderr unless the caller redirected them.
#[track_caller]
pub fn run(cmd: &mut Command, timeout: Duration) -> Out {
    run_checked(cmd, timeout, true)
}

/// Like [`run`], but the caller has already chosen stdin/stdout/stderr (files, inherited...).
#[track_caller]
pub fn run_with_stdio(cmd: &mut Command, timeout: Duration) -> Out {
    run_checked(cmd, timeout, false)
}

/// Like [`run`] but never panics (for cleanup code that may run while a test unwinds): None when
/// the program cannot be started or timed out.
pub fn run_quiet(cmd: &mut Command, timeout: Duration) -> Option<Out> {
    run_inner(cmd, timeout, true).ok()
}

#[track_caller]
fn run_checked(cmd: &mut Command, timeout: Duration, pipes: bool) -> Out {
    match run_inner(cmd, timeout, pipes) {
        Ok(out) => out,
        Err(RunError::Spawn(line, e)) => panic!("cannot start `{line}`: {e}"),
        Err(RunError::Timeout(out)) => {
            panic!("command timed out after {timeout:?} and was killed:\n{out}")
        }
    }
}

enum RunError {
    Spawn(String, std::io::Error),
    Timeout(Box<Out>),
}

fn run_inner(cmd: &mut Command, timeout: Duration, pipes: bool) -> Result<Out, RunError> {
    let line = cmdline(cmd);
    if pipes {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Err(RunError::Spawn(line, e)),
    };
    let (out_buf, out_h) = reader(child.stdout.take());
    let (err_buf, err_h) = reader(child.stderr.take());
    let status = wait_deadline(&mut child, timeout);
    // Descendants (a detached container) may hold the pipes: give the readers a moment only.
    let grace = Instant::now() + Duration::from_millis(1500);
    for h in [&out_h, &err_h].into_iter().flatten() {
        while !h.is_finished() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let take = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    let out = Out {
        cmdline: line,
        status: status.unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            ExitStatus::from_raw(9)
        }),
        stdout: take(&out_buf),
        stderr: take(&err_buf),
    };
    match status {
        Some(_) => Ok(out),
        None => Err(RunError::Timeout(Box::new(out))),
    }
}

/// Waits for `child` until `timeout`; on expiry kills it and returns None.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => {
                let _ = child.kill();
                return None;
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! dump.log: one line per event, each stage named with its duration, CRIU-style timestamps.
//!
//! Lines look like `(00.012345) stage freeze: 3 tasks, 4 threads (1.234 ms)`; the level filter
//! follows CRIU's -v0..-v4 (0 errors only, 2 default, 4 everything).

use std::io::Write;
use std::time::Instant;

/// A dump log writing to a file (or nowhere).
#[derive(Debug)]
pub struct DumpLog {
    start: Instant,
    out: Option<std::fs::File>,
    level: u8,
    /// Lines also go to stderr (log file "-").
    stderr: bool,
}

impl DumpLog {
    /// A log writing to `out` at verbosity `level`.
    pub fn new(out: Option<std::fs::File>, level: u8, stderr: bool) -> DumpLog {
        DumpLog {
            start: Instant::now(),
            out,
            level,
            stderr,
        }
    }

    /// A log that drops everything.
    pub fn none() -> DumpLog {
        DumpLog::new(None, 0, false)
    }

    /// Writes `msg` if `level` passes the filter.
    pub fn log(&mut self, level: u8, msg: &str) {
        if level > self.level {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        let line = format!("({t:09.6}) {msg}\n");
        if let Some(f) = self.out.as_mut() {
            // A log write error must not fail the dump.
            let _ = f.write_all(line.as_bytes());
        }
        if self.stderr {
            eprint!("{line}");
        }
    }

    /// Errors (always shown from -v1 up).
    pub fn error(&mut self, msg: &str) {
        self.log(1, &format!("Error: {msg}"));
    }

    /// Logs that `stage` took the time since `since`, with a detail.
    pub fn stage(&mut self, stage: &str, since: Instant, detail: &str) {
        let ms = since.elapsed().as_secs_f64() * 1e3;
        self.log(2, &format!("stage {stage}: {detail} ({ms:.3} ms)"));
    }

    /// Flushes the file to disk (best effort).
    pub fn sync(&mut self) {
        if let Some(f) = self.out.as_mut() {
            let _ = f.sync_all();
        }
    }
}

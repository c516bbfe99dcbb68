//! The one log writer of both halves (dump.log, restore.log, or the criu face's stderr), with
//! CRIU's levels and line format.
//!
//! Verbosity is CRIU's `-v0..-v4`: 0 nothing, 1 errors, 2 also warnings (the default), 3 also
//! information and timestamps, 4 also debug. A message carries the lowest verbosity that shows
//! it ([`ERROR`] .. [`DEBUG`]); a message given level 0 counts as an error. From -v3 up every
//! line starts with CRIU's timestamp `(SS.uuuuuu) `: seconds (two digits at least) and
//! microseconds since the log was opened.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Errors: shown from -v1.
pub const ERROR: u8 = 1;
/// Warnings: shown from -v2 (CRIU's default).
pub const WARN: u8 = 2;
/// Progress (every stage with its time): shown from -v3, with timestamps.
pub const INFO: u8 = 3;
/// Details: shown at -v4.
pub const DEBUG: u8 = 4;
/// CRIU's default verbosity.
pub const DEFAULT_LEVEL: u8 = WARN;

/// Where the lines go.
#[derive(Debug)]
pub enum Sink {
    /// Dropped.
    None,
    /// A log file.
    File(File),
    /// Standard output (CRIU's `-o -`).
    Stdout,
    /// Standard error (CRIU's default without `-o`).
    Stderr,
}

/// A log at one verbosity.
#[derive(Debug)]
pub struct Log {
    start: Instant,
    sink: Sink,
    level: u8,
}

impl Log {
    /// A log writing to `sink` at verbosity `level` (above 4 counts as 4).
    pub fn to(sink: Sink, level: u8) -> Log {
        Log {
            start: Instant::now(),
            sink,
            level: level.min(DEBUG),
        }
    }

    /// A log into the file `path`, created or truncated (None: no output) at verbosity `level`.
    pub fn new(path: Option<&Path>, level: u8) -> std::io::Result<Log> {
        let sink = match path {
            Some(p) => Sink::File(File::create(p)?),
            None => Sink::None,
        };
        Ok(Log::to(sink, level))
    }

    /// A log that drops everything.
    pub fn none() -> Log {
        Log::to(Sink::None, 0)
    }

    /// The verbosity.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Writes `msg` if a message of `level` passes the verbosity.
    pub fn line(&mut self, level: u8, msg: &str) {
        if level.max(ERROR) > self.level {
            return;
        }
        let line = if self.level >= INFO {
            let t = self.start.elapsed();
            format!("({:02}.{:06}) {msg}\n", t.as_secs(), t.subsec_micros())
        } else {
            format!("{msg}\n")
        };
        // A log write error must not fail the dump or the restore.
        let _ = match &mut self.sink {
            Sink::None => Ok(()),
            Sink::File(f) => f.write_all(line.as_bytes()),
            Sink::Stdout => std::io::stdout().write_all(line.as_bytes()),
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
        };
    }

    /// An error line (`Error: ...`).
    pub fn error(&mut self, msg: &str) {
        self.line(ERROR, &format!("Error: {msg}"));
    }

    /// A warning line (`Warning: ...`).
    pub fn warn(&mut self, msg: &str) {
        self.line(WARN, &format!("Warning: {msg}"));
    }

    /// The end of a stage with its duration (information).
    pub fn stage(&mut self, name: &str, since: Instant) {
        self.stage_detail(name, since, "done");
    }

    /// The end of a stage with a detail and its duration (information).
    pub fn stage_detail(&mut self, name: &str, since: Instant, detail: &str) {
        let ms = since.elapsed().as_secs_f64() * 1e3;
        self.line(INFO, &format!("stage {name}: {detail} ({ms:.3} ms)"));
    }

    /// Flushes a log file to disk (best effort).
    pub fn sync(&mut self) {
        if let Sink::File(f) = &mut self.sink {
            let _ = f.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(level: u8, f: impl FnOnce(&mut Log)) -> String {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut log = Log::new(Some(tmp.path()), level).unwrap();
        f(&mut log);
        log.sync();
        std::fs::read_to_string(tmp.path()).unwrap()
    }

    fn all(log: &mut Log) {
        log.error("e");
        log.warn("w");
        log.stage("s", Instant::now());
        log.line(DEBUG, "d");
        log.line(0, "z");
    }

    #[test]
    fn levels_are_criu_s() {
        assert_eq!(written(0, all), "");
        assert_eq!(written(1, all), "Error: e\nz\n");
        assert_eq!(written(2, all), "Error: e\nWarning: w\nz\n");
        let v3 = written(3, all);
        assert_eq!(v3.lines().count(), 4, "{v3}");
        assert!(
            v3.contains("stage s: done (") && !v3.contains(") d\n"),
            "{v3}"
        );
        assert_eq!(written(4, all).lines().count(), 5);
        assert_eq!(written(9, all).lines().count(), 5);
    }

    #[test]
    fn timestamps_from_v3_as_criu_prints_them() {
        let v3 = written(3, |l| l.error("x"));
        // "(SS.uuuuuu) ": two-digit seconds, six-digit microseconds.
        let b = v3.as_bytes();
        assert_eq!(b[0], b'(', "{v3}");
        assert!(b[1..3].iter().all(u8::is_ascii_digit), "{v3}");
        assert_eq!(b[3], b'.', "{v3}");
        assert!(b[4..10].iter().all(u8::is_ascii_digit), "{v3}");
        assert_eq!(&v3[10..], ") Error: x\n");
        assert_eq!(written(2, |l| l.error("x")), "Error: x\n");
    }
}

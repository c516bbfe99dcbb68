//! The dump's face of the shared [`crate::log::Log`]: CRIU's levels, line format and sinks live
//! there; this adds the dump's stage lines (`stage freeze: 3 tasks, 4 threads (1.234 ms)`).

use std::time::Instant;

use crate::log::{Log, Sink};

/// The dump log.
#[derive(Debug)]
pub struct DumpLog(Log);

impl DumpLog {
    /// A log writing to `out` (or, without a file, to stderr when `stderr` is set) at verbosity
    /// `level` (CRIU's 0..4).
    pub fn new(out: Option<std::fs::File>, level: u8, stderr: bool) -> DumpLog {
        let sink = match (out, stderr) {
            (Some(f), _) => Sink::File(f),
            (None, true) => Sink::Stderr,
            (None, false) => Sink::None,
        };
        DumpLog(Log::to(sink, level))
    }

    /// A dump log over an opened shared log.
    pub fn from_log(log: Log) -> DumpLog {
        DumpLog(log)
    }

    /// A log that drops everything.
    pub fn none() -> DumpLog {
        DumpLog(Log::none())
    }

    /// Writes `msg` if a message of `level` passes the verbosity.
    pub fn log(&mut self, level: u8, msg: &str) {
        self.0.line(level, msg);
    }

    /// An error (shown from -v1).
    pub fn error(&mut self, msg: &str) {
        self.0.error(msg);
    }

    /// Logs that `stage` took the time since `since`, with a detail (shown from -v3).
    pub fn stage(&mut self, stage: &str, since: Instant, detail: &str) {
        self.0.stage_detail(stage, since, detail);
    }

    /// Flushes the file to disk (best effort).
    pub fn sync(&mut self) {
        self.0.sync();
    }
}

//! `criu dump`: CRIU's command line over ferry's dump pipeline.

use std::path::PathBuf;

use anyhow::Context;

use crate::dump::{self, DumpOptions};
use crate::dump_log::DumpLog;

/// Arguments of `criu dump` (CRIU's names and short options).
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// PID of the root of the tree to dump.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Directory for the images.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Directory for the log and statistics (default: the images directory).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Log file, relative to the work directory ("-" = stderr).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<String>,
    /// Verbosity 0..4 (`-v4`), or repeated (`-vvv`).
    #[arg(short = 'v', num_args = 0..=1, default_missing_value = "+", value_name = "N")]
    pub verbosity: Option<String>,
    /// The tree is a job of the caller's shell (session and terminal outside the tree).
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Leave the tree running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Allow datagram unix sockets connected to named sockets outside the tree.
    #[arg(short = 'x', long = "ext-unix-sk", num_args = 0..=1, default_missing_value = "")]
    pub ext_unix_sk: Option<String>,
    /// Dump established TCP connections (sockets are not dumped yet).
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Dump file locks (locks are not dumped yet).
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Largest unlinked file whose content goes into the images (bytes, or with a K/M/G suffix;
    /// CRIU's default 1M).
    #[arg(long = "ghost-limit", value_name = "SIZE", value_parser = crate::files::dump::parse_size)]
    pub ghost_limit: Option<u64>,
}

/// `-v4` -> 4; as CRIU, each `v` adds one to the default 2: `-v` -> 3, `-vv` -> 4 (clap hands
/// `-vv` over as `-v` with the value "v", and a bare `-v` as "+"); none -> 2.
fn level(v: &Option<String>) -> anyhow::Result<u8> {
    Ok(match v.as_deref() {
        None => 2,
        Some("+") => 3,
        Some(s) if !s.is_empty() && s.chars().all(|c| c == 'v') => (3 + s.len()).min(4) as u8,
        Some(s) => s
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= 4)
            .with_context(|| format!("-v: expected 0..4, got {s:?}"))?,
    })
}

/// Runs `criu dump`; returns the exit code.
pub fn run(args: &DumpArgs) -> anyhow::Result<i32> {
    let level = level(&args.verbosity)?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| args.images_dir.clone());
    let log_name = args.log_file.clone().unwrap_or_else(|| "dump.log".into());
    let mut log = if log_name == "-" {
        DumpLog::new(None, level, true)
    } else {
        std::fs::create_dir_all(&work)
            .with_context(|| format!("creating work directory {}", work.display()))?;
        let path = work.join(&log_name);
        let f = std::fs::File::create(&path)
            .with_context(|| format!("creating log file {}", path.display()))?;
        DumpLog::new(Some(f), level, false)
    };
    log.log(
        2,
        &format!(
            "ferry dump -t {} -D {}{}{}",
            args.tree,
            args.images_dir.display(),
            if args.shell_job { " --shell-job" } else { "" },
            if args.leave_running {
                " --leave-running"
            } else {
                ""
            },
        ),
    );
    for (set, what) in [
        (args.ext_unix_sk.is_some(), "--ext-unix-sk"),
        (args.tcp_established, "--tcp-established"),
        (args.file_locks, "--file-locks"),
    ] {
        if set {
            log.log(
                2,
                &format!("{what} accepted: sockets and locks are refused by name if present"),
            );
        }
    }
    let opts = DumpOptions {
        pid: args.tree,
        images_dir: args.images_dir.clone(),
        leave_running: args.leave_running,
        shell_job: args.shell_job,
        work_dir: args.work_dir.clone(),
        ext_unix_sk: args.ext_unix_sk.is_some(),
        file_locks: args.file_locks,
        ghost_limit: args.ghost_limit,
        tcp_established: args.tcp_established,
    };
    let r = dump::dump(&opts, &mut log);
    match &r {
        Ok(rep) => log.log(
            2,
            &format!(
                "Dumping finished successfully: {} tasks, {} threads, {} pages, frozen {:.3} ms",
                rep.tasks,
                rep.threads,
                rep.pages_written,
                rep.frozen_time.as_secs_f64() * 1e3
            ),
        ),
        Err(e) => log.error(&format!("Dumping FAILED: {e}")),
    }
    log.sync();
    // Display only: every engine error already carries its cause in its message.
    if let Err(e) = r {
        anyhow::bail!("dump of tree {} failed: {e}", args.tree);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_forms() {
        assert_eq!(level(&None).unwrap(), 2);
        assert_eq!(level(&Some("4".into())).unwrap(), 4);
        assert_eq!(level(&Some("0".into())).unwrap(), 0);
        assert_eq!(level(&Some("+".into())).unwrap(), 3);
        assert_eq!(level(&Some("v".into())).unwrap(), 4);
        assert_eq!(level(&Some("vvv".into())).unwrap(), 4);
        assert!(level(&Some("9".into())).is_err());
    }
}

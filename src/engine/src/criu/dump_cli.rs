//! `criu dump`: CRIU's command line over ferry's dump pipeline.

use std::path::PathBuf;

use super::common::LogArgs;
use crate::dump::{self, DumpOptions};
use crate::dump_log::DumpLog;
use crate::log::INFO;

/// Arguments of `criu dump` (CRIU's names and short options).
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// PID of the root of the tree to dump.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Directory for the images.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Work directory, log file and verbosity (shared with restore).
    #[command(flatten)]
    pub log: LogArgs,
    /// The tree is a job of the caller's shell (session and terminal outside the tree).
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Leave the tree running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Allow datagram unix sockets connected to named sockets outside the tree (CRIU's
    /// optional socket id is accepted).
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "ID", num_args = 0..=1,
          default_missing_value = "")]
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

/// Runs `criu dump`; returns the exit code.
pub fn run(args: &DumpArgs) -> anyhow::Result<i32> {
    let mut log = DumpLog::from_log(args.log.open(&args.images_dir)?);
    log.log(
        INFO,
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
                INFO,
                &format!("{what} accepted: sockets and locks are refused by name if present"),
            );
        }
    }
    let opts = DumpOptions {
        pid: args.tree,
        images_dir: args.images_dir.clone(),
        leave_running: args.leave_running,
        shell_job: args.shell_job,
        work_dir: args.log.work_dir.clone(),
        ext_unix_sk: args.ext_unix_sk.is_some(),
        file_locks: args.file_locks,
        ghost_limit: args.ghost_limit,
        tcp_established: args.tcp_established,
    };
    let r = dump::dump(&opts, &mut log);
    match &r {
        Ok(rep) => log.log(
            INFO,
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

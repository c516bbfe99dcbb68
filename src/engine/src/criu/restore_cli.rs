//! `criu restore`: CRIU's own command line for ferry's restore engine.
//!
//! `criu restore -D DIR [-d|--restore-detached] [--pidfile F] [--shell-job]
//! [--inherit-fd fd[N]:KEY ...] [-W DIR] [-o LOG] [-v[N]]`. The log options are dump's ([`super::common`]); stats-restore goes to the
//! work directory (default: the image directory), as CRIU does; `--pidfile` gets the root's pid.
//! Without `-d` ferry waits for the restored root and exits with its status.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::common::LogArgs;
use crate::files::inherit::InheritFd;
use crate::log::INFO;
use crate::restore::{self, Options};

/// Arguments of `criu restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Directory holding the images.
    #[arg(short = 'D', long = "images-dir")]
    pub images_dir: PathBuf,
    /// Detach from the restored tree once it runs.
    #[arg(short = 'd', long = "restore-detached")]
    pub detached: bool,
    /// Write the root task's pid here.
    #[arg(long = "pidfile")]
    pub pidfile: Option<PathBuf>,
    /// The tree was a shell job: restore its terminal onto ours, keep its outside session.
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Work directory, log file and verbosity (shared with dump).
    #[command(flatten)]
    pub log: LogArgs,
    /// Seconds to wait for every task to reach the restorer.
    #[arg(long = "timeout", default_value_t = 30)]
    pub timeout: u64,
    /// Established TCP connections in the images are restored (TCP repair); without it such
    /// images are refused.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Accepted: external unix socket entries (dumped with --ext-unix-sk) are always
    /// reconnected by name (CRIU's optional socket id is accepted as in dump).
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "ID", num_args = 0..=1,
          default_missing_value = "")]
    pub ext_unix_sk: Option<String>,
    /// Accepted: file locks in the images (file-locks.img) are always taken again.
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// `fd[N]:KEY`: ferry's fd N stands for the image file KEY (`pipe:[INO]`, a path relative
    /// to the root, `tty[RDEV:DEV]`); repeatable, CRIU's syntax.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY")]
    pub inherit_fd: Vec<String>,
}

/// Runs `criu restore`; returns the exit code.
pub fn run(args: &RestoreArgs) -> anyhow::Result<i32> {
    // Established TCP connections in the images need --tcp-established (CRIU's rule).
    if let Ok(dir) = ferry_images::ImageDir::open(&args.images_dir) {
        if let Err(e) = crate::files::inet::restore::check_flag(&dir, args.tcp_established) {
            bail!("criu restore: {e}");
        }
    }
    let inherit_fds = args
        .inherit_fd
        .iter()
        .map(|a| a.parse::<InheritFd>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("criu restore: {e}"))?;
    let work = args.log.work_dir(&args.images_dir);
    let mut log = args.log.open(&args.images_dir)?;
    log.line(
        INFO,
        &format!("ferry restore from {}", args.images_dir.display()),
    );
    let mut opts = Options::new(&args.images_dir);
    opts.shell_job = args.shell_job;
    opts.inherit_fds = inherit_fds;
    opts.timeout = Duration::from_secs(args.timeout.max(1));
    let out = match restore::restore(&opts, &mut log) {
        Ok(o) => o,
        Err(e) => {
            log.error(&e.to_string());
            // Every message already carries its causes; flatten so they print once.
            bail!("{e}");
        }
    };
    log.line(
        INFO,
        &format!(
            "restore finished in {:.3} ms ({} pages)",
            out.total.as_secs_f64() * 1e3,
            out.pages
        ),
    );
    if let Err(e) = restore::write_stats(&work, &out) {
        log.warn(&e.to_string());
    }
    if let Some(p) = &args.pidfile {
        // Written whole or not at all: callers poll for it.
        let tmp = p.with_extension("ferry-tmp");
        std::fs::write(&tmp, format!("{}", out.root))
            .and_then(|()| std::fs::rename(&tmp, p))
            .with_context(|| format!("cannot write pidfile {}", p.display()))?;
    }
    if args.detached {
        return Ok(0);
    }
    let mut st = 0;
    // SAFETY: waits for the restored root, our own child.
    let r = unsafe { libc::waitpid(out.root as i32, &mut st, 0) };
    if r < 0 {
        bail!(
            "waiting for restored task {}: {}",
            out.root,
            std::io::Error::last_os_error()
        );
    }
    Ok(if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    })
}

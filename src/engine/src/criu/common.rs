//! What `criu dump` and `criu restore` share, as CRIU has it: verbosity (`-v` adds one to the
//! default 2, `-vN` sets N), the work directory (`-W`, default `-D`) and the log (`-o FILE`
//! relative to the work directory, `-o -` standard output, no `-o` standard error).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::log::{Log, Sink, DEBUG, DEFAULT_LEVEL};

/// The logging options of every verb.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Directory for the log, pidfile-relative names and statistics (default: the images
    /// directory).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Log file, relative to the work directory ("-": standard output; none: standard error).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<String>,
    /// Verbosity: `-v` adds one to the default 2 (`-vvv` three), `-vN` sets N (0 nothing,
    /// 1 errors, 2 warnings, 3 information and timestamps, 4 debug).
    #[arg(short = 'v', num_args = 0..=1, default_missing_value = "+", value_name = "N",
          action = clap::ArgAction::Append)]
    pub verbosity: Vec<String>,
}

impl LogArgs {
    /// The work directory: `-W`, else the images directory.
    pub fn work_dir(&self, images: &Path) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| images.to_path_buf())
    }

    /// The verbosity the `-v` options give.
    pub fn level(&self) -> anyhow::Result<u8> {
        level(&self.verbosity)
    }

    /// Where the log goes: `-o FILE` in the work directory, `-o -` stdout, none stderr.
    pub fn target(&self, images: &Path) -> Option<PathBuf> {
        match self.log_file.as_deref() {
            None | Some("-") => None,
            Some(f) => Some(self.work_dir(images).join(f)),
        }
    }

    /// Opens the log (creating the work directory for a log file).
    pub fn open(&self, images: &Path) -> anyhow::Result<Log> {
        let level = self.level()?;
        let sink = match (self.log_file.as_deref(), self.target(images)) {
            (Some("-"), _) => Sink::Stdout,
            (_, None) => Sink::Stderr,
            (_, Some(path)) => {
                let work = self.work_dir(images);
                std::fs::create_dir_all(&work)
                    .with_context(|| format!("creating work directory {}", work.display()))?;
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("creating log file {}", path.display()))?;
                Sink::File(f)
            }
        };
        Ok(Log::to(sink, level))
    }
}

/// Folds the `-v` occurrences in order (clap hands a bare `-v` over as "+", `-vv` as "v", `-v4`
/// as "4"): each `v` adds one, a number sets the level; above 4 counts as 4, as in CRIU.
fn level(vs: &[String]) -> anyhow::Result<u8> {
    let mut level = u32::from(DEFAULT_LEVEL);
    for v in vs {
        level = match v.as_str() {
            "+" => level + 1,
            s if !s.is_empty() && s.bytes().all(|c| c == b'v') => level + 1 + s.len() as u32,
            s => s
                .parse::<u32>()
                .ok()
                .with_context(|| format!("-v: expected a level 0..4 or more v's, got {s:?}"))?,
        };
    }
    Ok(level.min(u32::from(DEBUG)) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(v: &[&str]) -> anyhow::Result<u8> {
        level(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn verbosity_is_criu_s() {
        assert_eq!(lv(&[]).unwrap(), 2);
        assert_eq!(lv(&["+"]).unwrap(), 3, "-v");
        assert_eq!(lv(&["v"]).unwrap(), 4, "-vv");
        assert_eq!(lv(&["vvv"]).unwrap(), 4, "-vvvv");
        assert_eq!(lv(&["+", "+"]).unwrap(), 4, "-v -v");
        assert_eq!(lv(&["0"]).unwrap(), 0);
        assert_eq!(lv(&["4"]).unwrap(), 4);
        assert_eq!(lv(&["9"]).unwrap(), 4);
        assert_eq!(lv(&["0", "+"]).unwrap(), 1, "-v0 -v");
        assert!(lv(&["x"]).is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[arg(short = 'R')]
        r: bool,
    }

    fn parse(args: &[&str]) -> LogArgs {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("criu").chain(args.iter().copied()))
            .unwrap()
            .log
    }

    #[test]
    fn the_command_line_forms() {
        assert_eq!(parse(&["-v"]).level().unwrap(), 3);
        assert_eq!(parse(&["-vv"]).level().unwrap(), 4);
        assert_eq!(parse(&["-v", "-R"]).level().unwrap(), 3);
        assert_eq!(parse(&["-v0"]).level().unwrap(), 0);
        assert_eq!(parse(&["-v4"]).level().unwrap(), 4);
        assert_eq!(parse(&[]).level().unwrap(), 2);
    }

    #[test]
    fn log_target_follows_criu() {
        let img = Path::new("/img");
        assert_eq!(parse(&[]).target(img), None);
        assert_eq!(parse(&["-o", "-"]).target(img), None);
        assert_eq!(
            parse(&["-o", "d.log"]).target(img),
            Some(PathBuf::from("/img/d.log"))
        );
        assert_eq!(
            parse(&["-W", "/w", "-o", "d.log"]).target(img),
            Some(PathBuf::from("/w/d.log"))
        );
        assert_eq!(
            parse(&["-o", "/abs.log"]).target(img),
            Some(PathBuf::from("/abs.log"))
        );
    }
}

//! runc-compatible command line: clap definitions, flag for flag with runc 1.1.
//!
//! Real callers (podman, conmon, containerd's shim, go-runc) speak urfave/cli's dialect:
//! `-flag` and `--flag` are the same, a flag may be repeated (the last value wins), and error
//! texts such as `flag needs an argument: -lsm-mount-context` are grepped. `argv` rewrites the
//! one-dash spellings before clap sees them; `parse` maps clap's errors onto urfave/cli's words.

pub mod argv;
pub mod cr;
pub mod verbs;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use cr::{CheckpointArgs, RestoreArgs};
pub use verbs::*;

/// `ferry`: a runc-compatible OCI runtime with its own checkpoint/restore engine.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    disable_version_flag = true,
    about = "Open Container Initiative runtime with its own checkpoint/restore engine"
)]
pub struct Cli {
    /// enable debug logging
    #[arg(long)]
    pub debug: bool,
    /// set the log file to write ferry logs to (default is '/dev/stderr')
    #[arg(long, value_name = "PATH")]
    pub log: Option<PathBuf>,
    /// set the log format ('text' (default), or 'json')
    #[arg(long = "log-format", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// root directory for storage of container state (this should be located in tmpfs)
    #[arg(long, default_value = "/run/ferry", value_name = "PATH")]
    pub root: PathBuf,
    /// accepted for runc compatibility and ignored: ferry is its own checkpoint/restore engine
    #[arg(long, default_value = "criu", value_name = "PATH")]
    pub criu: String,
    /// enable systemd cgroup support (not supported by this build: create/run refuse it)
    #[arg(long = "systemd-cgroup")]
    pub systemd_cgroup: bool,
    /// ignore cgroup permission errors ('true', 'false', or 'auto')
    #[arg(long, default_value = "auto", value_parser = ["true", "false", "auto"])]
    pub rootless: String,
    /// print the version
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The runtime's verbs, runc's plus `image` and the `criu` face.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// checkpoint a running container
    Checkpoint(CheckpointArgs),
    /// create a container
    Create(CreateArgs),
    /// delete any resources held by the container often used with detached container
    Delete(DeleteArgs),
    /// display container events such as OOM notifications, cpu, memory, and IO usage statistics
    Events(EventsArgs),
    /// execute new process inside the container
    Exec(ExecArgs),
    /// kill sends the specified signal (default: SIGTERM) to the container's init process
    Kill(KillArgs),
    /// lists containers started by ferry with the given root
    List(ListArgs),
    /// pause suspends all processes inside the container
    Pause(IdArgs),
    /// ps displays the processes running inside a container
    Ps(PsArgs),
    /// restore a container from a previous checkpoint
    Restore(RestoreArgs),
    /// resumes all processes that have been previously paused
    Resume(IdArgs),
    /// create and run a container
    Run(RunArgs),
    /// create a new specification file
    Spec(SpecArgs),
    /// executes the user defined process in a created container
    Start(IdArgs),
    /// output the state of a container
    State(IdArgs),
    /// update container resource constraints
    Update(UpdateArgs),
    /// show the enabled features
    Features,
    /// inspect and convert checkpoint images
    Image(ferry_images::cmd::ImageArgs),
    /// the criu-compatible face: criu dump|restore|check
    #[command(disable_help_flag = true)]
    Criu(CriuArgs),
}

/// Arguments of `ferry criu ...`, kept verbatim for the criu face.
#[derive(Debug, clap::Args)]
pub struct CriuArgs {
    /// criu's own arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// The clap command tree with the settings derive cannot express for every subcommand:
/// a flag given twice is not an error (podman passes `--leave-running` twice).
pub fn command() -> clap::Command {
    fn tolerate_repeats(cmd: clap::Command) -> clap::Command {
        // `image` belongs to ferry-images, which keeps its own parsing rules.
        if cmd.get_name() == "image" {
            return cmd;
        }
        cmd.args_override_self(true)
            .mut_subcommands(tolerate_repeats)
    }
    tolerate_repeats(Cli::command())
}

/// Outcome of parsing argv: either a command line to run, or text to print and an exit code
/// (help, version, usage errors).
#[derive(Debug)]
pub enum Parsed {
    /// A command line to execute.
    Run(Box<Cli>),
    /// Print `text` to stdout (code 0) or stderr (non-zero) and exit with `code`.
    Exit {
        /// What to print.
        text: String,
        /// Process exit code.
        code: i32,
    },
}

/// Parses a full argv (argv[0] included) the way runc's urfave/cli would accept it.
pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let raw: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = command();
    let rewritten = argv::rewrite(&cmd, raw);
    // The tree is built once per process: parsing consumes it (a clone copied every
    // subcommand's arguments).
    let matches = match cmd.try_get_matches_from(&rewritten) {
        Ok(m) => m,
        Err(err) => return clap_error(err),
    };
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => Parsed::Run(Box::new(cli)),
        Err(err) => clap_error(err),
    }
}

/// Turns clap's errors into urfave/cli's wording where callers grep for it.
fn clap_error(err: clap::Error) -> Parsed {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let code = if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                1
            } else {
                0
            };
            Parsed::Exit {
                text: err.render().to_string(),
                code,
            }
        }
        ErrorKind::InvalidValue | ErrorKind::NoEquals
            if matches!(
                err.get(ContextKind::InvalidValue),
                Some(ContextValue::String(v)) if v.is_empty()
            ) =>
        {
            let name = flag_name(&err);
            Parsed::Exit {
                text: format!("Incorrect Usage: flag needs an argument: -{name}\n\n{err}"),
                code: 1,
            }
        }
        ErrorKind::UnknownArgument => {
            let name = match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(v)) => v.trim_start_matches('-').to_string(),
                _ => String::new(),
            };
            Parsed::Exit {
                text: format!("Incorrect Usage: flag provided but not defined: -{name}\n\n{err}"),
                code: 1,
            }
        }
        _ => Parsed::Exit {
            text: format!("Incorrect Usage.\n\n{err}"),
            code: 1,
        },
    }
}

/// The long name (without dashes) of the flag a clap error is about.
fn flag_name(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(v)) => {
            // clap renders "--lsm-mount-context <VALUE>"; keep the flag itself.
            let flag = v.split_whitespace().next().unwrap_or(v);
            let flag = flag.split('=').next().unwrap_or(flag);
            flag.trim_start_matches('-').to_string()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;

//! The criu-compatible face: `ferry criu dump|restore|check` (and argv[0] = `criu`).

pub mod check;
pub mod common;
pub mod dump_cli;
pub mod restore_cli;
pub mod swrk;

use clap::{Parser, Subcommand};

/// `ferry criu ...`: CRIU's own command line.
#[derive(Debug, Parser)]
#[command(
    name = "criu",
    about = "CRIU-compatible checkpoint/restore (ferry's engine)"
)]
pub struct CriuArgs {
    #[command(subcommand)]
    pub command: CriuCommand,
}

/// CRIU's verbs that ferry implements.
#[derive(Debug, Subcommand)]
pub enum CriuCommand {
    /// Checkpoint a process tree.
    Dump(dump_cli::DumpArgs),
    /// Restore a process tree from images.
    Restore(restore_cli::RestoreArgs),
    /// Report which kernel features ferry's engine uses are present.
    Check(check::CheckArgs),
    /// Serve CRIU's RPC on an inherited SOCK_SEQPACKET fd (go-criu's `criu swrk FD`).
    Swrk(swrk::SwrkArgs),
}

/// Runs the criu face; returns the exit code.
pub fn run(args: &CriuArgs) -> anyhow::Result<i32> {
    match &args.command {
        CriuCommand::Dump(a) => dump_cli::run(a),
        CriuCommand::Restore(a) => restore_cli::run(a),
        CriuCommand::Check(a) => check::run(a),
        CriuCommand::Swrk(a) => swrk::run(a),
    }
}

/// Parses `argv` (argv[0] = "criu" or "ferry-criu") and runs it; returns the exit code.
pub fn main_with_args(argv: Vec<std::ffi::OsString>) -> i32 {
    let args = match CriuArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    }
}

//! `criu restore`.

/// Arguments of `criu restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {}

/// Runs `criu restore`; returns the exit code.
pub fn run(_args: &RestoreArgs) -> anyhow::Result<i32> {
    anyhow::bail!("criu restore: not implemented yet")
}

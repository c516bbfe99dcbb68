//! `criu check`.

/// Arguments of `criu check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

/// Runs `criu check`; returns the exit code.
pub fn run(_args: &CheckArgs) -> anyhow::Result<i32> {
    anyhow::bail!("criu check: not implemented yet")
}

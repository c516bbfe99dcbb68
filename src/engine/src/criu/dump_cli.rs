//! `criu dump`.

/// Arguments of `criu dump`.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {}

/// Runs `criu dump`; returns the exit code.
pub fn run(_args: &DumpArgs) -> anyhow::Result<i32> {
    anyhow::bail!("criu dump: not implemented yet")
}

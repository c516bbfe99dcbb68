//! CRIU v1.1 image format (placeholder until the images work lands).

/// `ferry image ...` subcommands.
pub mod cmd {
    /// Arguments of `ferry image`.
    #[derive(Debug, clap::Args)]
    pub struct ImageArgs {
        /// Subcommand and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        pub rest: Vec<String>,
    }

    /// Runs `ferry image`; returns the process exit code.
    pub fn run(_args: &ImageArgs) -> anyhow::Result<i32> {
        anyhow::bail!("ferry image: not implemented yet")
    }
}

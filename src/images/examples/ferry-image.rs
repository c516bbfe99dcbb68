//! Stand-alone `ferry image` for trying the crate before the ferry binary is rebuilt:
//! `cargo run -p ferry-images --example ferry-image -- decode -i core-1.img --pretty`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ferry-image")]
struct Cli {
    #[command(flatten)]
    args: ferry_images::cmd::ImageArgs,
}

fn main() {
    let cli = Cli::parse();
    match ferry_images::cmd::run(&cli.args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferry image: {e:#}");
            std::process::exit(1);
        }
    }
}

//! `ferry image ...`: decode, encode, show, verify and info, in crit's spirit. Errors are one
//! line naming file, offset and problem; the exit code is non-zero.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{dir::ImageDir, dynamic, json, show, verify};

/// Arguments of `ferry image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// `ferry image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Decode an image file to crit-style JSON.
    Decode {
        /// Image file to read.
        #[arg(short = 'i', long = "in")]
        input: PathBuf,
        /// Write JSON here instead of stdout.
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
        /// crit's pretty form: hex addresses, flag names, device numbers, IP strings.
        #[arg(long)]
        pretty: bool,
    },
    /// Encode crit-style JSON back into an image file.
    Encode {
        /// JSON file to read.
        #[arg(short = 'i', long = "in")]
        input: PathBuf,
        /// Image file to write (stdout when absent).
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Summarise a whole image directory: tree, memory, fds, namespaces, mounts.
    Show {
        /// Image directory.
        dir: PathBuf,
    },
    /// Check framing, cross-references and ferry's manifest of an image directory.
    Verify {
        /// Image directory.
        dir: PathBuf,
    },
    /// Print an image file's type and entry count.
    Info {
        /// Image file.
        file: PathBuf,
    },
}

fn write_out(output: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("{}: write", p.display())),
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(bytes)
                .and_then(|_| o.flush())
                .context("stdout: write")
        }
    }
}

/// Reads one image file (bounded) and decodes it, expecting the type its name implies.
pub fn decode_file(path: &Path) -> anyhow::Result<dynamic::Image> {
    let name = path.display().to_string();
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if crate::magic::is_raw_file(&base) {
        anyhow::bail!(
            "{name}: offset 0: raw data file (page contents, archive or log), not a protobuf image"
        );
    }
    let data = crate::dir::read_bounded(path)?;
    let expected = crate::dir::kind_for_name(&base);
    Ok(dynamic::decode(&name, &data, expected)?)
}

/// Runs `ferry image`; returns the process exit code.
pub fn run(args: &ImageArgs) -> anyhow::Result<i32> {
    match &args.command {
        ImageCommand::Decode {
            input,
            output,
            pretty,
        } => {
            let img = decode_file(input)?;
            let v = json::image_to_json(&img, *pretty);
            let mut s = Vec::new();
            if *pretty {
                // crit indents its pretty output by four spaces.
                let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
                serde::Serialize::serialize(
                    &v,
                    &mut serde_json::Serializer::with_formatter(&mut s, fmt),
                )?;
            } else {
                serde_json::to_writer(&mut s, &v)?;
            }
            s.push(b'\n');
            write_out(output.as_deref(), &s)?;
            Ok(0)
        }
        ImageCommand::Encode { input, output } => {
            let name = input.display().to_string();
            let text = std::fs::read(input).with_context(|| format!("{name}: read"))?;
            let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{name}: line {} column {}: invalid JSON: {e}",
                    e.line(),
                    e.column()
                )
            })?;
            let img = json::json_to_image(&name, &v)?;
            let out_name = output
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stdout".into());
            let bytes = img.encode(&out_name)?;
            write_out(output.as_deref(), &bytes)?;
            Ok(0)
        }
        ImageCommand::Info { file } => {
            let img = decode_file(file)?;
            let n = match img.kind.layout {
                crate::magic::Layout::Pagemap => img.entries.len().saturating_sub(1),
                _ => img.entries.len(),
            };
            println!("{{\"magic\": \"{}\", \"count\": {n}}}", img.kind.name);
            Ok(0)
        }
        ImageCommand::Show { dir } => {
            let d = ImageDir::open(dir)?;
            print!("{}", show::render(&d)?);
            Ok(0)
        }
        ImageCommand::Verify { dir } => {
            let d = ImageDir::open(dir)?;
            let report = verify::verify(&d);
            for n in &report.notes {
                println!("note: {n}");
            }
            if report.errors.is_empty() {
                println!(
                    "{}: OK ({} files checked{})",
                    dir.display(),
                    report.files_checked,
                    if report.manifest_checked {
                        ", manifest matches"
                    } else {
                        ", no ferry manifest"
                    }
                );
                Ok(0)
            } else {
                for e in &report.errors {
                    eprintln!("error: {e}");
                }
                Ok(1)
            }
        }
    }
}

//! ferry: a runc-compatible OCI runtime with its own checkpoint/restore engine.
//!
//! One binary, several faces: as `criu` (by argv[0] or `ferry criu`) it speaks CRIU's
//! command line; otherwise it is the OCI runtime with runc's command line. Errors are printed
//! the way runc prints them, and the exit code is 1 on any error.

mod cli;
mod logging;
mod runtime;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use cli::{Command, Parsed};

fn main() {
    let code = real_main(std::env::args_os().collect());
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// The message of an error and its sources, each source once (runc's `a: b: c`).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Rephrases libcontainer's wording where callers match runc's: dockerd, containerd and podman
/// map "executable file not found" to exit code 127, and messages should name ferry, not youki.
fn runc_phrasing(msg: &str) -> String {
    let mut out = msg.replace("youki", "ferry");
    if let Some(start) = out.find("executable '") {
        let rest = &out[start + "executable '".len()..];
        if let Some(end) = rest.find("' not found in $PATH") {
            let exe = rest[..end].to_string();
            out.push_str(&format!(
                ": exec: \"{exe}\": executable file not found in $PATH"
            ));
        }
    }
    out
}

/// runc's `fatal`: the error goes to the log; if the log is a file, also plainly to stderr.
fn report(msg: &str, logging_to_file: bool) {
    let msg = runc_phrasing(msg);
    tracing::error!("{msg}");
    if logging_to_file {
        eprintln!("{msg}");
    }
}

fn is_criu_argv0(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name().map(|n| n == "criu"))
        .unwrap_or(false)
}

fn real_main(args: Vec<OsString>) -> i32 {
    if is_criu_argv0(args.first()) {
        return ferry_engine::criu::main_with_args(args);
    }
    let cli = match cli::parse(args) {
        Parsed::Run(cli) => *cli,
        Parsed::Exit { text, code } => {
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            return code;
        }
    };
    if cli.version {
        println!(
            "ferry version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            oci_spec::runtime::VERSION
        );
        return 0;
    }
    let to_file = match logging::init(cli.log.as_deref(), cli.log_format == "json", cli.debug) {
        Ok(to_file) => to_file,
        Err(e) => {
            eprintln!("ferry: {}", chain(&e));
            return 1;
        }
    };
    let ctx = runtime::Ctx {
        root: cli.root.clone(),
        systemd_cgroup: cli.systemd_cgroup,
        rootless: cli.rootless.clone(),
    };
    let command = match cli.command {
        None => {
            print!("{}", cli::command().render_help());
            return 0;
        }
        Some(Command::Criu(a)) => {
            let mut argv: Vec<OsString> = vec!["criu".into()];
            argv.extend(a.rest.into_iter().map(OsString::from));
            return ferry_engine::criu::main_with_args(argv);
        }
        Some(Command::Image(args)) => {
            return match ferry_images::cmd::run(&args) {
                Ok(code) => code,
                Err(e) => {
                    report(&format!("{e:#}"), to_file);
                    1
                }
            };
        }
        Some(c) => c,
    };
    match runtime::dispatch(&ctx, command) {
        Ok(code) => code,
        Err(e) => {
            // anyhow only here, at the edge: the verb's typed error becomes the message.
            let e = anyhow::Error::from(e);
            report(&chain(e.as_ref()), to_file);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_argv0_is_detected_by_file_name() {
        assert!(is_criu_argv0(Some(&OsString::from("/usr/local/sbin/criu"))));
        assert!(is_criu_argv0(Some(&OsString::from("criu"))));
        assert!(!is_criu_argv0(Some(&OsString::from("/usr/bin/ferry"))));
        assert!(!is_criu_argv0(Some(&OsString::from("criu-ns"))));
    }

    #[test]
    fn criu_face_rejects_a_dump_without_its_arguments() {
        assert_eq!(real_main(vec!["criu".into(), "dump".into()]), 1);
    }

    #[test]
    fn criu_face_help_exits_zero() {
        assert_eq!(real_main(vec!["criu".into(), "--help".into()]), 0);
        assert_eq!(
            real_main(vec!["ferry".into(), "criu".into(), "--help".into()]),
            0
        );
    }

    #[test]
    fn not_found_gets_runcs_phrase() {
        let m = runc_phrasing("create container x: executable 'nope' not found in $PATH");
        assert!(
            m.ends_with(": exec: \"nope\": executable file not found in $PATH"),
            "{m}"
        );
        assert_eq!(
            runc_phrasing("cannot use console socket if youki will not detach"),
            "cannot use console socket if ferry will not detach"
        );
        assert_eq!(
            runc_phrasing("container does not exist"),
            "container does not exist"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner failed")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner failed")]
    struct Inner;
    #[derive(Debug, thiserror::Error)]
    #[error("top")]
    struct Top(#[source] std::io::Error);

    #[test]
    fn chain_does_not_repeat_sources() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner failed");
        let e = Top(std::io::Error::other("disk"));
        assert_eq!(chain(&e), "top: disk");
    }
}

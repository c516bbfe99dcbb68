//! urfave/cli (runc's parser) accepts `-flag` and `--flag` alike; clap reads `-flag` as a
//! cluster of short flags. Before clap parses, every one-dash spelling of a known long flag is
//! rewritten to two dashes. The walk knows which flags take a value (their value is never
//! rewritten), stops at `--`, leaves `image`/`criu` untouched, and never touches what follows the
//! container id of `exec`, `run` and `ps` (the process's own argv, or ps's options).

use std::ffi::OsString;

/// Verbs whose arguments after the container id belong to someone else.
const OPAQUE_AFTER_ID: &[&str] = &["exec", "run", "ps"];
/// Verbs whose arguments are handed over untouched.
const OPAQUE_VERBS: &[&str] = &["image", "criu"];

/// What the walk knows about one flag of one (sub)command.
fn lookup_long<'a>(cmd: &'a clap::Command, name: &str) -> Option<Option<&'a clap::Arg>> {
    if name == "help" || (name == "version" && cmd.get_name() == "ferry") {
        return Some(None);
    }
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(name))
        .map(Some)
}

fn takes_value(arg: Option<&clap::Arg>) -> bool {
    arg.is_some_and(|a| a.get_action().takes_values())
}

fn short_takes_value(cmd: &clap::Command, c: char) -> bool {
    cmd.get_arguments()
        .any(|a| a.get_short() == Some(c) && a.get_action().takes_values())
}

/// One token of a flag scope: returns (rewritten token, whether the next token is its value).
fn rewrite_flag(cmd: &clap::Command, tok: &str) -> (String, bool) {
    if let Some(rest) = tok.strip_prefix("--") {
        let (name, has_eq) = match rest.split_once('=') {
            Some((n, _)) => (n, true),
            None => (rest, false),
        };
        let arg = lookup_long(cmd, name).flatten();
        return (tok.to_string(), !has_eq && takes_value(arg));
    }
    let rest = &tok[1..];
    let (name, has_eq) = match rest.split_once('=') {
        Some((n, _)) => (n, true),
        None => (rest, false),
    };
    if name.chars().count() > 1 {
        if let Some(arg) = lookup_long(cmd, name) {
            return (format!("-{tok}"), !has_eq && takes_value(arg));
        }
        return (tok.to_string(), false);
    }
    let c = name.chars().next().unwrap_or('-');
    (tok.to_string(), !has_eq && short_takes_value(cmd, c))
}

/// Rewrites a full argv (argv[0] first) for clap; see the module docs.
pub fn rewrite(root: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    if let Some(argv0) = it.next() {
        out.push(argv0);
    }
    let mut scope = root;
    let mut in_verb = false;
    while let Some(raw) = it.next() {
        let Some(tok) = raw.to_str().map(str::to_owned) else {
            out.push(raw);
            continue;
        };
        if tok == "--" {
            out.push(raw);
            out.extend(it);
            break;
        }
        if tok.len() > 1 && tok.starts_with('-') {
            let (new, value_follows) = rewrite_flag(scope, &tok);
            out.push(new.into());
            if value_follows {
                if let Some(v) = it.next() {
                    out.push(v);
                }
            }
            continue;
        }
        out.push(raw);
        if !in_verb {
            match scope.find_subcommand(&tok) {
                Some(sub) if !OPAQUE_VERBS.contains(&sub.get_name()) => {
                    scope = sub;
                    in_verb = true;
                }
                _ => {
                    out.extend(it);
                    break;
                }
            }
        } else if OPAQUE_AFTER_ID.contains(&scope.get_name()) {
            out.extend(it);
            break;
        }
    }
    out
}

//! How real callers invoke runc, proven against ferry's parser.

use super::*;

fn run(args: &[&str]) -> Cli {
    match parse(args.iter().copied()) {
        Parsed::Run(cli) => *cli,
        Parsed::Exit { text, code } => panic!("{args:?} exited {code}: {text}"),
    }
}

fn exit(args: &[&str]) -> (String, i32) {
    match parse(args.iter().copied()) {
        Parsed::Run(cli) => panic!("{args:?} parsed: {cli:?}"),
        Parsed::Exit { text, code } => (text, code),
    }
}

fn rewritten(args: &[&str]) -> Vec<String> {
    argv::rewrite(&command(), args.iter().map(OsString::from).collect())
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
}

#[test]
fn one_dash_long_flags_go_runc_style() {
    // go-runc: `runc --root R -log L -log-format json restore -no-subreaper ...`
    let cli = run(&[
        "ferry",
        "-root",
        "/r",
        "-log",
        "/l.json",
        "-log-format",
        "json",
        "restore",
        "-detach",
        "-no-subreaper",
        "-image-path",
        "/img",
        "-bundle",
        "/b",
        "c1",
    ]);
    assert_eq!(cli.root, PathBuf::from("/r"));
    assert_eq!(cli.log, Some(PathBuf::from("/l.json")));
    assert_eq!(cli.log_format, "json");
    let Some(Command::Restore(r)) = cli.command else {
        panic!("not restore")
    };
    assert!(r.detach && r.no_subreaper);
    assert_eq!(r.common.image_path, Some(PathBuf::from("/img")));
    assert_eq!(r.bundle, Some(PathBuf::from("/b")));
    assert_eq!(r.container_id, "c1");
}

#[test]
fn one_dash_with_equals_and_short_flags_untouched() {
    let cli = run(&["ferry", "create", "-bundle=/b", "-pid-file=/p", "c1"]);
    let Some(Command::Create(c)) = cli.command else {
        panic!()
    };
    assert_eq!(c.bundle, Some(PathBuf::from("/b")));
    assert_eq!(c.pid_file, Some(PathBuf::from("/p")));
    assert_eq!(
        rewritten(&["ferry", "delete", "-f", "c"]),
        ["ferry", "delete", "-f", "c"]
    );
}

#[test]
fn exec_args_after_container_id_are_never_rewritten() {
    let got = rewritten(&[
        "ferry", "exec", "-detach", "c1", "ls", "-detach", "-cwd", "-la",
    ]);
    assert_eq!(
        got,
        ["ferry", "exec", "--detach", "c1", "ls", "-detach", "-cwd", "-la"]
    );
    let cli = run(&["ferry", "exec", "-e", "A=1", "c1", "sh", "-c", "echo -env"]);
    let Some(Command::Exec(e)) = cli.command else {
        panic!()
    };
    assert_eq!(e.env, ["A=1"]);
    assert_eq!(e.command, ["sh", "-c", "echo -env"]);
}

#[test]
fn values_of_flags_and_after_double_dash_untouched() {
    // "-root" here is the value of --cwd, not a flag.
    let got = rewritten(&["ferry", "exec", "--cwd", "-root", "c1", "true"]);
    assert_eq!(got, ["ferry", "exec", "--cwd", "-root", "c1", "true"]);
    let got = rewritten(&["ferry", "kill", "--", "-all"]);
    assert_eq!(got, ["ferry", "kill", "--", "-all"]);
}

#[test]
fn boolean_given_twice_podman_leave_running() {
    let cli = run(&[
        "ferry",
        "checkpoint",
        "--leave-running",
        "--leave-running",
        "--image-path",
        "/i",
        "--image-path",
        "/j",
        "c1",
    ]);
    let Some(Command::Checkpoint(c)) = cli.command else {
        panic!()
    };
    assert!(c.common.leave_running);
    assert_eq!(c.common.image_path, Some(PathBuf::from("/j")));
    let cli = run(&["ferry", "--debug", "--debug", "state", "c1"]);
    assert!(cli.debug);
}

#[test]
fn repeatable_flags_accumulate() {
    let cli = run(&[
        "ferry",
        "checkpoint",
        "--empty-ns",
        "network",
        "--empty-ns",
        "ipc",
        "c1",
    ]);
    let Some(Command::Checkpoint(c)) = cli.command else {
        panic!()
    };
    assert_eq!(c.common.empty_ns, ["network", "ipc"]);
    let cli = run(&["ferry", "exec", "-e", "A=1", "--env", "B=2", "c1", "env"]);
    let Some(Command::Exec(e)) = cli.command else {
        panic!()
    };
    assert_eq!(e.env, ["A=1", "B=2"]);
}

#[test]
fn checkpoint_help_exits_zero() {
    let (text, code) = exit(&["ferry", "checkpoint", "--help"]);
    assert_eq!(code, 0);
    assert!(text.contains("--leave-running"));
    let (_, code) = exit(&["ferry", "checkpoint", "-help"]);
    assert_eq!(code, 0);
    let (_, code) = exit(&["ferry", "--help"]);
    assert_eq!(code, 0);
}

#[test]
fn lsm_mount_context_without_value_is_go_flag_error() {
    let (text, code) = exit(&["ferry", "restore", "--lsm-mount-context"]);
    assert_ne!(code, 0);
    assert!(
        text.contains("flag needs an argument: -lsm-mount-context"),
        "{text}"
    );
    let (text, _) = exit(&["ferry", "restore", "-lsm-mount-context"]);
    assert!(
        text.contains("flag needs an argument: -lsm-mount-context"),
        "{text}"
    );
}

#[test]
fn unknown_flag_is_go_wording() {
    let (text, code) = exit(&["ferry", "state", "--bogus", "c1"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("flag provided but not defined: -bogus"),
        "{text}"
    );
}

#[test]
fn every_checkpoint_and_restore_flag_parses() {
    let common = [
        "--image-path",
        "/i",
        "--work-path",
        "/w",
        "--parent-path",
        "../p",
        "--leave-running",
        "--tcp-established",
        "--tcp-skip-in-flight",
        "--link-remap",
        "--ext-unix-sk",
        "--shell-job",
        "--lazy-pages",
        "--status-fd",
        "5",
        "--page-server",
        "10.0.0.1:27",
        "--file-locks",
        "--pre-dump",
        "--manage-cgroups-mode",
        "full",
        "--empty-ns",
        "network",
        "--auto-dedup",
    ];
    let mut args = vec!["ferry", "checkpoint"];
    args.extend(common);
    args.push("c1");
    let Some(Command::Checkpoint(c)) = run(&args).command else {
        panic!()
    };
    let o = crate::runtime::cr_opts::CheckpointOpts::try_from(&c).unwrap();
    assert!(o.common.leave_running && o.common.pre_dump && o.common.auto_dedup);
    assert_eq!(o.common.status_fd, Some(5));
    assert_eq!(o.common.page_server, Some(("10.0.0.1".to_string(), 27)));
    assert_eq!(
        o.common.manage_cgroups_mode,
        crate::runtime::cr_opts::CgroupsMode::Full
    );

    let mut args = vec!["ferry", "restore"];
    args.extend(common);
    args.extend([
        "--console-socket",
        "/s",
        "--bundle",
        "/b",
        "--detach",
        "--pid-file",
        "/p",
        "--no-subreaper",
        "--no-pivot",
        "--lsm-profile",
        "apparmor:x",
        "--lsm-mount-context",
        "ctx",
        "--tcp-close",
        "c2",
    ]);
    let Some(Command::Restore(r)) = run(&args).command else {
        panic!()
    };
    let o = crate::runtime::cr_opts::RestoreOpts::try_from(&r).unwrap();
    assert!(o.detach && o.no_subreaper && o.no_pivot && o.tcp_close);
    assert_eq!(o.lsm_mount_context.as_deref(), Some("ctx"));
    assert_eq!(o.container_id, "c2");
}

#[test]
fn bad_cgroups_mode_and_page_server() {
    let Some(Command::Checkpoint(c)) =
        run(&["ferry", "checkpoint", "--manage-cgroups-mode", "bogus", "c"]).command
    else {
        panic!()
    };
    let e = crate::runtime::cr_opts::CheckpointOpts::try_from(&c).unwrap_err();
    assert_eq!(e.to_string(), "Invalid manage cgroups mode: bogus");
    let Some(Command::Checkpoint(c)) =
        run(&["ferry", "checkpoint", "--page-server", "nohost", "c"]).command
    else {
        panic!()
    };
    assert!(crate::runtime::cr_opts::CheckpointOpts::try_from(&c).is_err());
}

#[test]
fn kill_signal_positional_and_default() {
    let Some(Command::Kill(k)) = run(&["ferry", "kill", "c1"]).command else {
        panic!()
    };
    assert_eq!(k.signal, "SIGTERM");
    let Some(Command::Kill(k)) = run(&["ferry", "kill", "-a", "c1", "KILL"]).command else {
        panic!()
    };
    assert!(k.all);
    assert_eq!(k.signal, "KILL");
    let Some(Command::Kill(k)) = run(&["ferry", "kill", "-all", "c1", "9"]).command else {
        panic!()
    };
    assert!(k.all);
}

#[test]
fn ps_passes_options_through() {
    let Some(Command::Ps(p)) = run(&["ferry", "ps", "c1", "-ef"]).command else {
        panic!()
    };
    assert_eq!(p.ps_options, ["-ef"]);
    let Some(Command::Ps(p)) = run(&["ferry", "ps", "--format", "json", "c1"]).command else {
        panic!()
    };
    assert_eq!(p.format, "json");
}

#[test]
fn run_and_create_flags() {
    let Some(Command::Run(r)) = run(&[
        "ferry",
        "run",
        "-d",
        "--keep",
        "-b",
        "/b",
        "--console-socket",
        "/s",
        "--pid-file",
        "/p",
        "--no-pivot",
        "--no-new-keyring",
        "--preserve-fds",
        "2",
        "--pidfd-socket",
        "/f",
        "c1",
    ])
    .command
    else {
        panic!()
    };
    assert!(r.detach && r.keep && r.create.no_pivot && r.create.no_new_keyring);
    assert_eq!(r.create.preserve_fds, 2);
}

#[test]
fn globals_runc_defaults() {
    let cli = run(&["ferry", "list"]);
    assert_eq!(cli.root, PathBuf::from("/run/ferry"));
    assert_eq!(cli.log_format, "text");
    assert_eq!(cli.rootless, "auto");
    let cli = run(&[
        "ferry",
        "--systemd-cgroup",
        "--criu",
        "/x/criu",
        "--rootless",
        "false",
        "list",
    ]);
    assert!(cli.systemd_cgroup);
    assert_eq!(cli.criu, "/x/criu");
    let (_, code) = exit(&["ferry", "--log-format", "xml", "list"]);
    assert_eq!(code, 1);
}

#[test]
fn spec_rootless_is_boolean_and_global_rootless_takes_value() {
    let Some(Command::Spec(s)) = run(&["ferry", "spec", "--rootless", "-b", "/b"]).command else {
        panic!()
    };
    assert!(s.rootless);
}

#[test]
fn image_and_criu_arguments_untouched() {
    let got = rewritten(&["ferry", "image", "-root", "x"]);
    assert_eq!(got, ["ferry", "image", "-root", "x"]);
    let cli = run(&["ferry", "criu", "dump", "-t", "1", "--help"]);
    let Some(Command::Criu(c)) = cli.command else {
        panic!()
    };
    assert_eq!(c.rest, ["dump", "-t", "1", "--help"]);
}

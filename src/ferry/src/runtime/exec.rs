//! `ferry exec`: run a new process inside a running container (libcontainer's tenant builder
//! joins its namespaces and cgroup; ferry's executor its user namespace, exec_userns.rs). Attached, ferry forwards signals and exits with the
//! process's code; `-d` returns at once.

use std::collections::HashMap;
use std::path::PathBuf;

use super::executor::FerryExecutor;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::ContainerStatus;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Process, Spec};

use super::console::{Bridge, Receiver};
use super::{foreground, Ctx, Error, Result};
use crate::cli::ExecArgs;

/// runc's `--user uid[:gid]`.
pub(super) fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u
        .parse()
        .map_err(|e| Error::Usage(format!("parsing {u} as int for uid failed: {e}")))?;
    let gid = g
        .map(|g| {
            g.parse()
                .map_err(|e| Error::Usage(format!("parsing {g} as int for gid failed: {e}")))
        })
        .transpose()?;
    Ok((uid, gid))
}

/// `--env K=V` pairs; a bare `K` means an empty value.
pub(super) fn parse_env(env: &[String]) -> HashMap<String, String> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

/// The exec'd process without `-p`, built as runc builds it: the container's own process with
/// the flags laid over it. Handed to libcontainer as a process.json where its own flag handling
/// cannot express the process: `-t` (libcontainer takes a terminal only from a file), a
/// container with a seccomp profile (whose capabilities exec_seccomp.rs widens for the load),
/// and one with a user namespace (whose user and capabilities exec_userns.rs takes over).
fn flags_process(a: &ExecArgs, bundle: &std::path::Path) -> Result<Process> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(Error::spec(format!("load {}", config.display())))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_terminal(Some(a.tty));
    process.set_args(Some(a.command.clone()));
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(a.env.iter().cloned());
    process.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        process.set_cwd(cwd.clone());
    }
    let mut user = process.user().clone();
    if let Some(u) = &a.user {
        let (uid, gid) = parse_user(u)?;
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
    }
    // runc: `--additional-gids` with or without `--user`.
    if !a.additional_gids.is_empty() {
        user.set_additional_gids(Some(a.additional_gids.clone()));
    }
    process.set_user(user);
    if !a.cap.is_empty() {
        add_caps(&mut process, &a.cap)?;
    }
    if let Some(profile) = &a.apparmor {
        process.set_apparmor_profile(Some(profile.clone()));
    }
    if a.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    Ok(process)
}

/// Writes `process` to a fresh `exec-process-*.json` in `dir` (the container's state directory).
fn write_process(process: &Process, dir: &std::path::Path) -> Result<tempfile::TempPath> {
    let file = tempfile::Builder::new()
        .prefix("exec-process-")
        .suffix(".json")
        .tempfile_in(dir)
        .map_err(Error::io("create process file in", dir))?;
    serde_json::to_writer(file.as_file(), process)
        .map_err(Error::json("write exec process.json"))?;
    Ok(file.into_temp_path())
}

/// The `--process` file as a [`Process`].
fn read_process(path: &std::path::Path) -> Result<Process> {
    let bytes = std::fs::read(path).map_err(Error::io("read process file", path))?;
    serde_json::from_slice(&bytes).map_err(Error::json(format!("parse {}", path.display())))
}

/// runc's `exec --cap`: each capability joins the bounding, effective and permitted sets, and
/// the ambient set when the process has an inheritable set.
fn add_caps(process: &mut oci_spec::runtime::Process, names: &[String]) -> Result<()> {
    use oci_spec::runtime::Capability;
    let mut caps = process.capabilities().clone().unwrap_or_default();
    for name in names {
        let cap: Capability = name
            .to_ascii_uppercase()
            .trim_start_matches("CAP_")
            .parse()
            .map_err(|_| Error::Usage(format!("exec --cap {name}: unknown capability")))?;
        let add = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.insert(cap);
            Some(set)
        };
        caps.set_bounding(add(caps.bounding()));
        caps.set_effective(add(caps.effective()));
        caps.set_permitted(add(caps.permitted()));
        if caps.inheritable().is_some() {
            caps.set_ambient(add(caps.ambient()));
        }
    }
    process.set_capabilities(Some(caps));
    Ok(())
}

/// Whether the exec'd process gets a terminal: `terminal` of `--process`'s JSON when given
/// (runc then ignores `-t`), else `-t`.
fn wants_terminal(a: &ExecArgs) -> Result<bool> {
    let Some(path) = &a.process else {
        return Ok(a.tty);
    };
    let bytes = std::fs::read(path).map_err(Error::io("read process file", path))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(Error::json(format!("parse {}", path.display())))?;
    Ok(v.get("terminal").and_then(|t| t.as_bool()).unwrap_or(false))
}

/// Runs `ferry exec`; returns the exit code.
pub(super) fn run(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let id = a.container_id.as_str();
    let container = ctx.load(id)?;
    match container.status() {
        ContainerStatus::Running => {}
        ContainerStatus::Paused if a.ignore_paused => {}
        ContainerStatus::Paused => return Err(Error::ExecPaused),
        ContainerStatus::Stopped => return Err(Error::ExecStopped),
        other => {
            return Err(Error::Unsupported(format!(
                "exec failed: cannot exec in a {} container (start it first)",
                super::status_word(other)
            )))
        }
    }
    if a.process.is_none() && a.command.is_empty() {
        return Err(Error::Usage(
            "exec failed: args must not be empty".to_string(),
        ));
    }
    if a.cgroup.len() > 1 {
        return Err(Error::Unsupported(
            "exec --cgroup given more than once (per-controller sub-cgroups) is not supported"
                .to_string(),
        ));
    }
    let (user, group) = match &a.user {
        Some(u) => {
            let (uid, gid) = parse_user(u)?;
            (Some(uid), gid)
        }
        None => (None, None),
    };
    let config = super::nnp::read_config(container.bundle())?;
    let seccomp = super::nnp::has_seccomp(&config);
    let userns = super::exec_userns::has_userns(&config);
    let mut own = match &a.process {
        Some(p) if seccomp || userns => Some(read_process(p)?),
        Some(_) => None,
        None if a.tty || seccomp || userns => Some(flags_process(a, container.bundle())?),
        None => None,
    };
    let filter = match own.as_mut() {
        Some(p) => super::exec_seccomp::prepare(&config, p)?,
        None => None,
    };
    // After the seccomp step: the capabilities it widened for the load are the ones the
    // process holds in the user namespace until the filter is in.
    let (join, ns_fd) = match own.as_mut() {
        Some(p) if userns => {
            let pid = container.pid().ok_or_else(|| {
                Error::Unsupported(format!(
                    "exec in container {id}: its state names no init pid"
                ))
            })?;
            match super::exec_userns::prepare(&config, pid.as_raw(), p)? {
                Some((join, fd)) => (Some(join), Some(fd)),
                None => (None, None),
            }
        }
        _ => (None, None),
    };
    let written = own
        .map(|p| write_process(&p, &ctx.container_dir(id)))
        .transpose()?;
    let process: Option<PathBuf> = match (&written, &a.process) {
        (Some(w), _) => Some(w.to_path_buf()),
        (None, p) => p.clone(),
    };
    // `-t` attached without a console socket: ferry takes the pty itself, like runc.
    let receiver = if !a.detach && a.console_socket.is_none() && wants_terminal(a)? {
        Some(Receiver::listen()?)
    } else {
        None
    };
    let console = receiver
        .as_ref()
        .map(|r| r.path().clone())
        .or_else(|| a.console_socket.clone());
    super::drop_own_groups("exec")?;
    let stage = format!("exec in container {id}");
    let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(FerryExecutor {
            seccomp: filter,
            userns: join,
        })
        .with_root_path(&ctx.root)
        .map_err(Error::container(stage.clone()))?
        .with_console_socket(console.as_ref())
        .with_pid_file(a.pid_file.as_ref())
        .map_err(Error::container(stage.clone()))?
        .with_preserved_fds(a.preserve_fds)
        .validate_id()
        .map_err(Error::container(stage.clone()))?
        .as_tenant()
        // libcontainer accepts a console socket only "detached"; that flag gates only this check.
        .with_detach(a.detach || receiver.is_some())
        .with_cwd(a.cwd.as_ref())
        .with_env(parse_env(&a.env))
        .with_process(process.as_ref())
        .with_no_new_privs(a.no_new_privs)
        .with_container_args(a.command.clone())
        .with_additional_gids(a.additional_gids.clone())
        .with_user(user)
        .with_group(group)
        .with_capabilities(a.cap.clone())
        .with_ignore_paused(a.ignore_paused)
        .with_sub_cgroup(a.cgroup.first().cloned())
        .with_process_label(a.process_label.clone())
        .with_apparmor(a.apparmor.clone())
        .build()
        .map_err(Error::container(stage))?;
    drop(written);
    drop(ns_fd);
    if a.detach {
        return Ok(0);
    }
    let bridge = match receiver {
        Some(r) => Some(Bridge::start(r.master()?)?),
        None => None,
    };
    let code = foreground::wait(pid, bridge.as_ref().map(Bridge::master_fd));
    drop(bridge);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, None));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, Some(100)));
        assert!(parse_user("bob")
            .unwrap_err()
            .to_string()
            .contains("for uid failed"));
        assert!(parse_user("1:x")
            .unwrap_err()
            .to_string()
            .contains("for gid failed"));
    }

    #[test]
    fn env_pairs() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "C".into()]);
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
    }
}

//! The OCI lifecycle over youki's libcontainer, one file per verb.
//!
//! A container's state lives in `<root>/<id>/` (libcontainer's `state.json` and its saved
//! config). Every verb loads it, checks the status the way runc does (with runc's error texts,
//! see `error.rs`), then asks libcontainer or libcgroups to act.

pub mod console;
pub mod cr_opts;
pub mod error;
pub mod executor;
pub mod foreground;
pub mod signal;
pub mod state;

mod bind_stage;
mod checkpoint;
mod cr_build;
mod cr_build_init;
mod cr_cgroups;
mod cr_error;
mod cr_freezer;
mod cr_inputs;
mod cr_mounts;
mod cr_paths;
mod cr_restore;
mod cr_spec;
mod cr_stdio;
mod cr_userns;
mod create;
mod delete;
mod events;
mod exec;
mod exec_seccomp;
mod exec_userns;
mod features;
mod kill;
mod list;
mod nnp;
mod oom;
mod pause;
mod ps;
mod restore;
mod resume;
mod run;
mod spec;
mod start;
mod update;

use std::path::{Path, PathBuf};

use libcgroups::common::{AnyCgroupManager, CgroupConfig};
use libcontainer::container::{Container, ContainerStatus};

use crate::cli::Command;
pub use error::{Error, Result};

/// What every verb needs from the global flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--root`: where container state directories live.
    pub root: PathBuf,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// `--rootless` (true, false or auto).
    pub rootless: String,
}

impl Ctx {
    /// The state directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Loads container `id`, with its status refreshed from /proc.
    pub fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        if !dir.join("state.json").exists() {
            return Err(Error::NotExist);
        }
        Container::load(dir).map_err(Error::container(format!("load state of container {id}")))
    }

    /// The cgroup manager of a loaded container.
    pub fn cgroup_manager(&self, container: &Container) -> Result<AnyCgroupManager> {
        let config = container.spec().map_err(Error::container(format!(
            "load config of container {}",
            container.id()
        )))?;
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: config.cgroup_path,
            systemd_cgroup: container.systemd(),
            container_name: container.id().to_string(),
        })
        .map_err(Error::cgroup(format!(
            "open cgroup of container {}",
            container.id()
        )))
    }

    /// Creates the root directory if needed (mode 0700, like runc).
    pub fn ensure_root(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(Error::io("create state root", &self.root))
    }
}

/// runc's id rule: letters, digits, `_+-.`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// runc's lower-case status word.
pub fn status_word(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

/// Makes a path absolute against the current directory without resolving links.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io("resolve path", path))
}

/// Leaves ferry, and so the processes libcontainer forks from it, without supplementary
/// groups. libcontainer 0.7 calls setgroups for a container's init or an exec'd process only
/// when it has additional gids, so one without kept ferry's own; runc gives it exactly its
/// list (none: none). ferry, root, needs no groups from here on (its hooks run as root).
pub(super) fn drop_own_groups(verb: &str) -> Result<()> {
    match nix::unistd::setgroups(&[]) {
        Ok(()) => Ok(()),
        // Not root: libcontainer could not set groups either; nothing to take away.
        Err(nix::errno::Errno::EPERM) => {
            tracing::warn!("{verb}: cannot drop ferry's supplementary groups (no CAP_SETGID)");
            Ok(())
        }
        Err(e) => Err(Error::Io {
            stage: "drop ferry's supplementary groups",
            path: "/proc/self/status".into(),
            source: e.into(),
        }),
    }
}

/// Runs one verb; returns the process exit code.
pub fn dispatch(ctx: &Ctx, command: Command) -> Result<i32> {
    match command {
        Command::Create(a) => create::run(ctx, &a).map(|()| 0),
        Command::Start(a) => start::run(ctx, &a.container_id).map(|()| 0),
        Command::Run(a) => run::run(ctx, &a),
        Command::State(a) => state::run(ctx, &a.container_id).map(|()| 0),
        Command::Kill(a) => kill::run(ctx, &a).map(|()| 0),
        Command::Delete(a) => delete::run(ctx, &a).map(|()| 0),
        Command::List(a) => list::run(ctx, &a).map(|()| 0),
        Command::Ps(a) => ps::run(ctx, &a).map(|()| 0),
        Command::Exec(a) => exec::run(ctx, &a),
        Command::Pause(a) => pause::run(ctx, &a.container_id).map(|()| 0),
        Command::Resume(a) => resume::run(ctx, &a.container_id).map(|()| 0),
        Command::Events(a) => events::run(ctx, &a).map(|()| 0),
        Command::Update(a) => update::run(ctx, &a).map(|()| 0),
        Command::Spec(a) => spec::run(&a).map(|()| 0),
        Command::Features => features::run().map(|()| 0),
        Command::Checkpoint(a) => checkpoint::run(ctx, &a).map(|()| 0),
        Command::Restore(a) => restore::run(ctx, &a),
        Command::Image(_) | Command::Criu(_) => Err(Error::Usage(
            "image and criu are not lifecycle verbs".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc_rule() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(
                matches!(validate_id(bad), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_container_is_runc_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx {
            root: dir.path().to_path_buf(),
            systemd_cgroup: false,
            rootless: "auto".into(),
        };
        let err = ctx.load("nope").unwrap_err();
        assert_eq!(err.to_string(), "container does not exist");
    }
}

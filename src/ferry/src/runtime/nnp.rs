//! An explicit `"process.noNewPrivileges": false` beside a seccomp profile.
//!
//! The kernel installs a seccomp filter (SECCOMP_SET_MODE_FILTER) only for a task that has
//! no_new_privs set or holds CAP_SYS_ADMIN. runc therefore loads the container's filter before
//! it drops capabilities when no_new_privs is off, and as late as possible (after the drop, just
//! before exec) when it is on. libcontainer 0.7 picks the late path whenever the key is
//! *present* (`no_new_privileges().is_some()`), so a config that writes `false` out has its
//! filter loaded with no CAP_SYS_ADMIN left and no no_new_privs: the kernel refuses (EACCES,
//! libseccomp reports ECANCELED) and the container never starts. Go's runtime-spec bindings
//! drop a false (`omitempty`), so podman, containerd and CRI-O never write the key;
//! hand-written configs and configs serialized by Rust's oci-spec do.
//!
//! The key defaults to false, so leaving it out means the same thing: libcontainer builds from
//! a copy of the config without it, which puts it on runc's order. Nothing is loosened: the
//! filter is the config's, loaded while the init still holds the capabilities runc's init holds
//! at that point, and no_new_privs stays off as the config says. The copy lives in a temporary
//! directory only while libcontainer builds the container; the state names the caller's bundle
//! again before create returns (hooks that run during create see the copy's directory as the
//! bundle, with the same config in it).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Error, Result};

/// Whether `process` (a config's `process`) says
/// `"noNewPrivileges": false` in so many words.
pub(super) fn explicit_false(process: &Value) -> bool {
    process.get("noNewPrivileges") == Some(&Value::Bool(false))
}

/// Whether `config` has a seccomp profile and an explicit `noNewPrivileges: false`: the
/// configs libcontainer would start with a filter it cannot load.
pub(super) fn needs_view(config: &Value) -> bool {
    has_seccomp(config) && config.get("process").is_some_and(explicit_false)
}

/// Whether `config` gives its container a seccomp profile.
pub(super) fn has_seccomp(config: &Value) -> bool {
    config
        .get("linux")
        .and_then(|l| l.get("seccomp"))
        .is_some_and(|s| !s.is_null())
}

/// Reads `bundle`'s config.json as JSON.
pub(super) fn read_config(bundle: &Path) -> Result<Value> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(Error::io("read bundle config", &path))?;
    serde_json::from_slice(&bytes).map_err(Error::json(format!("parse {}", path.display())))
}

/// A copy of a bundle's config without the explicit false, in a directory of its own that
/// libcontainer is given as the bundle; removed on drop.
pub(super) struct ConfigView {
    dir: tempfile::TempDir,
}

impl ConfigView {
    /// The directory to hand libcontainer as the bundle.
    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The view of `bundle` (absolute) that libcontainer should build from, or `None` when the
/// bundle's own config is fine as it is. Only the key and the root path differ: the rootfs
/// is made absolute against the real bundle (libcontainer resolves it against the directory
/// it is given); everything else, relative mount sources included, reads exactly as before.
/// `config` is the bundle's, read by the caller; `adjusted`: the caller changed it already
/// (bind sources staged by bind_stage.rs), so it needs a view whatever its key says.
pub(super) fn view_of(
    bundle: &Path,
    mut config: Value,
    adjusted: bool,
) -> Result<Option<ConfigView>> {
    if needs_view(&config) {
        strip(&mut config["process"]);
    } else if !adjusted {
        return Ok(None);
    }
    if let Some(root) = config["root"]["path"].as_str() {
        let abs = bundle.join(root).to_string_lossy().into_owned();
        config["root"]["path"] = Value::String(abs);
    }
    let dir = tempfile::Builder::new()
        .prefix("ferry-config-")
        .tempdir()
        .map_err(Error::io(
            "create config view directory",
            std::env::temp_dir(),
        ))?;
    let out = dir.path().join("config.json");
    let bytes = serde_json::to_vec_pretty(&config)
        .map_err(Error::json(format!("encode {}", out.display())))?;
    std::fs::write(&out, bytes).map_err(Error::io("write config view", &out))?;
    Ok(Some(ConfigView { dir }))
}

/// Removes an explicit `noNewPrivileges: false` from `process`; returns whether it did.
pub(super) fn strip(process: &mut Value) -> bool {
    if !explicit_false(process) {
        return false;
    }
    if let Some(p) = process.as_object_mut() {
        p.remove("noNewPrivileges");
    }
    true
}

/// The bundle libcontainer was given for a view, put back into the container's state.
pub(super) fn restore_bundle(
    container: &mut libcontainer::container::Container,
    bundle: PathBuf,
) -> Result<()> {
    container.state.bundle = std::fs::canonicalize(&bundle).unwrap_or(bundle);
    container.save().map_err(Error::container(format!(
        "save state of container {}",
        container.id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(nnp: Option<bool>, seccomp: bool) -> Value {
        let mut c = json!({"process": {"args": ["sh"]}, "root": {"path": "rootfs"}, "linux": {}});
        if let Some(v) = nnp {
            c["process"]["noNewPrivileges"] = Value::Bool(v);
        }
        if seccomp {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
        }
        c
    }

    #[test]
    fn only_an_explicit_false_with_seccomp_needs_a_view() {
        assert!(needs_view(&config(Some(false), true)));
        assert!(!needs_view(&config(None, true)));
        assert!(!needs_view(&config(Some(true), true)));
        assert!(!needs_view(&config(Some(false), false)));
        let mut null = config(Some(false), false);
        null["linux"]["seccomp"] = Value::Null;
        assert!(!needs_view(&null));
    }

    #[test]
    fn view_drops_the_key_and_roots_the_rootfs_in_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        let mut c = config(Some(false), true);
        c["mounts"] = json!([{"destination": "/d", "type": "bind", "source": "rel/src"}]);
        std::fs::write(bundle.path().join("config.json"), c.to_string()).unwrap();
        let view = view_of(bundle.path(), read_config(bundle.path()).unwrap(), false)
            .unwrap()
            .expect("a view");
        let v = read_config(view.path()).unwrap();
        assert!(v["process"].get("noNewPrivileges").is_none());
        assert_eq!(
            v["root"]["path"],
            bundle.path().join("rootfs").to_str().unwrap()
        );
        // Everything else as written.
        assert_eq!(v["mounts"], c["mounts"]);
        assert_eq!(v["linux"]["seccomp"], c["linux"]["seccomp"]);
        let dir = view.path().to_path_buf();
        drop(view);
        assert!(!dir.exists());
    }

    #[test]
    fn an_adjusted_config_gets_a_view_as_adjusted() {
        let bundle = tempfile::tempdir().unwrap();
        let mut c = config(Some(false), false);
        c["mounts"] = json!([{"destination": "/d", "type": "bind", "source": "/staged/0"}]);
        let view = view_of(bundle.path(), c.clone(), true)
            .unwrap()
            .expect("a view");
        let v = read_config(view.path()).unwrap();
        assert_eq!(v["mounts"], c["mounts"]);
        // No seccomp: the explicit false is harmless and stays.
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(
            v["root"]["path"],
            bundle.path().join("rootfs").to_str().unwrap()
        );
    }

    #[test]
    fn no_view_for_a_config_libcontainer_reads_right() {
        let bundle = tempfile::tempdir().unwrap();
        for c in [config(None, true), config(Some(true), true)] {
            std::fs::write(bundle.path().join("config.json"), c.to_string()).unwrap();
            assert!(
                view_of(bundle.path(), read_config(bundle.path()).unwrap(), false)
                    .unwrap()
                    .is_none()
            );
        }
    }
}

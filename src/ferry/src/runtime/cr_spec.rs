//! The config a restore builds its container from: the bundle's own, adjusted for an init that
//! restores a tree instead of running `process.args`.
//!
//! libcontainer's init drops to the config's capabilities, applies its seccomp filter and LSM
//! profile before the executor runs. The in-place restore needs ferry's own capabilities (clone3
//! with set_tid, PR_SET_MM, capset); the restored tasks then take their
//! credentials, capabilities and seccomp filters from the images, as with runc+CRIU where CRIU
//! restores them. So the restore config keeps everything else (namespaces, mounts, cgroups,
//! hostname, devices, hooks) and differs only in: the init's capabilities (ferry's permitted set),
//! no seccomp, no LSM labels, no terminal (stdio comes from descriptors.json; a terminal
//! container gets a new console whose slave stands for its old terminal), and absolute
//! rootfs and bind-source paths (the build does not run in the bundle directory), with the sources a
//! mapped root could not reach staged (bind_stage.rs).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::cr_error::CrError;
use super::cr_inputs::BundleConfig;

/// The config of one restore, in memory (ferry builds the container from it: `cr_build`).
pub struct RestoreBundle {
    /// The adjusted config.
    pub spec: oci_spec::runtime::Spec,
    /// The bundle's config.json it was made from (for messages).
    pub source: PathBuf,
    /// Bind sources staged for a mapped root (bind_stage.rs), until the mounts are made.
    staged: Option<super::bind_stage::Staged>,
}

impl RestoreBundle {
    /// Detaches the staged bind sources: the container's mounts are made.
    pub fn release_staged(&mut self) {
        self.staged = None;
    }
}

/// The restore config for `bundle` (its `config`, as read); with `terminal` the init gets a new console (a terminal container restored with
/// `--console-socket`); with `time` (the images' clocks, a tree in its own time namespace) the
/// config's time namespace gets the offsets that make its clocks go on from the images'. Bind
/// sources the mapped root of a user namespace could not reach are staged for container `id`
/// under state root `root`.
pub fn prepare(
    (root, id): (&Path, &str),
    (bundle, config): (&Path, BundleConfig),
    terminal: bool,
    time: Option<&ferry_engine::container::TimeOffsets>,
) -> Result<RestoreBundle, CrError> {
    let BundleConfig {
        path: config,
        mut spec,
    } = config;
    let caps = own_capabilities()?;
    adjust(&mut spec, bundle, &caps);
    if terminal {
        spec["process"]["terminal"] = Value::Bool(true);
    }
    if let Some(t) = time {
        set_time_offsets(&mut spec, t).map_err(|what| CrError::NotSupported {
            stage: format!("restore config from {}", config.display()),
            what,
        })?;
    }
    let staged = super::bind_stage::stage(root, id, &mut spec)?;
    let spec = serde_json::from_value(spec).map_err(|source| CrError::Json {
        stage: format!("read the OCI config {}", config.display()),
        source,
    })?;
    Ok(RestoreBundle {
        spec,
        source: config,
        staged,
    })
}

fn own_capabilities() -> Result<Vec<String>, CrError> {
    let set = caps::read(None, caps::CapSet::Permitted).map_err(|e| {
        CrError::io("read ferry's capabilities", "/proc/self/status")(std::io::Error::other(
            e.to_string(),
        ))
    })?;
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    Ok(v)
}

/// Sets `linux.timeOffsets` of a config whose own time namespace is made fresh (no `path`):
/// the images' tree had a time namespace of its own, which only such a config gives back.
pub fn set_time_offsets(
    spec: &mut Value,
    time: &ferry_engine::container::TimeOffsets,
) -> Result<(), String> {
    let fresh = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["type"] == "time" && n.get("path").is_none_or(|p| p.is_null()));
    if !fresh {
        return Err(
            "the images' tree has its own time namespace; the config makes none \
                    (add {\"type\": \"time\"} to linux.namespaces)"
                .into(),
        );
    }
    let mut m = serde_json::Map::new();
    for (clock, secs, nanosecs) in time {
        m.insert(
            (*clock).into(),
            serde_json::json!({"secs": secs, "nanosecs": nanosecs}),
        );
    }
    spec["linux"]["timeOffsets"] = Value::Object(m);
    Ok(())
}

/// Applies the restore adjustments to `spec` (from `bundle`), giving the init `caps`.
pub fn adjust(spec: &mut Value, bundle: &Path, caps: &[String]) {
    let abs = |p: &str| -> String {
        if Path::new(p).is_absolute() {
            p.to_string()
        } else {
            bundle.join(p).to_string_lossy().into_owned()
        }
    };
    if let Some(root) = spec["root"]["path"].as_str().map(abs) {
        spec["root"]["path"] = Value::String(root);
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts {
            let bind = m["type"].as_str() == Some("bind")
                || m["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|o| matches!(o.as_str(), Some("bind" | "rbind")));
            if let Some(src) = m["source"].as_str().filter(|_| bind).map(abs) {
                m["source"] = Value::String(src);
            }
        }
    }
    if let Some(p) = spec["process"].as_object_mut() {
        let list: Vec<Value> = caps.iter().cloned().map(Value::String).collect();
        let mut c = serde_json::Map::new();
        for set in ["bounding", "effective", "permitted", "inheritable"] {
            c.insert(set.into(), Value::Array(list.clone()));
        }
        p.insert("capabilities".into(), Value::Object(c));
        p.insert("terminal".into(), Value::Bool(false));
        p.remove("apparmorProfile");
        p.remove("selinuxLabel");
    }
    if let Some(l) = spec["linux"].as_object_mut() {
        l.remove("seccomp");
    }
}

/// The bundle of a restore: `--bundle` made absolute, or the current directory.
pub fn bundle_dir(bundle: Option<&Path>) -> Result<PathBuf, CrError> {
    match bundle {
        Some(b) => std::path::absolute(b).map_err(CrError::io("resolve path", b)),
        None => std::env::current_dir().map_err(CrError::io("read current directory", ".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_offsets_need_a_fresh_time_namespace() {
        let t = [("monotonic", -5, 7), ("boottime", 9, 0)];
        let mut spec = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert!(set_time_offsets(&mut spec, &t)
            .unwrap_err()
            .contains("own time namespace"));
        let ns = spec["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(serde_json::json!({"type": "time", "path": "/x"}));
        assert!(set_time_offsets(&mut spec, &t).is_err());
        spec["linux"]["namespaces"][1] = serde_json::json!({"type": "time"});
        set_time_offsets(&mut spec, &t).unwrap();
        assert_eq!(spec["linux"]["timeOffsets"]["monotonic"]["secs"], -5);
        assert_eq!(spec["linux"]["timeOffsets"]["monotonic"]["nanosecs"], 7);
        assert_eq!(spec["linux"]["timeOffsets"]["boottime"]["secs"], 9);
    }

    #[test]
    fn keeps_the_container_and_frees_the_init() {
        let mut spec = serde_json::json!({
            "process": {"terminal": true, "args": ["sh"], "apparmorProfile": "p",
                        "capabilities": {"bounding": ["CAP_KILL"]}},
            "root": {"path": "rootfs"},
            "hostname": "h",
            "mounts": [{"destination": "/d", "type": "bind", "source": "data"},
                       {"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}, "namespaces": []}
        });
        adjust(&mut spec, Path::new("/b"), &["CAP_SYS_ADMIN".into()]);
        assert_eq!(spec["root"]["path"], "/b/rootfs");
        assert_eq!(spec["mounts"][0]["source"], "/b/data");
        assert_eq!(spec["mounts"][1]["source"], "proc");
        assert_eq!(
            spec["process"]["capabilities"]["bounding"][0],
            "CAP_SYS_ADMIN"
        );
        assert_eq!(spec["process"]["terminal"], false);
        assert!(spec["process"].get("apparmorProfile").is_none());
        assert!(spec["linux"].get("seccomp").is_none());
        assert_eq!(spec["hostname"], "h");
        assert_eq!(spec["process"]["args"][0], "sh");
    }
}

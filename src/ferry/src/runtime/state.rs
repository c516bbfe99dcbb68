//! `ferry state`: the container's state as runc prints it (the OCI state plus `rootfs`,
//! `created` and `owner`), pretty-printed with two-space indents and no trailing newline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use libcontainer::container::{Container, ContainerStatus};
use serde::Serialize;

use super::{status_word, Ctx, Error, Result};

/// runc's `containerState`, field for field and in runc's order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuncState {
    /// OCI runtime-spec version the state follows.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Init's pid on the host; 0 once stopped.
    pub pid: i32,
    /// created, running, paused, stopped (or creating).
    pub status: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 with nanoseconds like Go's time.RFC3339Nano.
    pub created: String,
    /// Owner's user name (`list` fills it; `state` leaves it empty, as runc does).
    pub owner: String,
    /// The config's annotations, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// Go's RFC3339Nano: nanoseconds with trailing zeros dropped.
pub fn rfc3339_nano(t: &DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // "...:SS.123400000Z" -> "...:SS.1234Z"; "...:SS.000000000Z" -> "...:SSZ".
    let body = s.trim_end_matches('Z');
    match body.split_once('.') {
        Some((head, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{frac}Z")
            }
        }
        None => s,
    }
}

/// The rootfs of a bundle: `root.path` of its config.json, absolute against the bundle.
pub fn bundle_rootfs(bundle: &Path) -> PathBuf {
    let from_config = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer("/root/path")?.as_str().map(PathBuf::from));
    match from_config {
        Some(p) if p.is_absolute() => p,
        Some(p) => bundle.join(p),
        None => bundle.join("rootfs"),
    }
}

/// The runc-shaped state of a loaded container.
pub fn of(container: &Container) -> RuncState {
    let status = container.status();
    let pid = match status {
        ContainerStatus::Stopped => 0,
        _ => container.pid().map(|p| p.as_raw()).unwrap_or(0),
    };
    let bundle = container.bundle().clone();
    RuncState {
        oci_version: container.state.oci_version.clone(),
        id: container.id().to_string(),
        pid,
        status: status_word(status).to_string(),
        rootfs: bundle_rootfs(&bundle),
        bundle,
        created: container
            .created()
            .map(|t| rfc3339_nano(&t))
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string()),
        owner: String::new(),
        annotations: container
            .state
            .annotations
            .clone()
            .filter(|a| !a.is_empty()),
    }
}

/// Prints the state of container `id`.
pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let container = ctx.load(id)?;
    let json = serde_json::to_string_pretty(&of(&container))
        .map_err(Error::json(format!("encode state of container {id}")))?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(json.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::io("write state to", "stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> RuncState {
        RuncState {
            oci_version: "1.2.0".into(),
            id: "c1".into(),
            pid: 42,
            status: "running".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-11-27T01:03:34.822229051Z".into(),
            owner: String::new(),
            annotations: None,
        }
    }

    #[test]
    fn json_has_runc_keys_in_runc_order() {
        let json = serde_json::to_string_pretty(&sample()).unwrap();
        let expected = r#"{
  "ociVersion": "1.2.0",
  "id": "c1",
  "pid": 42,
  "status": "running",
  "bundle": "/b",
  "rootfs": "/b/rootfs",
  "created": "2026-11-27T01:03:34.822229051Z",
  "owner": ""
}"#;
        assert_eq!(json, expected);
    }

    #[test]
    fn annotations_appear_only_when_present() {
        let mut s = sample();
        s.annotations = Some(HashMap::from([("k".to_string(), "v".to_string())]));
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["annotations"]["k"], "v");
        assert!(serde_json::to_value(sample())
            .unwrap()
            .get("annotations")
            .is_none());
    }

    #[test]
    fn created_is_go_rfc3339nano() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(rfc3339_nano(&t), "2026-01-02T03:04:05Z");
        let t = t + chrono::Duration::nanoseconds(120_000_000);
        assert_eq!(rfc3339_nano(&t), "2026-01-02T03:04:05.12Z");
        let t = t + chrono::Duration::nanoseconds(7);
        assert_eq!(rfc3339_nano(&t), "2026-01-02T03:04:05.120000007Z");
    }

    #[test]
    fn rootfs_resolves_against_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"root":{"path":"rfs"}}"#).unwrap();
        assert_eq!(bundle_rootfs(dir.path()), dir.path().join("rfs"));
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"root":{"path":"/abs"}}"#,
        )
        .unwrap();
        assert_eq!(bundle_rootfs(dir.path()), PathBuf::from("/abs"));
    }
}

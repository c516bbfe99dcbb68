//! An OCI image (image-layout tarball) made by hand from the test rootfs, for containerd.
//!
//! Layout: `oci-layout`, `index.json` naming one manifest (annotated with the image name both
//! as `io.containerd.image.name` and `org.opencontainers.image.ref.name`), and content-addressed
//! blobs: an uncompressed layer tar of the rootfs, the image config (its `rootfs.diff_ids` is the
//! layer's digest, since the layer is not compressed) and the manifest. `ctr images import`
//! takes the tarball as it is.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::cmd;

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// sha256 hex digest of a file (coreutils' sha256sum: no hashing crate needed for tests).
pub fn sha256_file(path: &Path) -> String {
    let o = cmd::run(Command::new("sha256sum").arg(path), Duration::from_secs(60)).ok();
    o.stdout
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

/// Stores `path` as a blob in `layout` (moved to blobs/sha256/<digest>); returns (digest, size).
fn add_blob(layout: &Path, path: &Path) -> (String, u64) {
    let digest = sha256_file(path);
    let size = fs::metadata(path).unwrap().len();
    fs::rename(path, layout.join("blobs/sha256").join(&digest)).unwrap();
    (format!("sha256:{digest}"), size)
}

fn add_json_blob(layout: &Path, name: &str, v: &serde_json::Value) -> (String, u64) {
    let p = layout.join(name);
    fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    add_blob(layout, &p)
}

/// Builds `<work>/image.tar` holding an OCI image named `name` (e.g.
/// `docker.io/ferry-it/busybox:latest`) of `rootfs`, whose default command is `cmd`.
pub fn build_image(work: &Path, rootfs: &Path, name: &str, default_cmd: &[&str]) -> PathBuf {
    let layout = work.join("oci-layout-dir");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = layout.join("layer.tar");
    cmd::run(
        Command::new("tar")
            .args(["--numeric-owner", "--sort=name", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
        Duration::from_secs(120),
    )
    .ok();
    let (layer_digest, layer_size) = add_blob(&layout, &layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [crate::bundle::CONTAINER_PATH],
            "Cmd": default_cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "ferry integration rig", "comment": "busybox-static rootfs"}]
    });
    let (config_digest, config_size) = add_json_blob(&layout, "config.json", &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = add_json_blob(&layout, "manifest.json", &manifest);
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tarball = work.join("image.tar");
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tarball)
            .args(["oci-layout", "index.json", "blobs"]),
        Duration::from_secs(120),
    )
    .ok();
    tarball
}

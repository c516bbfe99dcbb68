//! `ferry spec`: write runc's default config.json (oci-spec's defaults are runc's), or the
//! rootless variant, into the bundle; refuse to overwrite one.

use std::io::Write;

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder, LinuxNamespaceType, Spec,
};
use serde::Serialize;

use super::{Error, Result};
use crate::cli::SpecArgs;

/// The spec `ferry spec` writes: oci-spec's default brought to runc 1.1's (a terminal, the
/// deny-all device rule, no cgroup namespace, no inheritable capabilities, no annotations).
pub(super) fn default_spec(rootless: bool) -> Result<Spec> {
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    } else {
        Spec::default()
    };
    let err = |e| Error::spec("build the default spec")(e);
    spec.set_hostname(Some("ferry".to_string()));
    spec.set_annotations(None);
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(true));
        let caps: std::collections::HashSet<Capability> = [
            Capability::AuditWrite,
            Capability::Kill,
            Capability::NetBindService,
        ]
        .into_iter()
        .collect();
        let set = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps.clone())
            .ambient(caps)
            .build()
            .map_err(err)?;
        process.set_capabilities(Some(set));
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
        }
        if !rootless {
            if let Some(res) = linux.resources_mut() {
                let deny_all = LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .map_err(err)?;
                res.set_devices(Some(vec![deny_all]));
            }
        }
    }
    Ok(spec)
}

/// JSON indented with tabs, like Go's json.MarshalIndent(spec, "", "\t").
pub(super) fn to_tab_json(spec: &Spec) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    spec.serialize(&mut ser)
        .map_err(Error::json("encode spec"))?;
    Ok(buf)
}

/// Runs `ferry spec`.
pub(super) fn run(a: &SpecArgs) -> Result<()> {
    let dir = a.bundle.clone().unwrap_or_else(|| ".".into());
    if !dir.is_dir() {
        return Err(Error::Io {
            stage: "open bundle directory",
            path: dir,
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    let path = dir.join("config.json");
    if path.exists() {
        return Err(Error::Usage(
            "File config.json exists. Remove it first".to_string(),
        ));
    }
    let json = to_tab_json(&default_spec(a.rootless)?)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(Error::io("create", &path))?;
    f.write_all(&json).map_err(Error::io("write", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_runcs_shape() {
        let json = to_tab_json(&default_spec(false).unwrap()).unwrap();
        let text = String::from_utf8(json).unwrap();
        assert!(text.starts_with("{\n\t\"ociVersion\""));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["process"]["args"][0], "sh");
        assert_eq!(v["process"]["terminal"], true);
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["linux"]["namespaces"].as_array().unwrap().len(), 5);
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(v.get("annotations").is_none());
    }

    #[test]
    fn rootless_spec_has_user_namespace() {
        let v = serde_json::to_value(default_spec(true).unwrap()).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "user"));
        assert!(v["linux"]["uidMappings"].is_array());
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let a = SpecArgs {
            bundle: Some(dir.path().to_path_buf()),
            rootless: false,
        };
        run(&a).unwrap();
        let err = run(&a).unwrap_err();
        assert_eq!(err.to_string(), "File config.json exists. Remove it first");
    }
}

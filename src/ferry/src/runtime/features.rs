//! `ferry features`: what this runtime supports, in the runtime-spec `features` document runc
//! prints (four-space indents).

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::{Error, Result};

/// Mount options libcontainer's mount code understands.
const MOUNT_OPTIONS: &[&str] = &[
    "acl",
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noacl",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

const SECCOMP_ARCHS: &[&str] = &["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"];

/// runc's `features.Features`, in runc's field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Features {
    oci_version_min: &'static str,
    oci_version_max: &'static str,
    hooks: &'static [&'static str],
    mount_options: &'static [&'static str],
    linux: Linux,
    annotations: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct Linux {
    namespaces: &'static [&'static str],
    capabilities: Vec<String>,
    cgroup: Cgroup,
    seccomp: Seccomp,
    apparmor: Enabled,
    selinux: Enabled,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cgroup {
    v1: bool,
    v2: bool,
    systemd: bool,
    systemd_user: bool,
}

#[derive(Serialize)]
struct Seccomp {
    enabled: bool,
    actions: &'static [&'static str],
    operators: &'static [&'static str],
    archs: &'static [&'static str],
}

#[derive(Serialize)]
struct Enabled {
    enabled: bool,
}

/// The features document.
fn features() -> Features {
    let mut caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    caps.sort();
    Features {
        oci_version_min: "1.0.0",
        oci_version_max: oci_spec::runtime::VERSION,
        hooks: &[
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ],
        mount_options: MOUNT_OPTIONS,
        linux: Linux {
            namespaces: &[
                "cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts",
            ],
            capabilities: caps,
            // libcontainer is built with its v1 and v2 cgroup managers, not systemd's.
            cgroup: Cgroup {
                v1: true,
                v2: true,
                systemd: false,
                systemd_user: false,
            },
            seccomp: Seccomp {
                enabled: true,
                actions: SECCOMP_ACTIONS,
                operators: SECCOMP_OPERATORS,
                archs: SECCOMP_ARCHS,
            },
            apparmor: Enabled { enabled: true },
            selinux: Enabled { enabled: false },
        },
        annotations: BTreeMap::from([
            ("io.github.ferry.checkpoint.engine", "not implemented yet"),
            ("io.github.ferry.version", env!("CARGO_PKG_VERSION")),
            ("org.opencontainers.runc.checkpoint.enabled", "false"),
        ]),
    }
}

/// The document as runc prints it: four-space indents, fields in runc's order.
fn render() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    features()
        .serialize(&mut ser)
        .map_err(Error::json("encode features"))?;
    buf.push(b'\n');
    Ok(buf)
}

/// Runs `ferry features`.
pub(super) fn run() -> Result<()> {
    let buf = render()?;
    std::io::stdout()
        .write_all(&buf)
        .map_err(Error::io("write features to", "stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn document_parses_as_oci_features() {
        let text = String::from_utf8(render().unwrap()).unwrap();
        assert!(text.starts_with("{\n    \"ociVersionMin\": \"1.0.0\",\n    \"ociVersionMax\""));
        let doc: Value = serde_json::from_str(&text).unwrap();
        let f: oci_spec::runtime::Features = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert!(doc["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(doc["linux"]["cgroup"]["systemd"], false);
    }
}

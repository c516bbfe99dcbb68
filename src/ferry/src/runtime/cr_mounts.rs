//! Which of the container's mounts are external to a checkpoint, by runc's convention (CRIU's
//! `--ext-mount-map`): the config's bind mounts keyed by their destination, masked files keyed
//! `/dev/null` (they are binds of it), the cgroup hierarchies bound into /sys/fs/cgroup keyed by
//! their mountpoint, and device nodes bound from the host's devtmpfs keyed by their path (a
//! container with its own user namespace cannot mknod, so the runtime binds /dev/null, /dev/zero
//! and the other config devices from the host, as runc does; runc names them to CRIU the same
//! way). Their contents belong to the host; restore takes them from the config.

use std::collections::BTreeMap;
use std::path::Path;

use super::cr_error::CrError;

/// Mountpoint (inside the container) -> external key.
pub fn external_mounts(pid: i32, config: &Path) -> Result<BTreeMap<String, String>, CrError> {
    let text = std::fs::read(config).map_err(CrError::io("read bundle config", config))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| CrError::Json {
            stage: format!("parse {}", config.display()),
            source,
        })?;
    let mut ext = from_spec(&spec, |p| {
        std::fs::metadata(format!("/proc/{pid}/root{p}"))
            .map(|m| !m.is_dir())
            .unwrap_or(false)
    });
    let mi = format!("/proc/{pid}/mountinfo");
    let info = std::fs::read_to_string(&mi).map_err(CrError::io("read", &mi))?;
    for mp in cgroup_binds(&info) {
        ext.insert(mp.clone(), mp);
    }
    for mp in device_binds(&info) {
        // A masked file bound from /dev/null keeps its own key.
        ext.entry(mp.clone()).or_insert(mp);
    }
    Ok(ext)
}

/// Bind mounts and masked files of an OCI config; `is_file` tells a masked file from a
/// masked directory (which is a fresh read-only tmpfs, not external).
pub fn from_spec(
    spec: &serde_json::Value,
    is_file: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let mut ext = BTreeMap::new();
    for m in spec["mounts"].as_array().into_iter().flatten() {
        let Some(dest) = m["destination"].as_str() else {
            continue;
        };
        let bind = m["type"].as_str() == Some("bind")
            || m["options"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| matches!(o.as_str(), Some("bind" | "rbind")));
        if bind {
            ext.insert(dest.to_string(), dest.to_string());
        }
    }
    for p in spec["linux"]["maskedPaths"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(p) = p.as_str().filter(|p| is_file(p)) {
            ext.insert(p.to_string(), "/dev/null".to_string());
        }
    }
    ext
}

/// Mountpoints of cgroup filesystems below /sys/fs/cgroup in a mountinfo text.
pub fn cgroup_binds(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            (matches!(fstype, "cgroup" | "cgroup2") && mp.starts_with("/sys/fs/cgroup"))
                .then(|| mp.replace("\\040", " "))
        })
        .collect()
}

/// Mountpoints under /dev of device nodes bound from a devtmpfs, in a mountinfo text.
pub fn device_binds(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut f = pre.split(' ');
            let root = f.nth(3)?;
            let mp = f.next()?;
            let fstype = post.split(' ').next()?;
            (fstype == "devtmpfs" && root != "/" && mp.starts_with("/dev/"))
                .then(|| mp.replace("\\040", " "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_masked_files_are_external() {
        let spec = serde_json::json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data"},
                {"destination": "/etc/hosts", "source": "/h", "options": ["rbind", "ro"]}
            ],
            "linux": {"maskedPaths": ["/proc/kcore", "/proc/acpi"]}
        });
        let ext = from_spec(&spec, |p| p == "/proc/kcore");
        assert_eq!(ext.get("/data").map(String::as_str), Some("/data"));
        assert_eq!(
            ext.get("/etc/hosts").map(String::as_str),
            Some("/etc/hosts")
        );
        assert_eq!(
            ext.get("/proc/kcore").map(String::as_str),
            Some("/dev/null")
        );
        assert!(!ext.contains_key("/proc/acpi"));
        assert!(!ext.contains_key("/proc"));
    }

    #[test]
    fn finds_cgroup_binds() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n\
                  31 30 0:27 /ferry /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
                  32 25 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(cgroup_binds(mi), vec!["/sys/fs/cgroup/pids".to_string()]);
    }

    #[test]
    fn finds_device_binds() {
        let mi = "84 80 0:41 / /dev rw - tmpfs tmpfs rw\n\
                  85 84 0:5 /zero /dev/zero rw - devtmpfs devtmpfs rw\n\
                  86 84 0:5 /null /dev/null rw - devtmpfs devtmpfs rw\n\
                  87 80 0:5 / /host-dev rw - devtmpfs devtmpfs rw\n";
        assert_eq!(device_binds(mi), ["/dev/zero", "/dev/null"]);
    }
}

//! The container's seccomp filter in `ferry exec`'d processes.
//!
//! runc loads the config's filter into every process it execs into a container, as into the
//! init. libcontainer 0.7's exec does not: the spec it builds for the new process keeps only the
//! namespaces, cgroups path, personality and time offsets of `linux`, so an exec'd process ran
//! unfiltered (`Seccomp: 0`) beside a filtered init. ferry's executor loads the filter instead,
//! as the last step before execve.
//!
//! The kernel installs a filter only for a task that has no_new_privs set or holds
//! CAP_SYS_ADMIN. With no_new_privs on, the process loads it after its capabilities were
//! dropped (runc's late path). With it off, runc loads it before dropping capabilities; here
//! libcontainer drops them before the executor runs, so the process is given CAP_SYS_ADMIN (and
//! CAP_SETPCAP, to shrink the bounding set afterwards) through libcontainer's drop, loads the
//! filter, then drops to its own capability sets with libcontainer's own drop. What reaches
//! execve holds the filter and exactly the capabilities it would have held without it.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, Process};
use serde_json::Value;

use super::{Error, Result};

/// What the executor of an exec'd process applies just before execve.
#[derive(Clone, Debug)]
pub struct ExecSeccomp {
    /// The container's filter.
    profile: LinuxSeccomp,
    /// The process's own capability sets, set once the filter is in; `None` when they were not
    /// widened for the load.
    caps_after: Option<LinuxCapabilities>,
}

/// The two capabilities the load and the later drop need.
const LOAD_CAPS: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// The filter the exec'd `process` must get from `config` (the container's config.json), or
/// `None` when the container has none. Widens `process`'s capabilities for the load where
/// no_new_privs is off (see the module doc).
pub(super) fn prepare(config: &Value, process: &mut Process) -> Result<Option<ExecSeccomp>> {
    let Some(profile) = config
        .get("linux")
        .and_then(|l| l.get("seccomp"))
        .filter(|s| !s.is_null())
    else {
        return Ok(None);
    };
    let profile: LinuxSeccomp = serde_json::from_value(profile.clone())
        .map_err(Error::json("parse the container's linux.seccomp for exec"))?;
    if libcontainer::seccomp::is_notify(&profile) {
        return Err(Error::Unsupported(
            "exec into a container whose seccomp profile uses SCMP_ACT_NOTIFY: the exec'd \
             process cannot hand its listener fd to the container's seccomp agent in this build"
                .to_string(),
        ));
    }
    let nnp = process.no_new_privileges() == Some(true);
    let caps_after = match process.capabilities().clone() {
        // no_new_privs allows the load; without capability sets nothing is dropped at all.
        _ if nnp => None,
        None => None,
        Some(own) => {
            process.set_capabilities(Some(widened(&own)));
            Some(own)
        }
    };
    Ok(Some(ExecSeccomp {
        profile,
        caps_after,
    }))
}

/// `own` with the load capabilities added to the sets libcontainer's drop leaves them in:
/// bounding (an absent one is dropped to empty), effective and permitted (an absent one is
/// left as it is, full).
fn widened(own: &LinuxCapabilities) -> LinuxCapabilities {
    let add = |set: &Option<Capabilities>| {
        set.clone().map(|mut s| {
            s.extend(LOAD_CAPS);
            s
        })
    };
    let mut w = own.clone();
    let mut bounding = own.bounding().clone().unwrap_or_default();
    bounding.extend(LOAD_CAPS);
    w.set_bounding(Some(bounding));
    w.set_effective(add(own.effective()));
    w.set_permitted(add(own.permitted()));
    w
}

impl ExecSeccomp {
    /// Loads the filter, then drops to the process's own capabilities. Runs in the exec'd
    /// process, inside the container, right before execve.
    pub fn apply(&self) -> std::result::Result<(), String> {
        libcontainer::seccomp::initialize_seccomp(&self.profile).map_err(|e| {
            format!("load the container's seccomp filter into the exec'd process: {e}")
        })?;
        if let Some(caps) = &self.caps_after {
            let sys = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, sys.as_ref()).map_err(|e| {
                format!("drop the exec'd process to its capabilities after the seccomp load: {e}")
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}}})
    }

    fn process(v: Value) -> Process {
        serde_json::from_value(v).unwrap()
    }

    fn caps(v: &[&str]) -> Value {
        json!({"bounding": v, "effective": v, "permitted": v})
    }

    #[test]
    fn no_profile_no_filter() {
        let mut p = process(json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}));
        assert!(prepare(&json!({"linux": {}}), &mut p).unwrap().is_none());
        assert!(prepare(&json!({"linux": {"seccomp": null}}), &mut p)
            .unwrap()
            .is_none());
    }

    #[test]
    fn without_no_new_privs_caps_are_widened_then_given_back() {
        let own = caps(&["CAP_KILL"]);
        let mut p = process(json!({"cwd": "/", "user": {"uid": 0, "gid": 0},
            "capabilities": own.clone()}));
        let s = prepare(&config(), &mut p).unwrap().expect("a filter");
        let w = p.capabilities().clone().unwrap();
        for set in [w.bounding(), w.effective(), w.permitted()] {
            let set = set.clone().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Kill));
            assert!(set.contains(&Capability::Setpcap));
        }
        let after: LinuxCapabilities = serde_json::from_value(own).unwrap();
        assert_eq!(s.caps_after, Some(after));
    }

    #[test]
    fn with_no_new_privs_caps_stay() {
        let mut p = process(json!({"cwd": "/", "user": {"uid": 0, "gid": 0},
            "capabilities": caps(&["CAP_KILL"]), "noNewPrivileges": true}));
        let before = p.capabilities().clone();
        let s = prepare(&config(), &mut p).unwrap().expect("a filter");
        assert_eq!(p.capabilities(), &before);
        assert!(s.caps_after.is_none());
    }

    #[test]
    fn notify_profiles_are_refused_by_name() {
        let mut p = process(json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}));
        let c = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}}});
        let e = prepare(&c, &mut p).unwrap_err().to_string();
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    }
}

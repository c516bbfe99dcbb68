//! Restore half: the tree's own pid namespace.
//!
//! [`NsMode::NewNs`]: ferry, on the host, forks the root with `clone3(CLONE_NEWPID)`; the root
//! is PID 1 of the new namespace and forks its children with their namespace pids. The
//! coordinator keeps working with host pids: each task records the pid /proc shows for it
//! (`/proc/self`, resolved in the namespace /proc was mounted in), and once every thread exists
//! [`host_tids`] reads `NSpid` to find the host tid of each namespace tid for the ptrace stage.

use std::collections::HashMap;

use super::PidNsError;

/// Where the tree's pids live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsMode {
    /// ferry's own pid namespace: the images' pids are host pids.
    Host,
    /// A new pid namespace made by ferry, the root forked as its PID 1.
    NewNs,
    /// The calling process is PID 1 of a fresh pid namespace and becomes the root.
    InPlace,
}

/// Forks the init of a new pid namespace (like fork(): 0 in the child, which is PID 1 there;
/// the host pid in the parent).
pub fn fork_ns_init() -> Result<u32, PidNsError> {
    crate::pstree::restore::clone3_fork(libc::CLONE_NEWPID as u64, None).map_err(PidNsError::Clone)
}

/// The calling process's pid as /proc shows it (the coordinator's view), `getpid()` if /proc
/// cannot tell.
pub fn proc_self_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// Namespace tid -> /proc (host) tid for every thread of the task /proc shows as `pid`.
pub fn host_tids(pid: u32, out: &mut HashMap<u32, u32>) -> Result<(), PidNsError> {
    let dir = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&dir).map_err(|source| PidNsError::Proc {
        pid: pid as i32,
        path: dir.clone(),
        source,
    })?;
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let path = format!("{dir}/{tid}/status");
        let text = std::fs::read_to_string(&path).map_err(|source| PidNsError::Proc {
            pid: pid as i32,
            path: path.clone(),
            source,
        })?;
        let ns = text
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last()?.parse::<u32>().ok())
            .ok_or(PidNsError::NoField {
                pid: pid as i32,
                path,
                field: "NSpid",
            })?;
        out.insert(ns, tid);
    }
    Ok(())
}

/// Image (namespace) tid -> /proc tid for every thread of the process /proc shows as `init`
/// and of all its descendants: how a process outside the namespace finds a tree restored in
/// place (its init's /proc pid is all it knows).
pub fn tids_below(init: u32) -> Result<HashMap<u32, u32>, PidNsError> {
    let mut out = HashMap::new();
    let mut todo = vec![init];
    while let Some(pid) = todo.pop() {
        host_tids(pid, &mut out)?;
        let dir = format!("/proc/{pid}/task");
        let rd = std::fs::read_dir(&dir).map_err(|source| PidNsError::Proc {
            pid: pid as i32,
            path: dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let path = e.path().join("children");
            let kids = std::fs::read_to_string(&path).map_err(|source| PidNsError::Proc {
                pid: pid as i32,
                path: path.display().to_string(),
                source,
            })?;
            todo.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
    }
    Ok(out)
}

/// Which namespace the tree of images whose root is `root_pid` goes to: a root with pid 1 was
/// the init of its own pid namespace; `in_place` asks for the caller's namespace.
pub fn mode(root_pid: u32, in_place: bool) -> Result<NsMode, PidNsError> {
    match (root_pid, in_place) {
        (1, false) => Ok(NsMode::NewNs),
        (1, true) => {
            // SAFETY: getpid has no arguments.
            let me = unsafe { libc::getpid() };
            if me != 1 {
                return Err(PidNsError::Unsupported {
                    pid: me,
                    what:
                        "an in-place restore from a process that is not PID 1 of its pid namespace"
                            .into(),
                });
            }
            Ok(NsMode::InPlace)
        }
        (p, true) => Err(PidNsError::Unsupported {
            pid: p as i32,
            what: "an in-place restore of a tree whose root was not a pid namespace init".into(),
        }),
        _ => Ok(NsMode::Host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_from_root_pid() {
        assert_eq!(mode(1, false).unwrap(), NsMode::NewNs);
        assert_eq!(mode(4242, false).unwrap(), NsMode::Host);
        let e = mode(4242, true).unwrap_err().to_string();
        assert!(e.contains("root was not a pid namespace init"), "{e}");
        // The test process is not PID 1 of its namespace.
        let e = mode(1, true).unwrap_err().to_string();
        assert!(e.contains("not PID 1"), "{e}");
    }

    #[test]
    fn tids_below_finds_a_child() {
        let mut c = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let me = proc_self_pid();
        let m = tids_below(me).unwrap();
        let _ = c.kill();
        let _ = c.wait();
        assert_eq!(m.get(&me), Some(&me));
        assert_eq!(m.get(&c.id()), Some(&c.id()));
    }

    #[test]
    fn own_tids_map_to_themselves() {
        let me = proc_self_pid();
        let mut m = HashMap::new();
        host_tids(me, &mut m).unwrap();
        assert_eq!(m.get(&me), Some(&me));
    }
}

//! Dump half: the pids a tree sees inside its pid namespace.
//!
//! The tree is frozen and walked with host pids; this stage reads `NSpid`/`NSpgid`/`NSsid` of
//! every task and `NSpid` of every thread, checks the tree is in one pid namespace whose init is
//! the root (CRIU cannot dump a pid namespace without its init either), and hands the dump a
//! host -> namespace translation for pstree.img, image names and pid-valued fields.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use ferry_images::pb;

use super::PidNsError;
use crate::freeze::FrozenTree;

/// Host pid -> pid inside the tree's namespace (identity for a tree in ferry's own namespace).
#[derive(Debug, Clone, Default)]
pub struct PidMap {
    map: HashMap<i32, i32>,
    /// The root is the init of a child pid namespace.
    pub child_ns: bool,
}

impl PidMap {
    /// The namespace pid of host pid `host` (itself when not translated).
    pub fn ns(&self, host: i32) -> i32 {
        self.map.get(&host).copied().unwrap_or(host)
    }
}

/// The namespace lines of one /proc/.../status.
struct NsLines {
    pid: Vec<i32>,
    pgid: Vec<i32>,
    sid: Vec<i32>,
}

fn parse_list(v: &str) -> Vec<i32> {
    v.split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

fn read_status(pid: i32, path: &str) -> Result<NsLines, PidNsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PidNsError::Proc {
        pid,
        path: path.into(),
        source,
    })?;
    let mut l = NsLines {
        pid: Vec::new(),
        pgid: Vec::new(),
        sid: Vec::new(),
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("NSpid:") {
            l.pid = parse_list(v);
        } else if let Some(v) = line.strip_prefix("NSpgid:") {
            l.pgid = parse_list(v);
        } else if let Some(v) = line.strip_prefix("NSsid:") {
            l.sid = parse_list(v);
        }
    }
    if l.pid.is_empty() {
        return Err(PidNsError::NoField {
            pid,
            path: path.into(),
            field: "NSpid",
        });
    }
    Ok(l)
}

fn ns_ino(pid: i32, name: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// Reads the namespace pids of the frozen tree and checks its shape.
pub fn collect(tree: &FrozenTree) -> Result<PidMap, PidNsError> {
    let root = &tree.tasks[0];
    let rpid = root.ids.pid;
    let rl = read_status(rpid, &format!("/proc/{rpid}/status"))?;
    let levels = rl.pid.len();
    if levels > 2 {
        return Err(PidNsError::Unsupported {
            pid: rpid,
            what: format!(
                "a root in a nested pid namespace ({} levels below ferry's)",
                levels - 1
            ),
        });
    }
    let child_ns = levels == 2;
    if child_ns && rl.pid[1] != 1 {
        return Err(PidNsError::Unsupported {
            pid: rpid,
            what: format!(
                "a tree in a child pid namespace whose root is not the namespace's init (it is pid {} there); dump from the init",
                rl.pid[1]
            ),
        });
    }
    let root_ns = ns_ino(rpid, "pid");
    let mut map = HashMap::new();
    for t in &tree.tasks {
        let pid = t.ids.pid;
        let l = if pid == rpid {
            NsLines {
                pid: rl.pid.clone(),
                pgid: rl.pgid.clone(),
                sid: rl.sid.clone(),
            }
        } else {
            read_status(pid, &format!("/proc/{pid}/status"))?
        };
        if l.pid.len() != levels {
            return Err(PidNsError::Unsupported {
                pid,
                what: format!(
                    "a task {} pid namespace levels deep in a tree whose root is {} deep (nested or different pid namespaces)",
                    l.pid.len(),
                    levels
                ),
            });
        }
        if t.zombie.is_none() {
            if ns_ino(pid, "pid") != root_ns {
                return Err(PidNsError::Unsupported {
                    pid,
                    what: "a task in another pid namespace than the root's".into(),
                });
            }
            let kids = ns_ino(pid, "pid_for_children");
            if kids.is_some() && kids != root_ns {
                return Err(PidNsError::Unsupported {
                    pid,
                    what: "a task that unshared a nested pid namespace for its children".into(),
                });
            }
        }
        let last = |v: &[i32]| v.last().copied();
        map.insert(pid, *l.pid.last().unwrap_or(&pid));
        for (what, host, ns) in [
            ("process group", t.ids.pgid, last(&l.pgid)),
            ("session", t.ids.sid, last(&l.sid)),
        ] {
            match ns {
                Some(0) if child_ns => {
                    return Err(PidNsError::Unsupported {
                        pid,
                        what: format!("a {what} ({host}) led from outside the pid namespace"),
                    })
                }
                Some(n) if n > 0 => {
                    map.insert(host, n);
                }
                _ => {}
            }
        }
        for th in t.threads.iter().skip(1) {
            let path = format!("/proc/{pid}/task/{}/status", th.tid);
            let tl = read_status(pid, &path)?;
            map.insert(th.tid, *tl.pid.last().unwrap_or(&th.tid));
        }
    }
    Ok(PidMap { map, child_ns })
}

/// Rewrites the pid-valued fields of one task's images into namespace pids: the thread ids
/// (image names) and the notification threads of posix timers.
pub fn translate_cores(cores: &mut [(i32, pb::CoreEntry)], map: &PidMap) {
    for (tid, core) in cores.iter_mut() {
        *tid = map.ns(*tid);
        let timers = core.tc.as_mut().and_then(|tc| tc.timers.as_mut());
        for p in timers.into_iter().flat_map(|t| t.posix.iter_mut()) {
            if let Some(n) = p.notify_thread_id.as_mut() {
                *n = map.ns(*n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("\t4711\t1"), vec![4711, 1]);
        assert_eq!(parse_list(" 12"), vec![12]);
        let m = PidMap {
            map: HashMap::from([(4711, 1)]),
            child_ns: true,
        };
        assert_eq!((m.ns(4711), m.ns(5)), (1, 5));
    }
}

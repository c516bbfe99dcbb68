//! Dump half: pstree.img from the frozen tree.
//!
//! Kernel mechanism: the tree was walked through /proc/PID/task/TID/children while freezing;
//! pgid and sid come from /proc/PID/stat, threads from /proc/PID/task. CRIU writes one entry per
//! task, parents before children, the root with ppid 0.

use ferry_images::pb;

use crate::freeze::FrozenTree;
use crate::pidns::dump::PidMap;

/// pstree.img entries in tree order, with the pids the tree sees (`ns`: host -> namespace).
pub fn entries(tree: &FrozenTree, ns: &PidMap) -> Vec<pb::PstreeEntry> {
    let n = |host: i32| ns.ns(host) as u32;
    tree.tasks
        .iter()
        .map(|t| pb::PstreeEntry {
            pid: n(t.ids.pid),
            ppid: if t.ids.ppid == 0 { 0 } else { n(t.ids.ppid) },
            pgid: n(t.ids.pgid),
            sid: n(t.ids.sid),
            threads: if t.threads.is_empty() {
                vec![n(t.ids.pid)]
            } else {
                t.threads.iter().map(|th| n(th.tid)).collect()
            },
        })
        .collect()
}

/// Checks that every process group and session the tree uses is led by a task inside it, or
/// is the root's own (inherited from outside, as with a shell job).
pub fn check_groups(tree: &FrozenTree) -> Result<(), String> {
    let root = &tree.tasks[0].ids;
    for t in &tree.tasks {
        for (what, id, root_id) in [
            ("session", t.ids.sid, root.sid),
            ("process group", t.ids.pgid, root.pgid),
        ] {
            if id != root_id && !tree.tasks.iter().any(|o| o.ids.pid == id) {
                return Err(format!(
                    "task {}: {what} {id} is led by a task outside the dumped tree",
                    t.ids.pid
                ));
            }
        }
    }
    Ok(())
}

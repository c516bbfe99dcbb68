//! Dump half: pstree.img from the frozen tree.
//!
//! Kernel mechanism: the tree was walked through /proc/PID/task/TID/children while freezing;
//! pgid and sid come from /proc/PID/stat, threads from /proc/PID/task. CRIU writes one entry per
//! task, parents before children, the root with ppid 0.

use ferry_images::pb;

use crate::freeze::FrozenTree;

/// pstree.img entries in tree order.
pub fn entries(tree: &FrozenTree) -> Vec<pb::PstreeEntry> {
    tree.tasks
        .iter()
        .map(|t| pb::PstreeEntry {
            pid: t.ids.pid as u32,
            ppid: t.ids.ppid as u32,
            pgid: t.ids.pgid as u32,
            sid: t.ids.sid as u32,
            threads: if t.threads.is_empty() {
                vec![t.ids.pid as u32]
            } else {
                t.threads.iter().map(|th| th.tid as u32).collect()
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

//! The network lock: an nftables table that drops a namespace's traffic while it is dumped
//! or restored (the ruleset is `hooks/network-lock.nft`).

use std::fs::File;

use super::{open_netns, run_tool, with_netns, NetError};

const RULESET: &str = include_str!("../../../../hooks/network-lock.nft");

/// A held lock; unlocked by [`NetLock::unlock`] or, failing that, on drop.
#[derive(Debug)]
pub struct NetLock {
    ns: File,
    table: String,
    held: bool,
}

/// Locks the network namespace of task `pid` with table `inet ferry-TAG`.
///
/// The lock holds the namespace file open, so unlock works even after the task is gone
/// while the namespace lives (and a namespace that died took its table with it).
pub fn lock_network(pid: i32, tag: &str) -> Result<NetLock, NetError> {
    if tag.is_empty()
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NetError::Unsupported {
            stage: "lock",
            pid,
            what: format!("lock tag {tag:?}: use letters, digits, '-' and '_'"),
        });
    }
    let ns = open_netns(pid)?;
    let table = format!("ferry-{tag}");
    let rules: String = RULESET
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.replace("@TABLE@", &table)))
        .collect();
    let what = format!("task {pid} table inet {table}");
    with_netns(&ns, &what, || {
        run_tool("lock", &what, &["nft", "-f", "-"], None, None, Some(&rules))
    })??;
    Ok(NetLock {
        ns,
        table,
        held: true,
    })
}

impl NetLock {
    /// The nftables table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn remove(&mut self) -> Result<(), NetError> {
        if !self.held {
            return Ok(());
        }
        self.held = false;
        let what = format!("table inet {}", self.table);
        let table = self.table.clone();
        with_netns(&self.ns, &what, || {
            run_tool(
                "unlock",
                &what,
                &["nft", "delete", "table", "inet", &table],
                None,
                None,
                None,
            )
        })?
    }

    /// Removes the table: traffic flows again.
    pub fn unlock(mut self) -> Result<(), NetError> {
        self.remove()
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "network unlock on drop failed");
        }
    }
}

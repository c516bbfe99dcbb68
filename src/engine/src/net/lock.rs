//! The network lock: an nftables table that drops a namespace's traffic while it is dumped
//! or restored.
//!
//! The table is the ruleset of `hooks/network-lock.nft` (a test checks that `nft` lists the
//! same table for both), made and removed over nfnetlink ([`super::nftables`]) in one
//! transaction each: no `nft` process, so locking takes a fraction of a millisecond and
//! traffic flows again as soon as the kernel acknowledges the removal. Like CRIU's nftables
//! lock, one table per namespace drops every packet in and out except those carrying the
//! TCP-repair mark that restore uses to re-sync sockets.

use super::nftables::Nft;
use super::{open_netns, with_netns, NetError};

/// The mark of packets the lock lets through: CRIU's `SOCCR_MARK`.
pub const LOCK_MARK: u32 = 0xc114;

/// A held lock; unlocked by [`NetLock::unlock`] or, failing that, on drop.
#[derive(Debug)]
pub struct NetLock {
    /// The socket that made the table: it works on the namespace it was made in and keeps
    /// that namespace alive, so unlock works even after the task is gone. None once unlocked.
    nft: Option<Nft>,
    table: String,
}

/// Locks the network namespace of task `pid` with table `inet ferry-TAG`. A table of that
/// name already there is an error (another lock holds the namespace).
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
    let what = format!("task {pid} table inet {table}");
    let sys = |call, source| NetError::Sys {
        stage: "lock",
        what: what.clone(),
        call,
        source,
    };
    let nft = with_netns(&ns, &what, || -> Result<Nft, NetError> {
        let mut nft = Nft::open().map_err(|e| sys("socket(NETLINK_NETFILTER)", e))?;
        nft.lock_table(&table, LOCK_MARK)
            .map_err(|e| sys("nftables transaction (table, chains, rules)", e))?;
        Ok(nft)
    })??;
    Ok(NetLock {
        nft: Some(nft),
        table,
    })
}

impl NetLock {
    /// The nftables table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn remove(&mut self) -> Result<(), NetError> {
        let Some(mut nft) = self.nft.take() else {
            return Ok(());
        };
        let r = nft
            .delete_table(&self.table)
            .map_err(|source| NetError::Sys {
                stage: "unlock",
                what: format!("table inet {}", self.table),
                call: "nftables transaction (delete table)",
                source,
            });
        // Traffic flows from the acknowledgement on; closing the socket then waits for the
        // kernel to free the table after an RCU grace period, which belongs to this stage.
        drop(nft);
        r
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

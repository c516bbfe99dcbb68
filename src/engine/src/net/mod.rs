//! Network namespace: links, addresses, routes, and the network lock.
//!
//! Links are read and recreated over rtnetlink ([`netlink`]) from a helper thread that has
//! entered the namespace: a netlink socket talks to the namespace it was opened in. Each link
//! becomes a CRIU `net_device_entry` in `netdev-ID.img`: loopback is configured in place,
//! a veth is recreated with its index, name, MTU and MAC, its peer put into a namespace the
//! caller names (the outside end, like CRIU's `--external veth[...]`). Addresses and routes
//! are stored as CRIU does, as iproute2's binary dumps (`ip addr save` -> `ifaddr-ID.img`,
//! `ip -4/-6 route save table all` -> `route-ID.img`/`route6-ID.img`), replayed with
//! `ip addr restore` / `ip route restore` run from the helper thread, so inside the namespace.
//!
//! The network lock ([`lock`]) is an nftables table per namespace whose input and output
//! chains drop everything but TCP-repair packets; it holds connections still while a dump
//! or restore runs, and is removed on unlock, on drop, on every error path. It is made over
//! nfnetlink ([`nftables`]), not by running `nft`.

pub mod dump;
pub mod lock;
pub mod netlink;
pub mod nftables;
pub mod restore;

pub use dump::dump_net;
pub use lock::{lock_network, NetLock};
pub use restore::{restore_net, NetRestoreOpts, VethPeer};

use std::fs::File;
use std::os::fd::AsFd;

/// `nd_type` values of `net_device_entry`.
pub mod nd_type {
    /// Loopback.
    pub const LOOPBACK: i32 = 1;
    /// veth.
    pub const VETH: i32 = 2;
}

/// Image names of network namespace `ns_id`: netdev, ifaddr, route, route6.
pub fn image_names(ns_id: u32) -> [String; 4] {
    [
        format!("netdev-{ns_id}.img"),
        format!("ifaddr-{ns_id}.img"),
        format!("route-{ns_id}.img"),
        format!("route6-{ns_id}.img"),
    ]
}

/// Runs `f` on a thread that has entered the network namespace `ns` (an open nsfs file).
pub fn with_netns<T: Send>(
    ns: &File,
    what: &str,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetError::Sys {
                    stage: "enter",
                    what: what.to_string(),
                    call: "setns(CLONE_NEWNET)",
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetError::Sys {
            stage: "enter",
            what: what.to_string(),
            call: "helper thread",
            source: std::io::Error::other("panicked"),
        })?
    })
}

/// Opens `/proc/PID/ns/net`.
pub fn open_netns(pid: i32) -> Result<File, NetError> {
    let p = format!("/proc/{pid}/ns/net");
    File::open(&p).map_err(|source| NetError::Sys {
        stage: "enter",
        what: format!("task {pid}"),
        call: "open /proc/PID/ns/net",
        source,
    })
}

/// Errors of the net module.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Entering a namespace failed.
    #[error("net {stage}: {source}")]
    Enter {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: crate::uts::enter::EnterError,
    },
    /// A system or netlink call failed.
    #[error("net {stage}: {what}: {call}: {source}")]
    Sys {
        /// Stage.
        stage: &'static str,
        /// Task, link or table concerned.
        what: String,
        /// The call.
        call: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// An external tool (ip, nft) failed.
    #[error("net {stage}: {what}: `{cmd}` failed ({status}): {stderr}")]
    Tool {
        /// Stage.
        stage: &'static str,
        /// Task or link.
        what: String,
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// Image I/O.
    #[error("net {stage}: image {file}: {source}")]
    Image {
        /// Stage.
        stage: &'static str,
        /// File.
        file: String,
        /// Cause.
        source: ferry_images::dir::DirError,
    },
    /// A link or setting ferry cannot dump or restore yet.
    #[error("net {stage} of task {pid}: unsupported: {what}")]
    Unsupported {
        /// Stage.
        stage: &'static str,
        /// Task.
        pid: i32,
        /// What.
        what: String,
    },
}

/// Runs an iproute2/nft command (in the calling thread's namespaces), feeding `stdin` and
/// sending stdout to `stdout`.
pub(crate) fn run_tool(
    stage: &'static str,
    what: &str,
    args: &[&str],
    stdin: Option<File>,
    stdout: Option<File>,
    input: Option<&str>,
) -> Result<(), NetError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cmd = args.join(" ");
    let mut c = Command::new(args[0]);
    c.args(&args[1..]).stderr(Stdio::piped());
    c.stdin(match (stdin, input) {
        (Some(f), _) => Stdio::from(f),
        (None, Some(_)) => Stdio::piped(),
        (None, None) => Stdio::null(),
    });
    c.stdout(stdout.map_or(Stdio::null(), Stdio::from));
    let sys = |source| NetError::Sys {
        stage,
        what: what.to_string(),
        call: "spawn",
        source,
    };
    let mut child = c.spawn().map_err(sys)?;
    if let (Some(text), Some(mut si)) = (input, child.stdin.take()) {
        si.write_all(text.as_bytes()).map_err(sys)?;
    }
    let out = child.wait_with_output().map_err(sys)?;
    if !out.status.success() {
        return Err(NetError::Tool {
            stage,
            what: what.to_string(),
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

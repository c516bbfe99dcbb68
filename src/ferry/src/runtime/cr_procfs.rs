//! A writable /proc for the in-place restore, and the container's own /proc back afterwards.
//!
//! The engine's in-place restore writes `/proc/sys/kernel/ns_last_pid` (to keep its helpers'
//! pids off the tree's), but an OCI container's /proc/sys is a read-only bind (`readonlyPaths`)
//! and some /proc files are masked. The restoring init therefore mounts a fresh procfs of its
//! pid namespace on top of /proc ([`stack_fresh_proc`]); once the engine reports the tree
//! running, ferry unmounts that top mount from outside ([`unstack`]), revealing the container's
//! protected /proc again. Until then (the time between the tree's release and ferry reading the
//! report) the tree sees an unprotected /proc: the engine change that removes the window is to
//! fork its helpers with clone3(set_tid) instead of writing ns_last_pid.

use super::cr_error::CrError;

/// In the restoring init: stacks a fresh procfs on /proc when ns_last_pid is not writable.
pub fn stack_fresh_proc() -> Result<bool, String> {
    use nix::unistd::{access, AccessFlags};
    if access("/proc/sys/kernel/ns_last_pid", AccessFlags::W_OK).is_ok() {
        return Ok(false);
    }
    nix::mount::mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount a fresh /proc for the restore: {e}"))?;
    Ok(true)
}

/// The number of procfs mounts on /proc in `mountinfo` (mountpoints as the task sees them).
pub fn proc_mounts_on_proc(mountinfo: &str) -> usize {
    mountinfo
        .lines()
        .filter(|l| {
            let Some((pre, post)) = l.split_once(" - ") else {
                return false;
            };
            pre.split(' ').nth(4) == Some("/proc") && post.split(' ').next() == Some("proc")
        })
        .count()
}

/// From ferry: unmounts the fresh /proc the restoring init stacked, if it did.
pub fn unstack(pid: i32) -> Result<(), CrError> {
    let mi = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&mi).map_err(CrError::io("read", &mi))?;
    if proc_mounts_on_proc(&text) < 2 {
        return Ok(());
    }
    use ferry_engine::uts::enter::{in_namespaces, Ns};
    let r = in_namespaces(pid, &[Ns::Mnt], || {
        nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH)
    })
    .map_err(|e| CrError::unsupported("restore", format!("enter the container's mounts: {e}")))?;
    r.map_err(|e| CrError::io("unmount the restore's /proc", "/proc")(std::io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stacked_proc() {
        let mi = "1 0 0:1 / / rw - ext4 /dev/sda rw\n\
                  2 1 0:5 / /proc rw - proc proc rw\n\
                  3 2 0:5 /sys /proc/sys ro - proc proc rw\n\
                  4 2 0:9 / /proc rw - proc proc rw\n";
        assert_eq!(proc_mounts_on_proc(mi), 2);
    }
}

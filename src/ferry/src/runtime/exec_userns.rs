//! `ferry exec` into a container that has its own user namespace.
//!
//! runc's exec joins every namespace of the container's init, the user namespace first, then
//! takes the process's uid and gid as ids inside it. libcontainer 0.7's tenant builder joins
//! only ipc, uts, net, pid, mnt, cgroup and time: the exec'd process stayed in the host's user
//! namespace, host root in the container's other namespaces, its `--user` a host id.
//!
//! The kernel lets a task join a user namespace (setns CLONE_NEWUSER) only while it is single
//! threaded, shares no fs_struct, and holds CAP_SYS_ADMIN over the target; the joiner then
//! holds a full capability set there. The process libcontainer forks for an exec is such a
//! task up to the executor, as long as it is still host root with its capabilities. So
//! libcontainer is handed the process as host root (uid/gid 0, no supplementary groups, no
//! capability drop), and ferry's executor, the last step before execve, joins the init's user
//! namespace through an fd opened by ferry, sets the process's groups, gid and uid (ids
//! inside), drops to its capability sets, and then (exec_seccomp.rs) loads the seccomp filter.
//! Stdio ptys libcontainer made for `-t` belong to host root; like runc's
//! fixStdioPermissions they are handed to the process's uid first, while ferry may still chown.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, Process, UserBuilder};
use serde_json::Value;

use super::{Error, Result};

/// One line of a uid_map or gid_map: `inside outside count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    inside: u32,
    outside: u32,
    count: u32,
}

/// What the executor of an exec'd process does to enter the container's user namespace.
#[derive(Clone, Debug)]
pub struct ExecUserns {
    /// The init's user namespace, open in ferry (O_CLOEXEC), inherited by the exec'd process.
    ns_fd: RawFd,
    /// The process's uid, gid and supplementary groups, ids inside the namespace.
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// The process's capability sets (as exec_seccomp.rs left them), or `None` for no drop.
    caps: Option<LinuxCapabilities>,
    /// Whether HOME is to be looked up for `uid` (libcontainer looked it up for uid 0).
    home_from_passwd: bool,
    /// The namespace's uid_map, to hand stdio ptys to the process's uid before the join.
    uid_map: Vec<Extent>,
}

/// Whether `config` (the container's config.json) gives the container a user namespace.
pub(super) fn has_userns(config: &Value) -> bool {
    config
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|nss| nss.iter().any(|ns| ns["type"] == "user"))
}

/// Parses a /proc/PID/uid_map or gid_map.
fn parse_map(text: &str) -> Option<Vec<Extent>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some(Extent {
                inside: f.next()??,
                outside: f.next()??,
                count: f.next()??,
            })
        })
        .collect()
}

/// `id` (inside) as the host sees it, if `map` maps it.
fn to_host(map: &[Extent], id: u32) -> Option<u32> {
    map.iter().find_map(|e| {
        let off = id.checked_sub(e.inside)?;
        (off < e.count).then(|| e.outside + off)
    })
}

/// For a container with its own user namespace, opens the user namespace of its init `pid`
/// and takes the user and capabilities out of `process` (left as host root for libcontainer);
/// `None` for a container in ferry's own user namespace. The fd is to be kept open until
/// libcontainer's build returns.
pub(super) fn prepare(
    config: &Value,
    pid: i32,
    process: &mut Process,
) -> Result<Option<(ExecUserns, OwnedFd)>> {
    if !has_userns(config) {
        return Ok(None);
    }
    let path = format!("/proc/{pid}/ns/user");
    let ours = std::fs::metadata("/proc/self/ns/user").map_err(Error::io(
        "stat ferry's user namespace",
        "/proc/self/ns/user",
    ))?;
    let theirs = std::fs::metadata(&path)
        .map_err(Error::io("stat the container init's user namespace", &path))?;
    if std::os::unix::fs::MetadataExt::ino(&ours) == std::os::unix::fs::MetadataExt::ino(&theirs) {
        return Ok(None);
    }
    let fd = open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open the container init's user namespace", &path)(e.into()))?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let map_path = format!("/proc/{pid}/uid_map");
    let text = std::fs::read_to_string(&map_path)
        .map_err(Error::io("read the container init's uid_map", &map_path))?;
    let uid_map = parse_map(&text)
        .ok_or_else(|| Error::Unsupported(format!("exec: cannot parse {map_path}: {text:?}")))?;

    let mut userns = take_user(process)?;
    userns.ns_fd = fd.as_raw_fd();
    userns.uid_map = uid_map;
    Ok(Some((userns, fd)))
}

/// Takes the user and capabilities out of `process`, leaving host root (uid/gid 0, no
/// supplementary groups, its umask) with no capability drop for libcontainer to set up.
fn take_user(process: &mut Process) -> Result<ExecUserns> {
    let user = process.user().clone();
    let home_set = process
        .env()
        .iter()
        .flatten()
        .any(|kv| kv.strip_prefix("HOME=").is_some_and(|v| !v.is_empty()));
    let taken = ExecUserns {
        ns_fd: -1,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        caps: process.capabilities().clone(),
        home_from_passwd: !home_set && user.uid() != 0,
        uid_map: Vec::new(),
    };
    let mut root = UserBuilder::default().uid(0u32).gid(0u32);
    if let Some(umask) = user.umask() {
        root = root.umask(umask);
    }
    process.set_user(root.build().map_err(|e| {
        Error::Unsupported(format!("exec: build the process's host-root user: {e}"))
    })?);
    process.set_capabilities(None);
    Ok(taken)
}

/// What can go wrong entering the namespace, by step.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// setns(CLONE_NEWUSER) refused.
    #[error("join the container's user namespace (setns fd {fd}): {errno}")]
    Join {
        /// the namespace fd
        fd: RawFd,
        /// the kernel's answer
        errno: nix::errno::Errno,
    },
    /// setgroups refused.
    #[error("set supplementary groups {groups:?} inside the container's user namespace: {source}")]
    Groups {
        /// the groups
        groups: Vec<u32>,
        /// the kernel's answer
        source: libcontainer::syscall::SyscallError,
    },
    /// setresgid/setresuid refused (an id the namespace does not map, usually).
    #[error("set uid {uid} gid {gid} inside the container's user namespace (are they mapped?): {source}")]
    Ids {
        /// the uid
        uid: u32,
        /// the gid
        gid: u32,
        /// the kernel's answer
        source: libcontainer::syscall::SyscallError,
    },
    /// The capability drop failed.
    #[error("drop the exec'd process to its capabilities in the container's user namespace: {0}")]
    Caps(libcontainer::syscall::SyscallError),
}

impl ExecUserns {
    /// Enters the namespace and becomes the process's user. Runs in the exec'd process,
    /// inside the container's other namespaces, right before the seccomp load and execve.
    pub fn apply(&self) -> std::result::Result<(), UsernsError> {
        self.fix_stdio_owner();
        // SAFETY: setns on an fd ferry opened on a namespace file; no memory is involved.
        let rc = unsafe { libc::setns(self.ns_fd, libc::CLONE_NEWUSER) };
        if rc != 0 {
            return Err(UsernsError::Join {
                fd: self.ns_fd,
                errno: nix::errno::Errno::last(),
            });
        }
        // Joined: the fd has served; it must not reach the process (preserved fds included).
        let _ = nix::unistd::close(self.ns_fd);
        let sys = libcontainer::syscall::syscall::create_syscall();
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        // Always: ferry's own groups are host ids, unmapped (nobody) inside.
        sys.set_groups(&groups)
            .map_err(|source| UsernsError::Groups {
                groups: self.groups.clone(),
                source,
            })?;
        sys.set_id(Uid::from_raw(self.uid), Gid::from_raw(self.gid))
            .map_err(|source| UsernsError::Ids {
                uid: self.uid,
                gid: self.gid,
                source,
            })?;
        if let Some(caps) = &self.caps {
            libcontainer::capabilities::drop_privileges(caps, sys.as_ref())
                .map_err(UsernsError::Caps)?;
        }
        if self.home_from_passwd {
            if let Some(home) = libcontainer::utils::get_user_home(self.uid) {
                // SAFETY: the exec'd process is single threaded here (setns just proved it).
                unsafe { std::env::set_var("HOME", home) };
            }
        }
        Ok(())
    }

    /// Hands stdio ptys owned by host root (libcontainer's `-t` console) to the process's uid,
    /// as the host sees it; best effort, as runc's fixStdioPermissions.
    fn fix_stdio_owner(&self) {
        let Some(host_uid) = to_host(&self.uid_map, self.uid) else {
            return;
        };
        for fd in 0..3 {
            let Ok(st) = nix::sys::stat::fstat(fd) else {
                continue;
            };
            let is_chr = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT
                == nix::sys::stat::SFlag::S_IFCHR;
            // Unix98 pty slaves: majors 136..=143.
            let pty = (136..=143).contains(&nix::sys::stat::major(st.st_rdev));
            if is_chr && pty && st.st_uid == 0 {
                let _ = nix::unistd::fchown(fd, Some(Uid::from_raw(host_uid)), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_a_user_namespace_in_the_config() {
        assert!(has_userns(&json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "user"}]}})));
        assert!(!has_userns(
            &json!({"linux": {"namespaces": [{"type": "pid"}]}})
        ));
        assert!(!has_userns(&json!({"linux": {}})));
    }

    #[test]
    fn maps_parse_and_translate() {
        let m = parse_map("         0     100000      65536\n    70000  5 1\n").unwrap();
        assert_eq!(to_host(&m, 0), Some(100000));
        assert_eq!(to_host(&m, 1000), Some(101000));
        assert_eq!(to_host(&m, 65535), Some(165535));
        assert_eq!(to_host(&m, 65536), None);
        assert_eq!(to_host(&m, 70000), Some(5));
        assert!(parse_map("0 x 1\n").is_none());
    }

    #[test]
    fn the_process_goes_to_libcontainer_as_host_root() {
        let own = json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"]});
        let mut p: Process = serde_json::from_value(json!({"cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 1000, "gid": 1001, "additionalGids": [5, 6], "umask": 18},
            "capabilities": own.clone()}))
        .unwrap();
        let t = take_user(&mut p).unwrap();
        assert_eq!((t.uid, t.gid, t.groups.clone()), (1000, 1001, vec![5, 6]));
        assert_eq!(t.caps, Some(serde_json::from_value(own).unwrap()));
        assert!(t.home_from_passwd);
        let u = p.user();
        assert_eq!((u.uid(), u.gid(), u.umask()), (0, 0, Some(18)));
        assert!(u.additional_gids().is_none());
        assert!(p.capabilities().is_none());
        // A HOME given in the env stays; root's HOME libcontainer looks up itself.
        let mut p: Process = serde_json::from_value(json!({"cwd": "/",
            "env": ["HOME=/h"], "user": {"uid": 7, "gid": 7}}))
        .unwrap();
        assert!(!take_user(&mut p).unwrap().home_from_passwd);
        let mut p: Process =
            serde_json::from_value(json!({"cwd": "/", "user": {"uid": 0, "gid": 0}})).unwrap();
        assert!(!take_user(&mut p).unwrap().home_from_passwd);
    }

    #[test]
    fn nothing_to_join_in_ferrys_own_namespace() {
        let mut p: Process =
            serde_json::from_value(json!({"cwd": "/", "user": {"uid": 1000, "gid": 1000}}))
                .unwrap();
        let me = std::process::id() as i32;
        let config = json!({"linux": {"namespaces": [{"type": "user"}]}});
        assert!(prepare(&config, me, &mut p).unwrap().is_none());
        assert!(prepare(&json!({"linux": {}}), me, &mut p)
            .unwrap()
            .is_none());
        assert_eq!(p.user().uid(), 1000);
    }
}

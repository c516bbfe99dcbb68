//! User namespace: the container's uid/gid mappings, and every id of the images seen from
//! inside it.
//!
//! Kernel mechanism. A user namespace maps its ids onto its parent's through
//! `/proc/PID/uid_map` and `gid_map`: lines `first lower_first count`, where `lower_first` is
//! in the user namespace of whoever opened the file (so ferry, on the host, reads host ids;
//! a process in the same namespace reads `0 0 4294967295`). Every id the kernel hands out
//! (`/proc/PID/status`, `stat(2)`, `IPC_STAT`, `SCM_CREDENTIALS`) is translated into the
//! caller's user namespace; an id with no mapping there shows as the overflow id (65534).
//! Capabilities are relative to the task's own user namespace and need no translation.
//!
//! Images hold ids as seen inside the container, as CRIU's do (`userns_uid`/`userns_gid`), so
//! they restore under another mapping (Kubernetes gives each pod its own range on each node):
//! - dump ([`dump`]): the root task's maps go to `userns-ID.img` (`userns_entry`, CRIU 4's),
//!   and every id ferry read from the host (credentials, groups, file, IPC and tmpfs owners)
//!   is translated host → inside. An owner with no mapping (host root's device nodes and
//!   cgroup directories) is stored as [`NO_ID`], CRIU's INVALID_ID, which `chown(2)` takes as
//!   "leave unchanged". A task in another (nested) user namespace is refused.
//! - restore ([`restore`]): the runtime makes the new user namespace from the bundle's config;
//!   the restored tasks run inside it and set their ids as stored, while what ferry fills from
//!   outside (tmpfs contents, IPC owners) is translated inside → host through the new init's
//!   maps. Before anything is created, every id the images hold is checked against the new
//!   config's mappings ([`restore::check_config`]).

pub mod dump;
pub mod restore;

use ferry_images::pb;

/// An id without a mapping (CRIU's INVALID_ID; `chown(2)`'s "leave unchanged").
pub const NO_ID: u32 = u32::MAX;

/// Errors of the user namespace stages; each names the task or image and what.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// A /proc file could not be read.
    #[error("user namespace of task {pid}: {op} {path}: {source}")]
    Io {
        /// Task.
        pid: i32,
        /// Operation.
        op: &'static str,
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A map line did not parse.
    #[error("user namespace of task {pid}: {path}: cannot parse {line:?}")]
    Parse {
        /// Task.
        pid: i32,
        /// Path.
        path: String,
        /// Offending line.
        line: String,
    },
    /// Something ferry does not handle.
    #[error("user namespace: not supported yet: {what}")]
    NotSupported {
        /// What.
        what: String,
    },
    /// An id the images hold has no place in a mapping.
    #[error("user namespace: {what}")]
    Unmapped {
        /// What, naming the id, where it is held and the mapping.
        what: String,
    },
    /// Image I/O.
    #[error(transparent)]
    Dir(#[from] ferry_images::dir::DirError),
}

/// `userns-ID.img`: the mappings of user namespace `id` (CRIU's CR_FD_USERNS).
pub fn image_name(id: u32) -> String {
    format!("userns-{id}.img")
}

/// One direction of a user namespace's mapping: extents `inside first -> outside first`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdMap(pub Vec<pb::UidGidExtent>);

impl IdMap {
    /// The map of a process in the reader's own user namespace.
    pub fn identity() -> IdMap {
        IdMap(vec![pb::UidGidExtent {
            first: 0,
            lower_first: 0,
            count: u32::MAX,
        }])
    }

    /// Whether every id maps onto itself.
    pub fn is_identity(&self) -> bool {
        *self == IdMap::identity()
    }

    /// Parses a `uid_map`/`gid_map` text.
    pub fn parse(text: &str) -> Result<IdMap, String> {
        let mut v = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let n: Vec<u32> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| line.to_string())?;
            let [first, lower_first, count] = n[..] else {
                return Err(line.to_string());
            };
            v.push(pb::UidGidExtent {
                first,
                lower_first,
                count,
            });
        }
        Ok(IdMap(v))
    }

    /// The id inside for `outside`, if mapped.
    pub fn inside(&self, outside: u32) -> Option<u32> {
        self.0.iter().find_map(|e| {
            let off = outside.checked_sub(e.lower_first)?;
            (off < e.count).then(|| e.first + off)
        })
    }

    /// The id outside for `inside`, if mapped.
    pub fn outside(&self, inside: u32) -> Option<u32> {
        self.0.iter().find_map(|e| {
            let off = inside.checked_sub(e.first)?;
            (off < e.count).then(|| e.lower_first + off)
        })
    }

    /// `inside first-last -> outside first-last` extents, for messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| {
                let last = |f: u32| f.saturating_add(e.count.saturating_sub(1));
                format!(
                    "{}-{} -> {}-{}",
                    e.first,
                    last(e.first),
                    e.lower_first,
                    last(e.lower_first)
                )
            })
            .collect();
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Both mappings of a user namespace, as its parent (the host) sees them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserNs {
    /// uid_map.
    pub uid: IdMap,
    /// gid_map.
    pub gid: IdMap,
}

impl UserNs {
    /// Reads task `pid`'s maps (ids outside as seen by this process).
    pub fn of_task(pid: i32) -> Result<UserNs, UsernsError> {
        let read = |name: &str| -> Result<IdMap, UsernsError> {
            let path = format!("/proc/{pid}/{name}");
            let text = std::fs::read_to_string(&path).map_err(|source| UsernsError::Io {
                pid,
                op: "read",
                path: path.clone(),
                source,
            })?;
            IdMap::parse(&text).map_err(|line| UsernsError::Parse { pid, path, line })
        };
        Ok(UserNs {
            uid: read("uid_map")?,
            gid: read("gid_map")?,
        })
    }

    /// The image entry.
    pub fn entry(&self) -> pb::UsernsEntry {
        pb::UsernsEntry {
            uid_map: self.uid.0.clone(),
            gid_map: self.gid.0.clone(),
        }
    }

    /// From an image entry.
    pub fn from_entry(e: &pb::UsernsEntry) -> UserNs {
        UserNs {
            uid: IdMap(e.uid_map.clone()),
            gid: IdMap(e.gid_map.clone()),
        }
    }

    /// Host uid → inside, [`NO_ID`] when unmapped.
    pub fn uid_in(&self, host: u32) -> u32 {
        self.uid.inside(host).unwrap_or(NO_ID)
    }

    /// Host gid → inside, [`NO_ID`] when unmapped.
    pub fn gid_in(&self, host: u32) -> u32 {
        self.gid.inside(host).unwrap_or(NO_ID)
    }

    /// Inside uid → host; [`NO_ID`] stays [`NO_ID`]; `None` when the map has no place for it.
    pub fn uid_out(&self, inside: u32) -> Option<u32> {
        if inside == NO_ID {
            return Some(NO_ID);
        }
        self.uid.outside(inside)
    }

    /// Inside gid → host; [`NO_ID`] stays [`NO_ID`]; `None` when the map has no place for it.
    pub fn gid_out(&self, inside: u32) -> Option<u32> {
        if inside == NO_ID {
            return Some(NO_ID);
        }
        self.gid.outside(inside)
    }
}

/// Whether task `pid` is in another user namespace than this process.
pub fn own(pid: i32) -> Result<bool, UsernsError> {
    Ok(ns_ino(pid)? != ns_ino(std::process::id() as i32)?)
}

/// Inode of task `pid`'s user namespace.
pub fn ns_ino(pid: i32) -> Result<u64, UsernsError> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/ns/user");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| UsernsError::Io {
            pid,
            op: "stat",
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(text: &str) -> UserNs {
        UserNs {
            uid: IdMap::parse(text).unwrap(),
            gid: IdMap::parse(text).unwrap(),
        }
    }

    #[test]
    fn translates_both_ways_through_several_extents() {
        let n = ns("         0     100000       1000\n      1000     300000        10\n");
        assert_eq!(n.uid_in(100000), 0);
        assert_eq!(n.uid_in(100999), 999);
        assert_eq!(n.uid_in(300005), 1005);
        assert_eq!(n.uid_in(0), NO_ID);
        assert_eq!(n.uid_in(101000), NO_ID);
        assert_eq!(n.uid_out(0), Some(100000));
        assert_eq!(n.uid_out(1009), Some(300009));
        assert_eq!(n.uid_out(1010), None);
        assert_eq!(n.gid_out(NO_ID), Some(NO_ID));
        assert_eq!(
            n.uid.describe(),
            "0-999 -> 100000-100999, 1000-1009 -> 300000-300009"
        );
    }

    #[test]
    fn identity_and_bad_lines() {
        let id = IdMap::parse("0 0 4294967295\n").unwrap();
        assert!(id.is_identity());
        assert_eq!(id.inside(1234), Some(1234));
        assert_eq!(IdMap::parse("0 1\n").unwrap_err(), "0 1");
        assert_eq!(IdMap::parse("0 x 1\n").unwrap_err(), "0 x 1");
    }

    #[test]
    fn own_user_namespace_of_this_process_is_not_own() {
        assert!(!own(std::process::id() as i32).unwrap());
        let me = UserNs::of_task(std::process::id() as i32).unwrap();
        assert!(me.uid.is_identity() && me.gid.is_identity());
    }

    #[test]
    fn entry_round_trip() {
        let n = ns("0 100000 65536\n");
        assert_eq!(UserNs::from_entry(&n.entry()), n);
    }
}

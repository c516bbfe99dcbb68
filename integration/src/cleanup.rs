//! Leftover removal that works even while a test unwinds from a panic.
//!
//! Processes are killed through pidfds opened while they were known to be ours, so a recycled
//! PID can never be hit. cgroups are found by path in every mounted hierarchy (v1 controllers
//! and the cgroup2 mount); a frozen v1 freezer is thawed first, remaining members are killed, and
//! directories are removed deepest first. Mounts are found in /proc/self/mountinfo by prefix and
//! detached deepest first. Nothing here panics.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::wait_until;

/// A process handle that survives PID reuse.
#[derive(Debug)]
pub struct PidFd {
    pub pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    /// Opens a pidfd for `pid`; None if it is already gone.
    pub fn open(pid: i32) -> Option<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Some(PidFd { pid, fd })
    }

    /// Sends `sig`; false when the process has exited.
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal with a valid pidfd, a null siginfo and zero flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }

    /// Whether the process still exists (a zombie counts as gone).
    pub fn alive(&self) -> bool {
        process_alive(self.pid) && self.signal(0)
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state letter follows the ")" that closes the command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Mount points of every cgroup hierarchy (v1 controllers and cgroup2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// Directories named by `cgroups_path` (an OCI linux.cgroupsPath, absolute) in every hierarchy.
pub fn cgroup_dirs(cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    cgroup_mounts()
        .into_iter()
        .map(|m| m.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes the cgroup `cgroups_path` (and anything below it) from every hierarchy, killing what
/// is still inside. Returns the directories that could not be removed.
pub fn remove_cgroup(cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new(); // never the root of a hierarchy
    }
    let mut left = Vec::new();
    for dir in cgroup_dirs(cgroups_path) {
        let mut dirs = Vec::new();
        collect_dirs(&dir, &mut dirs);
        // Thaw first: frozen tasks cannot die.
        for d in &dirs {
            let st = d.join("freezer.state");
            if st.exists() {
                let _ = fs::write(&st, "THAWED");
            }
            let f2 = d.join("cgroup.freeze");
            if f2.exists() {
                let _ = fs::write(&f2, "0");
            }
        }
        for d in dirs.iter().rev() {
            let removed = wait_until(Duration::from_secs(5), || {
                for pid in cgroup_procs(d) {
                    if let Some(p) = PidFd::open(pid) {
                        p.signal(libc::SIGKILL);
                    }
                }
                fs::remove_dir(d).is_ok() || !d.exists()
            });
            if !removed {
                left.push(d.clone());
            }
        }
    }
    left
}

/// PIDs listed in a cgroup directory's cgroup.procs.
pub fn cgroup_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// One line of /proc/self/mountinfo, the fields the rig needs.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses /proc/self/mountinfo.
pub fn mountinfo() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = unescape(pre.split(' ').nth(4)?);
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = unescape(post.next().unwrap_or(""));
            Some(MountInfo {
                mount_point: PathBuf::from(mount_point),
                fstype,
                source,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Detaches every mount at or below `dir`; returns those still there afterwards.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..3 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            return ms;
        }
        for m in ms {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    mounts_under(dir)
}

/// Mounts of ferry's bind staging (`/run/ferry-staging`) in the host's mount table, and the
/// staging directories of container `id` (named `ID-...`) left in it.
pub fn staging_left(id: &str) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/run/ferry-staging/"))
        .map(String::from)
        .collect();
    for e in std::fs::read_dir("/run/ferry-staging")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{id}-")) {
            left.push(name);
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_mountinfo_octal() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\"), r"/end\");
    }

    #[test]
    fn own_process_is_alive_and_pidfd_signals() {
        let me = std::process::id() as i32;
        assert!(process_alive(me));
        let fd = PidFd::open(me).expect("pidfd of self");
        assert!(fd.signal(0));
    }
}

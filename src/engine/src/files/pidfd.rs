//! pidfds (PIDFD entries), of live and of dead processes.
//!
//! Kernel mechanism: a pidfd refers to a `struct pid`; its fdinfo shows `Pid` and `NSpid` (in
//! ferry's pid namespace and down), both -1 once the process is gone (reaped), and its pidfs
//! inode number names the `struct pid` (two pidfds of one process share it). A live target
//! must be a task of the tree: the entry holds its pid in the tree's namespace (`nspid`), and
//! the task holding the pidfd opens it itself with `pidfd_open(nspid)` once its fds are in
//! place (by then the task, its ancestors and its children exist, zombies included; a later
//! sibling is an error naming the pid). A dead target is stored as CRIU 4.x stores it, `nspid`
//! -1 with the inode; the restore forks a stand-in process in the pid namespace the dead one
//! lived in, opens the pidfds on it, kills it with SIGKILL and reaps it, so the pidfd again
//! polls readable, `pidfd_send_signal` fails with ESRCH and `waitid(P_PIDFD)` with ECHILD.
//! Descriptions that named one dead process (same inode) share one stand-in, so they name one
//! `struct pid` again. The coordinator makes the stand-ins, before forking, when it is in the
//! tree's pid namespace (a tree in ferry's own, or an in-place restore as the namespace's
//! PID 1), so a description held by several tasks stays one; a coordinator outside the tree's
//! new namespace cannot, and there each task makes its own (a description two tasks shared
//! then becomes one per task; CRIU passes it between the tasks over a socket). Its exit status
//! (PIDFD_GET_INFO) is SIGKILL's, as with CRIU (the original status has no field in the
//! image). PIDFD_THREAD pidfds are refused, as CRIU does.
//!
//! [`TreePids`] also translates F_SETOWN owners: ferry reads them with host pids, the images
//! hold the tree's namespace pids (as CRIU's parasite, which reads them from inside, does).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ferry_images::pb;

use super::dump::{Fd, FileTable, FilesError};
use super::restore::{owned, RestoreError};

/// PIDFD_THREAD (uapi/linux/pidfd.h): a pidfd for a thread rather than a thread group.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP (fcntl.h).
const F_OWNER_PGRP: u32 = 2;

/// The tree's pids: host pid -> pid in the tree's namespace, for every task (zombies too) and
/// thread, and for every process group and session id the tree uses.
#[derive(Debug, Default, Clone)]
pub struct TreePids {
    tasks: HashMap<i32, i32>,
    threads: HashMap<i32, i32>,
    groups: HashMap<i32, i32>,
    /// The tree is in a child pid namespace (an owner outside it cannot be named there).
    child_ns: bool,
    /// Set by the dump: without it (unit use) pids pass unchanged.
    known: bool,
}

impl TreePids {
    /// From the frozen tree and its namespace map.
    pub fn new(tree: &crate::freeze::FrozenTree, map: &crate::pidns::dump::PidMap) -> TreePids {
        let mut t = TreePids {
            child_ns: map.child_ns,
            known: true,
            ..Default::default()
        };
        for task in &tree.tasks {
            t.tasks.insert(task.ids.pid, map.ns(task.ids.pid));
            for th in &task.threads {
                t.threads.insert(th.tid, map.ns(th.tid));
            }
            for g in [task.ids.pgid, task.ids.sid] {
                t.groups.insert(g, map.ns(g));
            }
        }
        t
    }

    /// The namespace pid of a process of the tree; `None` when it is not one.
    fn task(&self, host: i32) -> Option<i32> {
        if !self.known {
            return Some(host);
        }
        self.tasks.get(&host).copied()
    }

    /// An F_SETOWN owner as the image holds it: the owner's pid (thread id, process group id)
    /// in the tree's namespace. An owner outside the tree's child pid namespace has no pid
    /// there (the task itself would read 0); it is an error rather than an owner lost.
    pub fn fown(&self, fd: &Fd, o: &mut pb::FownEntry) -> Result<(), FilesError> {
        self.translate(o).map_err(|what| fd.state("fown", what))
    }

    fn translate(&self, o: &mut pb::FownEntry) -> Result<(), String> {
        if !self.known || o.pid == 0 {
            return Ok(());
        }
        let host = o.pid as i32;
        let ns = if o.pid_type == F_OWNER_PGRP {
            self.groups.get(&host)
        } else {
            self.tasks.get(&host).or_else(|| self.threads.get(&host))
        };
        match ns {
            Some(&n) => o.pid = n as u32,
            None if self.child_ns => {
                return Err(format!(
                    "its F_SETOWN owner {host} (type {}) is outside the tree's pid namespace",
                    o.pid_type
                ))
            }
            None => {} // the host's namespace: the pid means the same at restore
        }
        Ok(())
    }
}

// ---- dump ----

/// A pidfd of process `pid` (in the caller's pid namespace), no flags.
pub fn open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open with a pid and no flags; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The PIDFD entry of an fd.
pub fn dump(t: &mut FileTable, fd: &Fd) -> Result<pb::FileEntry, FilesError> {
    let pid: i64 = super::field(&fd.info, "Pid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fd.state("pidfd", "fdinfo has no Pid"))?;
    if fd.flags & PIDFD_THREAD != 0 {
        return Err(fd.state("pidfd", "PIDFD_THREAD pidfds are not supported"));
    }
    let nspid = if pid <= 0 {
        -1 // the process is gone: restored as a reaped stand-in
    } else {
        t.tree_pids.task(pid as i32).ok_or_else(|| {
            fd.state(
                "pidfd",
                format!("its process {pid} is not a task of the dumped tree"),
            )
        })?
    };
    let id = t.next_id();
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Pidfd as i32,
        id,
        pidfd: Some(pb::PidfdEntry {
            id,
            ino: std::os::unix::fs::MetadataExt::ino(&fd.md),
            flags: fd.flags & !(libc::O_RDWR as u32),
            nspid,
            fown: fd.fown,
        }),
        ..Default::default()
    })
}

// ---- restore ----

/// Pidfds of dead processes: one stand-in (a child of the calling process: the coordinator,
/// or the task itself, see [`dead_in_tasks`]) per pidfs inode, alive while its pidfds are
/// opened, killed and reaped by [`Dead::finish`].
#[derive(Debug, Default)]
pub struct Dead {
    by_ino: BTreeMap<u64, i32>,
    private: Vec<i32>,
    /// Whether SIGCHLD was pending before the first stand-in (`None`: none forked yet).
    chld_was_pending: Option<bool>,
}

impl Dead {
    /// A pidfd for a dead (`nspid` -1) entry, on its stand-in.
    pub fn open(&mut self, pid: u32, fd: u32, e: &pb::PidfdEntry) -> Result<OwnedFd, RestoreError> {
        let err = |what: String| RestoreError::State {
            pid,
            fd,
            kind: "pidfd",
            what: format!("a stand-in for its dead process: {what}"),
        };
        // A zero inode is no identity: such an entry gets a stand-in of its own.
        let child = match self.by_ino.get(&e.ino).filter(|_| e.ino != 0) {
            Some(&c) => c,
            None => {
                self.chld_was_pending.get_or_insert_with(sigchld_pending);
                let c = stand_in().map_err(|s| err(s.to_string()))?;
                if e.ino != 0 {
                    self.by_ino.insert(e.ino, c);
                } else {
                    self.private.push(c);
                }
                c
            }
        };
        let flags = e.flags as i32 & libc::O_NONBLOCK;
        // SAFETY: pidfd_open with integer arguments; returns a new fd or -1.
        let n = unsafe { libc::syscall(libc::SYS_pidfd_open, child, flags) } as i32;
        owned(n, "pidfd_open", &format!("stand-in {child}")).map_err(|s| err(s.to_string()))
    }

    /// Kills and reaps every stand-in once all pidfds on them are open: they now name dead,
    /// reaped processes, as the dumped ones did. The SIGCHLD their deaths leave pending (with
    /// signals blocked, as a restoring task has them) is taken back unless one was pending
    /// before, so no task of the tree gets a SIGCHLD it never had.
    pub fn finish(&mut self) -> Result<(), RestoreError> {
        let all: Vec<i32> = std::mem::take(&mut self.by_ino)
            .into_values()
            .chain(std::mem::take(&mut self.private))
            .collect();
        let mut first = Ok(());
        let took_back = self.chld_was_pending.take() == Some(false);
        for c in all {
            if let Err(e) = kill_and_reap(c) {
                first = first.and(Err(RestoreError::Sys {
                    op: "kill and reap",
                    path: format!("pidfd stand-in {c}"),
                    source: e,
                }));
            }
        }
        if took_back {
            take_sigchld();
        }
        first
    }
}

impl Drop for Dead {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Whether the tasks must make the stand-ins of dead pidfds themselves: when the tree has its
/// own pid namespace (it holds pid 1) and this coordinator is outside it (not its PID 1), a
/// stand-in forked here would live in the wrong namespace, and a pidfd of a process outside
/// the caller's namespace answers EINVAL where the original answered ESRCH. Otherwise the
/// coordinator makes them, so a description several tasks share stays one.
pub fn dead_in_tasks(needs: &super::restore::Needs) -> bool {
    needs.fds.iter().any(|(pid, _)| *pid == 1) && std::process::id() != 1
}

/// Forks a process that only waits (to be killed by [`kill_and_reap`]).
fn stand_in() -> std::io::Result<i32> {
    // SAFETY: the child only makes raw syscalls (prctl, close_range, pause) and never returns;
    // the parent keeps running as before.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: prctl, close_range and pause take no memory; the loop never ends (the
        // parent kills this process). The inherited fds are dropped at once so no pipe or
        // socket end stays held by it.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
            loop {
                libc::pause();
            }
        }
    }
    Ok(child)
}

fn kill_and_reap(child: i32) -> std::io::Result<()> {
    // SAFETY: kill and waitpid of a stand-in this module forked, which nothing else reaps.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        let mut st = 0;
        if libc::waitpid(child, &mut st, 0) != child {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens and places every pidfd of this task (runs in the task once its other fds are in
/// place); returns the fd numbers placed. Fds naming one description share it again; dead
/// processes get stand-ins forked here, in the task's own pid namespace (a pidfd of a process
/// outside the caller's namespace answers EINVAL rather than ESRCH), killed and reaped before
/// this returns.
pub fn install_task(
    pid: u32,
    fds: &[pb::FdinfoEntry],
    pidfds: &BTreeMap<u32, pb::PidfdEntry>,
) -> Result<Vec<i32>, RestoreError> {
    let mine: Vec<&pb::FdinfoEntry> = fds.iter().filter(|f| pidfds.contains_key(&f.id)).collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let mut dead = Dead::default();
    let mut placed: BTreeMap<u32, i32> = BTreeMap::new();
    let mut out = Vec::new();
    let mut run = || -> Result<(), RestoreError> {
        for fi in &mine {
            let e = &pidfds[&fi.id];
            let cloexec = if fi.flags & libc::FD_CLOEXEC as u32 != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            let pfd = match placed.get(&fi.id) {
                // Another fd of a description already placed: the same description.
                Some(&first) => dup(first).map_err(|e| state(pid, fi.fd, format!("dup: {e}")))?,
                None if e.nspid >= 0 => open_live(pid, fi.fd, e)?,
                None => dead.open(pid, fi.fd, e)?,
            };
            place(pid, pfd, fi.fd, cloexec)?;
            placed.entry(fi.id).or_insert(fi.fd as i32);
            out.push(fi.fd as i32);
        }
        Ok(())
    };
    let r = run();
    let fin = dead.finish();
    r?;
    fin?;
    Ok(out)
}

fn state(pid: u32, fd: u32, what: String) -> RestoreError {
    RestoreError::State {
        pid,
        fd,
        kind: "pidfd",
        what,
    }
}

fn dup(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd of this task; the result is a new fd we own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    owned(n, "dup", "pidfd").map_err(|e| std::io::Error::other(e.to_string()))
}

/// A pidfd of a live process of the tree (by its pid in the tree's namespace).
fn open_live(pid: u32, target: u32, e: &pb::PidfdEntry) -> Result<OwnedFd, RestoreError> {
    let flags = e.flags as i32 & libc::O_NONBLOCK;
    // SAFETY: pidfd_open with integer arguments; returns a new fd or -1.
    let n = unsafe { libc::syscall(libc::SYS_pidfd_open, e.nspid, flags) } as i32;
    owned(
        n,
        "pidfd_open",
        &format!("task {pid} fd {target} (pid {})", e.nspid),
    )
    .map_err(|err| {
        state(
            pid,
            target,
            format!("process {} does not exist at this point: {err}", e.nspid),
        )
    })
}

/// Puts `pfd` at fd number `target`.
fn place(pid: u32, pfd: OwnedFd, target: u32, cloexec: i32) -> Result<(), RestoreError> {
    if pfd.as_raw_fd() == target as i32 {
        // Already in place (the lowest free number was the wanted one).
        let raw = std::os::fd::IntoRawFd::into_raw_fd(pfd);
        let fdflags = if cloexec != 0 { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: F_SETFD on the fd we just placed; it stays open as the task's fd.
        unsafe { libc::fcntl(raw, libc::F_SETFD, fdflags) };
        return Ok(());
    }
    // SAFETY: dup3 from our fresh pidfd to the fd number the image names.
    if unsafe { libc::dup3(pfd.as_raw_fd(), target as i32, cloexec) } < 0 {
        return Err(super::restore::sys(
            "dup3 into place",
            &format!("task {pid} fd {target}"),
        ));
    }
    Ok(())
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

fn sigchld_pending() -> bool {
    // SAFETY: sigpending fills a sigset_t we own; sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGCHLD) == 1
    }
}

/// Dequeues a pending SIGCHLD (the restoring task has every signal blocked).
fn take_sigchld() {
    let set = sigchld_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait with a valid set and timeout, no siginfo wanted.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(child_ns: bool) -> TreePids {
        TreePids {
            tasks: [(4000, 1), (4001, 2)].into_iter().collect(),
            threads: [(4000, 1), (4005, 3)].into_iter().collect(),
            groups: [(4000, 1), (4001, 2)].into_iter().collect(),
            child_ns,
            known: true,
        }
    }

    fn owner(pid_type: u32, pid: u32) -> pb::FownEntry {
        pb::FownEntry {
            pid_type,
            pid,
            signum: 35,
            ..Default::default()
        }
    }

    #[test]
    fn owners_become_namespace_pids() {
        let t = tree(true);
        for (ty, host, ns) in [
            (1, 4001, 2),
            (0, 4005, 3),
            (F_OWNER_PGRP, 4000, 1),
            (1, 0, 0),
        ] {
            let mut o = owner(ty, host);
            t.translate(&mut o).unwrap();
            assert_eq!((o.pid_type, o.pid, o.signum), (ty, ns, 35));
        }
    }

    #[test]
    fn an_owner_outside_a_child_namespace_is_an_error_not_a_lost_owner() {
        let mut o = owner(1, 777);
        let e = tree(true).translate(&mut o).unwrap_err();
        assert!(e.contains("777") && e.contains("outside"), "{e}");
        // In ferry's own namespace the host pid is the pid at restore too.
        let mut o = owner(1, 777);
        tree(false).translate(&mut o).unwrap();
        assert_eq!(o.pid, 777);
        // Without a tree (no dump context) nothing changes.
        let mut o = owner(1, 4001);
        TreePids::default().translate(&mut o).unwrap();
        assert_eq!(o.pid, 4001);
    }

    #[test]
    fn live_pidfd_targets_must_be_tasks_of_the_tree() {
        let t = tree(true);
        assert_eq!(t.task(4001), Some(2));
        assert_eq!(t.task(4005), None); // a thread is no pidfd target (PIDFD_THREAD refused)
        assert_eq!(t.task(9), None);
        assert_eq!(TreePids::default().task(9), Some(9));
    }
}

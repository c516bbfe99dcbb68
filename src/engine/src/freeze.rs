//! Freezing a process tree: every task and thread seized with ptrace and held in a stop.
//!
//! Kernel mechanism: PTRACE_SEIZE + PTRACE_INTERRUPT (through ferry-inject's typed handles) stop
//! each thread without a signal. A thread list (`/proc/PID/task`) and a child list
//! (`/proc/PID/task/TID/children`) can grow while we work, because a not-yet-stopped thread may
//! clone or fork; so each task's threads are re-listed until one pass finds no new tid, and the
//! tree is re-walked until no new child appears. Once every thread of every task is stopped,
//! nothing in the tree can create tasks any more. Zombies cannot be seized (they have no
//! user-space left): they are recorded with their exit code. A thread that exits between the
//! listing and the seize is simply dropped. Every [`ferry_inject::Stopped`] handle detaches when
//! dropped, so an error anywhere lets the whole tree run on; [`FrozenTree::kill`] is the only way
//! the tree dies, and only once the images are safe.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use ferry_inject::{seize, PtraceError, SeizedState, Stopped};

/// Errors while freezing.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The root task does not exist.
    #[error("freeze: task {pid} does not exist")]
    NoRoot { pid: i32 },
    /// The root task is a zombie: nothing to dump.
    #[error("freeze: root task {pid} is a zombie")]
    RootZombie { pid: i32 },
    /// ptrace refused a task for a reason other than it vanishing.
    #[error("freeze: seizing task {pid} (thread {tid}): {source}")]
    Seize {
        pid: i32,
        tid: i32,
        source: PtraceError,
    },
    /// /proc could not be read for a reason other than the task vanishing.
    #[error("freeze: reading {path}: {source}")]
    Proc {
        path: String,
        source: std::io::Error,
    },
    /// The tree kept changing for too long.
    #[error("freeze: task {pid} kept creating threads or children for {rounds} rounds")]
    Unstable { pid: i32, rounds: u32 },
}

type Result<T> = std::result::Result<T, FreezeError>;

/// One seized thread. `stopped` is `None` only while a dump stage has borrowed the handle.
#[derive(Debug)]
pub struct FrozenThread {
    /// Thread id (in ferry's pid namespace).
    pub tid: i32,
    /// The stopped handle; dropping it detaches the thread.
    pub stopped: Option<Stopped>,
}

/// Identity of a task as /proc/PID/stat tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIds {
    /// Process id.
    pub pid: i32,
    /// Parent's pid (0 for the root of the dumped tree).
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
}

/// One task (thread group) of the frozen tree.
#[derive(Debug)]
pub struct FrozenTask {
    /// pid, ppid, pgid, sid.
    pub ids: TaskIds,
    /// Threads, the leader (tid == pid) first. Empty for a zombie.
    pub threads: Vec<FrozenThread>,
    /// `Some(exit code)` for a zombie.
    pub zombie: Option<u32>,
    /// The task was in job-control stop when seized (it is stopped again at detach).
    pub stopped: bool,
}

/// A frozen tree, root first, parents before children.
#[derive(Debug)]
pub struct FrozenTree {
    /// The tasks.
    pub tasks: Vec<FrozenTask>,
    /// How long seizing took.
    pub freezing_time: Duration,
    /// When the last task was stopped.
    pub frozen_at: Instant,
}

/// Fields 4 (ppid), 5 (pgrp), 6 (session) and 3 (state) of /proc/PID/stat, and field 52
/// (exit_code). The comm field may hold spaces and parentheses: parse after the last ')'.
#[derive(Debug, Clone, Copy)]
pub struct StatFields {
    /// One-letter state.
    pub state: char,
    /// ppid.
    pub ppid: i32,
    /// pgrp.
    pub pgid: i32,
    /// session.
    pub sid: i32,
    /// Task flags (PF_*).
    pub flags: u64,
    /// exit_code field (wait status of a zombie).
    pub exit_code: u32,
}

/// Parses /proc/PID/stat text.
pub fn parse_stat(text: &str) -> Option<(StatFields, Vec<&str>)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    Some((
        StatFields {
            state: f.first()?.chars().next()?,
            ppid: num(1)? as i32,
            pgid: num(2)? as i32,
            sid: num(3)? as i32,
            flags: f.get(6)?.parse().ok()?,
            exit_code: f.get(49).and_then(|v| v.parse().ok()).unwrap_or(0),
        },
        f,
    ))
}

fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Reads /proc/PID/stat; `None` if the task is gone.
pub fn read_stat(pid: i32) -> Result<Option<StatFields>> {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(parse_stat(&t).map(|(s, _)| s)),
        Err(e) if gone(&e) => Ok(None),
        Err(source) => Err(FreezeError::Proc { path, source }),
    }
}

fn list_tids(pid: i32) -> Result<BTreeSet<i32>> {
    let path = format!("/proc/{pid}/task");
    let rd = match std::fs::read_dir(&path) {
        Ok(r) => r,
        Err(e) if gone(&e) => return Ok(BTreeSet::new()),
        Err(source) => return Err(FreezeError::Proc { path, source }),
    };
    Ok(rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

fn list_children(pid: i32, tids: &[i32]) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in tids {
        let path = format!("/proc/{pid}/task/{tid}/children");
        match std::fs::read_to_string(&path) {
            Ok(t) => out.extend(t.split_whitespace().filter_map(|v| v.parse::<i32>().ok())),
            Err(e) if gone(&e) => {}
            Err(source) => return Err(FreezeError::Proc { path, source }),
        }
    }
    Ok(out)
}

const MAX_ROUNDS: u32 = 64;

/// Seizes and stops every thread of task `pid`, re-listing until no new thread appears.
/// Returns `None` if the task is gone.
fn freeze_task(pid: i32, ppid: i32) -> Result<Option<FrozenTask>> {
    let Some(stat) = read_stat(pid)? else {
        return Ok(None);
    };
    let ids = TaskIds {
        pid,
        ppid,
        pgid: stat.pgid,
        sid: stat.sid,
    };
    if stat.state == 'Z' || stat.state == 'X' {
        return Ok(Some(FrozenTask {
            ids,
            threads: Vec::new(),
            zombie: Some(stat.exit_code),
            stopped: false,
        }));
    }
    let mut threads: Vec<FrozenThread> = Vec::new();
    let mut seen: HashSet<i32> = HashSet::new();
    let mut stopped = false;
    for round in 0.. {
        if round > MAX_ROUNDS {
            return Err(FreezeError::Unstable { pid, rounds: round });
        }
        let tids = list_tids(pid)?;
        let new: Vec<i32> = tids.iter().copied().filter(|t| !seen.contains(t)).collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            seen.insert(tid);
            let s = match seize(tid).and_then(|r| r.interrupt()) {
                Ok(s) => s,
                // Exited between listing and seize, or a zombie thread: nothing to stop.
                Err(PtraceError::TaskDied { .. }) | Err(PtraceError::Zombie { .. }) => {
                    if tid == pid {
                        // The leader became a zombie or died: look again as a whole task.
                        drop(threads);
                        return freeze_task_again(pid, ppid);
                    }
                    continue;
                }
                Err(source) => return Err(FreezeError::Seize { pid, tid, source }),
            };
            stopped |= s.seized_state() == SeizedState::Stopped;
            threads.push(FrozenThread {
                tid,
                stopped: Some(s),
            });
        }
    }
    if threads.is_empty() {
        return Ok(None);
    }
    threads.sort_by_key(|t| (t.tid != pid, t.tid));
    if threads[0].tid != pid {
        // A thread group whose leader exited while others run: not dumpable as CRIU knows it.
        return Err(FreezeError::Seize {
            pid,
            tid: pid,
            source: PtraceError::Zombie { pid },
        });
    }
    Ok(Some(FrozenTask {
        ids,
        threads,
        zombie: None,
        stopped,
    }))
}

fn freeze_task_again(pid: i32, ppid: i32) -> Result<Option<FrozenTask>> {
    match read_stat(pid)? {
        Some(s) if s.state == 'Z' || s.state == 'X' => freeze_task(pid, ppid),
        Some(_) => Err(FreezeError::Unstable { pid, rounds: 1 }),
        None => Ok(None),
    }
}

/// Freezes the tree rooted at `root`.
pub fn freeze(root: i32) -> Result<FrozenTree> {
    let start = Instant::now();
    let Some(root_task) = freeze_task(root, 0)? else {
        return Err(FreezeError::NoRoot { pid: root });
    };
    if root_task.zombie.is_some() {
        return Err(FreezeError::RootZombie { pid: root });
    }
    let mut tasks = vec![root_task];
    let mut known: HashSet<i32> = HashSet::from([root]);
    // Walk breadth-first; a frozen task's children list is final, but a child listed before
    // its parent stopped may itself still be forking, which freeze_task's loop covers.
    let mut i = 0;
    let mut rounds = 0;
    while i < tasks.len() {
        let (pid, tids) = {
            let t = &tasks[i];
            let tids: Vec<i32> = t.threads.iter().map(|t| t.tid).collect();
            (t.ids.pid, tids)
        };
        if tasks[i].zombie.is_none() {
            for child in list_children(pid, &tids)? {
                if known.insert(child) {
                    rounds += 1;
                    if rounds > 1 << 16 {
                        return Err(FreezeError::Unstable { pid, rounds });
                    }
                    if let Some(t) = freeze_task(child, pid)? {
                        tasks.push(t);
                    }
                }
            }
        }
        i += 1;
    }
    Ok(FrozenTree {
        tasks,
        freezing_time: start.elapsed(),
        frozen_at: Instant::now(),
    })
}

impl FrozenTree {
    /// Number of threads held.
    pub fn nr_threads(&self) -> usize {
        self.tasks.iter().map(|t| t.threads.len()).sum()
    }

    /// Detaches every thread and lets the tree run on (stopped tasks are stopped again).
    /// Returns the first detach error, after trying all.
    pub fn release(mut self) -> std::result::Result<(), PtraceError> {
        let mut first = None;
        for t in self.tasks.iter_mut() {
            for th in t.threads.iter_mut() {
                if let Some(s) = th.stopped.take() {
                    if let Err(e) = s.detach() {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Kills every task with SIGKILL while still holding it, then lets go of the handles.
    /// Called only once the images are complete and synced.
    pub fn kill(mut self) {
        for t in &self.tasks {
            if t.zombie.is_none() {
                // SAFETY: kill(2) has no memory effects; the pid is held by our ptrace stop,
                // so it cannot have been reused.
                unsafe { libc::kill(t.ids.pid, libc::SIGKILL) };
            }
        }
        for t in self.tasks.iter_mut() {
            for th in t.threads.iter_mut() {
                // Detaching a task being killed may fail: it dies either way.
                drop(th.stopped.take());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let mut line = String::from("42 (a b) c)) S 1 42 42 0 -1 4194560");
        for i in 0..43 {
            line.push_str(&format!(" {i}"));
        }
        let (s, f) = parse_stat(&line).unwrap();
        assert_eq!((s.state, s.ppid, s.pgid, s.sid), ('S', 1, 42, 42));
        assert_eq!(s.flags, 4194560);
        assert_eq!(f.len(), 50);
        assert_eq!(s.exit_code, 42);
        assert!(parse_stat("garbage").is_none());
    }
}

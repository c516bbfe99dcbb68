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
//!
//! A container's tree is held by its cgroup freezer first ([`freeze_in_cgroup`], CRIU's
//! freeze-then-seize): while the cgroup is frozen, every thread of the tree is PTRACE_SEIZEd and
//! a PTRACE_INTERRUPT is queued (a frozen task cannot stop yet, but the trap is taken the next
//! time it would return to user space); then the cgroup is thawed and the stops are collected.
//! So no task runs a user instruction between the freeze and the seize. A job-control-stopped
//! task is left out of that first pass (seizing it would wait for it to re-trap, which a frozen
//! task cannot do); it stays stopped after the thaw and is seized like any task then. The v1
//! freezer shows frozen tasks as `D`: a stopped one is told apart by its wchan,
//! `do_signal_stop`. The cgroup v2 freezer lets a queued interrupt trap at once (a ptrace stop
//! counts as frozen there); both are collected the same way after the thaw. Processes of the
//! cgroup outside the tree (a runtime's `exec`) are seized the same way and held still, not
//! dumped, until the tree is let go (as CRIU does).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use ferry_inject::{seize, PtraceError, Running, SeizedState, Stopped};

/// A container's cgroup freezer, driven by the runtime (which knows the container's cgroups).
pub trait Freezer {
    /// Freezes every task of the cgroup and waits until they are frozen.
    fn freeze(&mut self) -> std::result::Result<(), String>;
    /// Thaws them again.
    fn thaw(&mut self) -> std::result::Result<(), String>;
    /// The cgroup was frozen before the checkpoint began (a paused container): it is frozen
    /// again before the tree is let go, so its tasks do not run.
    fn was_frozen(&self) -> bool;
    /// Every process of the cgroup (those outside the dumped tree, such as `exec`'d ones, are
    /// held still for the dump too).
    fn processes(&self) -> std::result::Result<Vec<i32>, String>;
}

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
    /// The cgroup freezer failed.
    #[error("freeze: cgroup freezer ({stage}): {message}")]
    Freezer {
        /// thaw or refreeze
        stage: &'static str,
        /// the freezer's error
        message: String,
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
    /// Threads of the cgroup outside the tree, held still for the dump and not dumped (CRIU
    /// does the same); detached with the tree.
    pub outsiders: Vec<Stopped>,
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
/// Threads already seized in a frozen cgroup (`pre`) only have their queued stop collected.
/// Stopped threads are kept in `held` until the task is complete, so that on error the
/// caller decides when they are let go. Returns `None` if the task is gone.
fn freeze_task(
    pid: i32,
    ppid: i32,
    pre: &mut Preseized,
    held: &mut Vec<FrozenThread>,
) -> Result<Option<FrozenTask>> {
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
    debug_assert!(held.is_empty());
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
            let s = match pre.take(tid) {
                Some(r) => r.collect(),
                None => seize(tid).and_then(|r| r.interrupt()),
            };
            let s = match s {
                Ok(s) => s,
                // Exited between listing and seize, or a zombie thread: nothing to stop.
                Err(PtraceError::TaskDied { .. }) | Err(PtraceError::Zombie { .. }) => {
                    if tid == pid {
                        // The leader became a zombie or died: look again as a whole task.
                        held.clear();
                        return freeze_task_again(pid, ppid, pre, held);
                    }
                    continue;
                }
                Err(source) => return Err(FreezeError::Seize { pid, tid, source }),
            };
            stopped |= s.seized_state() == SeizedState::Stopped;
            held.push(FrozenThread {
                tid,
                stopped: Some(s),
            });
        }
    }
    if held.is_empty() {
        return Ok(None);
    }
    held.sort_by_key(|t| (t.tid != pid, t.tid));
    if held[0].tid != pid {
        // A thread group whose leader exited while others run: not dumpable as CRIU knows it.
        return Err(FreezeError::Seize {
            pid,
            tid: pid,
            source: PtraceError::Zombie { pid },
        });
    }
    Ok(Some(FrozenTask {
        ids,
        threads: std::mem::take(held),
        zombie: None,
        stopped,
    }))
}

fn freeze_task_again(
    pid: i32,
    ppid: i32,
    pre: &mut Preseized,
    held: &mut Vec<FrozenThread>,
) -> Result<Option<FrozenTask>> {
    match read_stat(pid)? {
        Some(s) if s.state == 'Z' || s.state == 'X' => freeze_task(pid, ppid, pre, held),
        Some(_) => Err(FreezeError::Unstable { pid, rounds: 1 }),
        None => Ok(None),
    }
}

/// Freezes the tree rooted at `root` with ptrace alone.
pub fn freeze(root: i32) -> Result<FrozenTree> {
    let start = Instant::now();
    let mut w = Walk::default();
    walk(root, &mut Preseized::default(), &mut w)?;
    Ok(w.into_tree(start))
}

/// Freezes the tree rooted at `root`, whose cgroup `freezer` holds frozen on entry: every
/// thread is seized and interrupted while frozen, the cgroup is thawed, and the stops are
/// collected (see the module doc). On success the cgroup is thawed and the tree held by
/// ptrace. On error every task is let go again, after the cgroup is frozen again if it was
/// frozen before the checkpoint; otherwise it is left thawed.
pub fn freeze_in_cgroup(
    root: i32,
    freezer: &mut dyn Freezer,
    log: &mut crate::dump_log::DumpLog,
) -> Result<FrozenTree> {
    let start = Instant::now();
    let mut pre = preseize(root);
    if pre.error.is_none() {
        match freezer.processes() {
            Ok(procs) => {
                if let Err(e) = preseize_outsiders(&procs, &mut pre) {
                    pre.error = Some(e);
                }
            }
            Err(message) => {
                pre.error = Some(FreezeError::Freezer {
                    stage: "list the cgroup's processes",
                    message,
                })
            }
        }
    }
    log.log(
        crate::log::INFO,
        &format!(
            "freeze: {} threads of the tree and {} outside it seized in the frozen cgroup, \
             interrupts queued",
            pre.threads.len(),
            pre.outsiders.len()
        ),
    );
    if let Err(message) = freezer.thaw() {
        // Still frozen: the queued stops cannot be collected. The tasks stay seized until
        // ferry exits, when the kernel detaches them and drops their pending traps.
        return Err(FreezeError::Freezer {
            stage: "thaw after seizing",
            message,
        });
    }
    let mut w = Walk::default();
    let r = match pre.error.take() {
        Some(e) => Err(e),
        None => walk(root, &mut pre, &mut w),
    };
    // Threads seized in the first pass that the walk did not meet (killed from outside since):
    // their stops are collected so that they can be detached.
    let leftover = pre.collect_all();
    let outsiders = pre.collect_outsiders();
    match r {
        Ok(()) => {
            drop(leftover);
            let mut tree = w.into_tree(start);
            tree.outsiders = outsiders;
            Ok(tree)
        }
        Err(e) => {
            if freezer.was_frozen() {
                // A paused container is frozen again before its tasks are detached.
                // A cleanup error never hides the first error.
                if let Err(m) = freezer.freeze() {
                    log.error(&format!("refreeze after a failed seize: {m}"));
                }
            }
            drop(leftover);
            drop(outsiders);
            drop(w);
            Err(e)
        }
    }
}

/// Tasks and threads stopped so far; dropping it detaches them all.
#[derive(Default)]
struct Walk {
    tasks: Vec<FrozenTask>,
    held: Vec<FrozenThread>,
}

impl Walk {
    fn into_tree(self, start: Instant) -> FrozenTree {
        FrozenTree {
            tasks: self.tasks,
            freezing_time: start.elapsed(),
            frozen_at: Instant::now(),
            outsiders: Vec::new(),
        }
    }
}

fn walk(root: i32, pre: &mut Preseized, w: &mut Walk) -> Result<()> {
    let Some(root_task) = freeze_task(root, 0, pre, &mut w.held)? else {
        return Err(FreezeError::NoRoot { pid: root });
    };
    if root_task.zombie.is_some() {
        return Err(FreezeError::RootZombie { pid: root });
    }
    w.tasks.push(root_task);
    let mut known: HashSet<i32> = HashSet::from([root]);
    // Walk breadth-first; a frozen task's children list is final, but a child listed before
    // its parent stopped may itself still be forking, which freeze_task's loop covers.
    let mut i = 0;
    let mut rounds = 0;
    while i < w.tasks.len() {
        let (pid, tids) = {
            let t = &w.tasks[i];
            let tids: Vec<i32> = t.threads.iter().map(|t| t.tid).collect();
            (t.ids.pid, tids)
        };
        if w.tasks[i].zombie.is_none() {
            for child in list_children(pid, &tids)? {
                if known.insert(child) {
                    rounds += 1;
                    if rounds > 1 << 16 {
                        return Err(FreezeError::Unstable { pid, rounds });
                    }
                    if let Some(t) = freeze_task(child, pid, pre, &mut w.held)? {
                        w.tasks.push(t);
                    }
                }
            }
        }
        i += 1;
    }
    Ok(())
}

/// A thread seized while its cgroup was frozen.
struct Preseized1 {
    running: Running,
    /// PTRACE_INTERRUPT was queued (if not, it is asked for again when collected).
    queued: bool,
}

impl Preseized1 {
    fn collect(self) -> std::result::Result<Stopped, PtraceError> {
        if self.queued {
            self.running.interrupt_queued()
        } else {
            self.running.interrupt()
        }
    }
}

/// The first pass of [`freeze_in_cgroup`]: threads seized with an interrupt queued, by tid,
/// and the error that ended the pass early, if any.
#[derive(Default)]
struct Preseized {
    threads: HashMap<i32, Preseized1>,
    /// Every pid of the tree (seized or not: stopped tasks and zombies are left for later).
    tree: HashSet<i32>,
    /// Threads of the cgroup outside the tree.
    outsiders: HashMap<i32, Preseized1>,
    error: Option<FreezeError>,
}

impl Preseized {
    fn take(&mut self, tid: i32) -> Option<Preseized1> {
        self.threads.remove(&tid)
    }

    /// Collects the stops of every thread not taken yet (the cgroup must be thawed).
    fn collect_all(&mut self) -> Vec<Stopped> {
        self.threads
            .drain()
            .filter_map(|(_, p)| p.collect().ok())
            .collect()
    }

    /// Collects the stops of the threads outside the tree (the cgroup must be thawed); one
    /// that died meanwhile is simply gone.
    fn collect_outsiders(&mut self) -> Vec<Stopped> {
        self.outsiders
            .drain()
            .filter_map(|(_, p)| p.collect().ok())
            .collect()
    }
}

/// Whether thread `tid` of `pid` sleeps in a job-control stop (shown as `D` when frozen).
fn in_signal_stop(pid: i32, tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"))
        .map(|w| w.trim() == "do_signal_stop")
        .unwrap_or(false)
}

/// Seizes every thread of the frozen tree rooted at `root` and queues its interrupt. Frozen,
/// the tree cannot change, so one walk sees all of it.
fn preseize(root: i32) -> Preseized {
    let mut pre = Preseized::default();
    if let Err(e) = preseize_into(root, &mut pre) {
        pre.error = Some(e);
    }
    pre
}

fn preseize_into(root: i32, pre: &mut Preseized) -> Result<()> {
    let mut queue = vec![root];
    pre.tree.insert(root);
    let mut i = 0;
    while i < queue.len() {
        let pid = queue[i];
        i += 1;
        let tids: Vec<i32> = list_tids(pid)?.into_iter().collect();
        preseize_threads(pid, &tids, &mut pre.threads)?;
        for child in list_children(pid, &tids)? {
            if pre.tree.insert(child) {
                queue.push(child);
            }
        }
    }
    Ok(())
}

/// Seizes the threads of the cgroup's processes that are not part of the tree.
fn preseize_outsiders(procs: &[i32], pre: &mut Preseized) -> Result<()> {
    for &pid in procs {
        if pre.tree.contains(&pid) || pid == std::process::id() as i32 {
            continue;
        }
        let tids: Vec<i32> = list_tids(pid)?.into_iter().collect();
        preseize_threads(pid, &tids, &mut pre.outsiders)?;
    }
    Ok(())
}

/// PTRACE_SEIZE + queued PTRACE_INTERRUPT for each of `tids` (threads of `pid`), but for
/// threads in a job-control stop, zombies and threads already gone.
fn preseize_threads(pid: i32, tids: &[i32], into: &mut HashMap<i32, Preseized1>) -> Result<()> {
    for &tid in tids {
        if in_signal_stop(pid, tid) {
            // Seizing would wait for the frozen task to re-trap; it is stopped anyway and
            // is seized after the thaw.
            continue;
        }
        let running = match seize(tid) {
            Ok(r) => r,
            Err(PtraceError::TaskDied { .. }) | Err(PtraceError::Zombie { .. }) => continue,
            Err(source) => return Err(FreezeError::Seize { pid, tid, source }),
        };
        let queued = running.queue_interrupt();
        let ok = queued.is_ok();
        into.insert(
            tid,
            Preseized1 {
                running,
                queued: ok,
            },
        );
        match queued {
            Ok(()) | Err(PtraceError::TaskDied { .. }) => {}
            Err(source) => return Err(FreezeError::Seize { pid, tid, source }),
        }
    }
    Ok(())
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
        for s in self.outsiders.drain(..) {
            if let Err(e) = s.detach() {
                first.get_or_insert(e);
            }
        }
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
        // Not part of the dumped tree: let go; whoever owns the cgroup decides their fate.
        self.outsiders.clear();
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

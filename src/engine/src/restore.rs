//! The restore pipeline: orders the stages, kills what it forked on error.
//!
//! 1. read images (pstree, core, mm/pagemap, fs, ids, fdinfo, files) and check everything that
//!    can be checked before a task exists: pids free, files unchanged, vDSO compatible, creds;
//! 2. open every shared resource once (files, pipes with their data, memfds, shared memory);
//! 3. reserve the restore range (free in ferry's layout and in every task's target layout) and
//!    map the shared stage area at its start;
//! 4. fork the root with its pid; each task forks its children (restore_task), prepares itself
//!    and jumps into the restorer; the coordinator polls the stage slots with a deadline;
//! 5. when every thread waits before rt_sigreturn: release and unmap the restorer under ptrace
//!    (restore_finish), detach.
//!
//! Any error at any stage kills every task forked so far (SIGKILL by pid; ferry is a child
//! subreaper during the restore, so it reaps them all) and names the task and the stage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_blob_abi::restorer::Range;
use ferry_images::{pb, ImageDir};
use thiserror::Error;

use crate::files::restore::{Needs, Opened};
use crate::mem::restore::{self as mem, CurrentVdso, MapFds, MemImage};
use crate::pidns::restore::{self as pidns, NsMode};
use crate::pstree::restore::{self as pst, state};
use crate::restore_verify::Verifier;
use crate::stage::{Ctl, Stage};
use crate::{creds, files, fs, restore_finish as fin, restorer};

/// Stack slot of each restorer thread (the blob's clone3 uses the same size).
pub const STACK_SIZE: u64 = ferry_blob_abi::restorer::THREAD_STACK_SIZE;

/// Errors of a restore, naming the stage and the task.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// A coordinator stage failed.
    #[error("restore failed at stage '{stage}': {source}")]
    Stage {
        /// Stage.
        stage: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A task failed.
    #[error("restore failed: task {pid} at stage '{stage}': {msg}")]
    Task {
        /// Task.
        pid: u32,
        /// Stage.
        stage: &'static str,
        /// What happened.
        msg: String,
    },
    /// A task did not get on in time.
    #[error("restore failed: task {pid} stuck at stage '{stage}' for {limit:?}")]
    Timeout {
        /// Task.
        pid: u32,
        /// Stage.
        stage: &'static str,
        /// Deadline.
        limit: Duration,
    },
}

pub(crate) fn stage_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    stage: &'static str,
) -> impl FnOnce(E) -> RestoreError {
    move |e| RestoreError::Stage {
        stage,
        source: e.into(),
    }
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct Options {
    /// Image directory.
    pub images: PathBuf,
    /// Restore tty fds onto the caller's terminal; allow a session from outside the tree.
    pub shell_job: bool,
    /// Deadline for every task to reach the restorer.
    pub timeout: Duration,
    /// How long to wait for a pid still held by a zombie, for the root and every child alike.
    pub pid_wait: Duration,
    /// The caller is PID 1 of a fresh pid namespace and becomes the root (see pidns::inplace).
    pub in_place: bool,
    /// Fds of the calling process that stand for files of the images (CRIU's
    /// `--inherit-fd fd[N]:KEY`; see files::inherit): a container's stdio pipes.
    pub inherit_fds: Vec<files::inherit::InheritFd>,
}

impl Options {
    /// Defaults for a directory.
    pub fn new(images: impl Into<PathBuf>) -> Self {
        Self {
            images: images.into(),
            shell_job: false,
            timeout: Duration::from_secs(30),
            pid_wait: Duration::from_secs(3),
            in_place: false,
            inherit_fds: Vec::new(),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Root pid.
    pub root: u32,
    /// Every pid of the tree.
    pub pids: Vec<u32>,
    /// Pages read from page files.
    pub pages: u64,
    /// Time to fork and prepare every task.
    pub forking: Duration,
    /// Time from start to the tree running.
    pub total: Duration,
}

/// One task of the plan (`Default`: nothing read yet, as the in-place finisher and tests make
/// it).
#[derive(Debug, Default)]
pub struct TaskPlan {
    /// Its pstree entry.
    pub entry: pb::PstreeEntry,
    /// Alive (or stopped) rather than a zombie.
    pub alive: bool,
    /// `tc.task_state`.
    pub state: u32,
    /// Zombie exit status.
    pub exit_code: u32,
    /// (tid, core) per thread, main first.
    pub cores: Vec<(u32, pb::CoreEntry)>,
    /// Memory image.
    pub mem: Option<MemImage>,
    /// fs image.
    pub fs: Option<pb::FsEntry>,
    /// fds.
    pub fds: Vec<pb::FdinfoEntry>,
    /// Capability sets for the restorer's capset.
    pub caps: Option<[u32; 6]>,
    /// The ambient capability set (bit n = capability n), raised by the restorer.
    pub ambient: u64,
    /// Child task indices.
    pub children: Vec<usize>,
    /// Bytes of argument arena.
    pub arena_size: u64,
}

/// Everything the tasks need, built by the coordinator before forking.
#[derive(Debug)]
pub struct Plan {
    /// Tasks, parents before children.
    pub tasks: Vec<TaskPlan>,
    /// files.img.
    pub files: BTreeMap<u32, pb::FileEntry>,
    /// Opened shared resources.
    pub opened: Opened,
    /// The restore range.
    pub range: Range,
    /// Shared stage area at the range's start.
    pub ctl: Ctl,
    /// ferry's own vDSO/vvar.
    pub vdso: CurrentVdso,
    /// --shell-job.
    pub shell_job: bool,
    /// The manifest check running beside the restore.
    pub verifier: Verifier,
    /// Where the tree's pids live.
    pub ns: NsMode,
    /// [`Options::pid_wait`], for the tasks that fork the children.
    pub pid_wait: Duration,
    /// seccomp.img's filters (empty without one).
    pub seccomp: Vec<pb::SeccompFilter>,
}

impl Plan {
    /// Start of every task's private part (blob first).
    pub fn priv_base(&self) -> u64 {
        self.range.start + Ctl::size_for(self.tasks.len()) as u64
    }

    /// Raw fds for mappings.
    pub fn map_fds(&self) -> MapFds {
        use std::os::fd::AsRawFd;
        MapFds {
            by_file: self
                .opened
                .maps
                .iter()
                .map(|(&k, v)| (u64::from(k), v.as_raw_fd()))
                .collect(),
            by_shmid: self
                .opened
                .shmem
                .iter()
                .map(|(&k, v)| (k, v.as_raw_fd()))
                .collect(),
        }
    }
}

fn priv_size(vdso: &CurrentVdso, t: &TaskPlan) -> u64 {
    restorer::blob_len() as u64
        + t.arena_size
        + t.cores.len() as u64 * STACK_SIZE
        + vdso.park_len().next_multiple_of(mem::PAGE)
        + t.mem.as_ref().map_or(0, |m| m.staging_size())
}

/// The restore log (restore.log): the shared log, one line per stage with its time.
pub use crate::log::Log;

fn read_tasks(dir: &ImageDir) -> Result<Vec<TaskPlan>, RestoreError> {
    let e = stage_err("read images");
    if !dir.has("inventory.img") {
        return Err(e(format!(
            "{}: no inventory.img (not an image directory)",
            dir.path().display()
        )));
    }
    let _: pb::InventoryEntry = dir
        .read_one("inventory.img")
        .map_err(stage_err("read images"))?;
    let entries: Vec<pb::PstreeEntry> = dir
        .read_entries("pstree.img")
        .map_err(stage_err("read images"))?;
    let kids = pst::children(&entries).map_err(stage_err("read images"))?;
    let mut tasks = Vec::new();
    for (entry, children) in entries.into_iter().zip(kids) {
        let pid = entry.pid;
        let mut cores = Vec::new();
        for &tid in &entry.threads {
            let c: pb::CoreEntry = dir
                .read_one(&format!("core-{tid}.img"))
                .map_err(stage_err("read images"))?;
            if c.mtype != pb::core_entry::March::X8664 as i32 {
                return Err(stage_err("read images")(format!(
                    "core-{tid}.img: architecture {} is not x86_64",
                    c.mtype
                )));
            }
            cores.push((tid, c));
        }
        if cores.first().map(|c| c.0) != Some(pid) {
            return Err(stage_err("read images")(format!(
                "pstree.img: task {pid}: its first thread must be the task itself"
            )));
        }
        let tc =
            cores[0].1.tc.clone().ok_or_else(|| {
                stage_err("read images")(format!("core-{pid}.img has no task core"))
            })?;
        let st = tc.task_state;
        let alive = match st {
            state::ALIVE | state::STOPPED => true,
            state::DEAD => false,
            other => {
                return Err(RestoreError::Task {
                    pid,
                    stage: "read images",
                    msg: format!("task state {other} is not supported by ferry's restore yet"),
                })
            }
        };
        let (mut memi, mut fsi, mut fds) = (None, None, Vec::new());
        if alive {
            memi = Some(mem::load(dir, pid).map_err(stage_err("read images"))?);
            fsi = Some(
                dir.read_one::<pb::FsEntry>(&format!("fs-{pid}.img"))
                    .map_err(stage_err("read images"))?,
            );
            let ids: pb::TaskKobjIdsEntry = match cores[0].1.ids {
                Some(ids) => ids,
                None => dir
                    .read_one(&format!("ids-{pid}.img"))
                    .map_err(stage_err("read images"))?,
            };
            let name = format!("fdinfo-{}.img", ids.files_id);
            if dir.has(&name) {
                fds = dir.read_entries(&name).map_err(stage_err("read images"))?;
            }
        }
        let nvmas = memi.as_ref().map_or(0, |m| m.mm.vmas.len() as u64);
        let arena_size = ((256u64 << 10) + cores.len() as u64 * (16 << 10) + nvmas * 256)
            .next_multiple_of(mem::PAGE);
        tasks.push(TaskPlan {
            entry,
            alive,
            state: st,
            exit_code: tc.exit_code,
            cores,
            mem: memi,
            fs: fsi,
            fds,
            children,
            arena_size,
            ..Default::default()
        });
    }
    Ok(tasks)
}

/// Checks pids, vDSO, fs and creds; collects what must be opened.
fn check(
    tasks: &mut [TaskPlan],
    files: &BTreeMap<u32, pb::FileEntry>,
    vdso: &CurrentVdso,
    opts: &Options,
    seccomp: &[pb::SeccompFilter],
) -> Result<Needs, RestoreError> {
    let mut needs = Needs::default();
    let ns_tree = tasks.first().is_some_and(|t| t.entry.pid == 1);
    for t in tasks.iter_mut() {
        let pid = t.entry.pid;
        let task_err = |msg: String| RestoreError::Task {
            pid,
            stage: "check",
            msg,
        };
        // A fresh pid namespace has every pid free.
        for &id in t.entry.threads.iter().filter(|_| !ns_tree) {
            pst::wait_free(id, opts.pid_wait).map_err(|e| task_err(e.to_string()))?;
        }
        if !t.alive {
            continue;
        }
        let m = t
            .mem
            .as_ref()
            .ok_or_else(|| task_err("no memory image".into()))?;
        vdso.check(m).map_err(|e| task_err(e.to_string()))?;
        if let Some(f) = &t.fs {
            fs::restore::check(pid, f, files).map_err(|e| task_err(e.to_string()))?;
        }
        if let Some(c) = t.cores[0]
            .1
            .thread_core
            .as_ref()
            .and_then(|c| c.creds.as_ref())
        {
            t.caps = creds::restore::check(pid, c).map_err(|e| task_err(e.to_string()))?;
            t.ambient = creds::restore::ambient(c);
        }
        crate::seccomp::restore::check(&t.cores, seccomp).map_err(|e| task_err(e.to_string()))?;
        t.arena_size = (t.arena_size + crate::seccomp::restore::arena_need(&t.cores, seccomp))
            .next_multiple_of(mem::PAGE);
        for (tid, c) in &t.cores[1..] {
            if c.thread_core.as_ref().and_then(|c| c.creds.as_ref())
                != t.cores[0]
                    .1
                    .thread_core
                    .as_ref()
                    .and_then(|c| c.creds.as_ref())
            {
                return Err(task_err(format!("thread {tid} has other credentials than its task, which is not supported by ferry's restore yet")));
            }
        }
        needs.maps.insert(m.mm.exe_file_id, libc::O_RDONLY);
        for v in &m.mm.vmas {
            if v.status & (mem::status::FILE_PRIVATE | mem::status::FILE_SHARED) != 0 {
                let shared_w =
                    v.flags & libc::MAP_SHARED as u32 != 0 && v.prot & libc::PROT_WRITE as u32 != 0;
                let fl = if shared_w {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let e = needs.maps.entry(v.shmid as u32).or_insert(fl);
                if fl == libc::O_RDWR {
                    *e = fl;
                }
            } else if v.status & mem::status::ANON_SHARED != 0
                && v.status & mem::status::SYSVIPC == 0
            {
                let s = needs.shmem.entry(v.shmid).or_insert(0);
                *s = (*s).max(v.pgoff + v.end - v.start);
            }
        }
        for fi in &t.fds {
            needs.fds.push((pid, fi.clone()));
        }
    }
    Ok(needs)
}

/// Builds the plan: images read and checked, shared resources opened, range reserved.
pub fn plan(opts: &Options, log: &mut Log) -> Result<Plan, RestoreError> {
    let t = Instant::now();
    // Absolute: every task changes its cwd before it reads its pages.
    let abs = std::path::absolute(&opts.images).map_err(stage_err("read images"))?;
    let dir = ImageDir::open(&abs).map_err(stage_err("read images"))?;
    let mut tasks = read_tasks(&dir)?;
    let ns = pidns::mode(tasks[0].entry.pid, opts.in_place).map_err(stage_err("read images"))?;
    let files = files::restore::load_files(&dir).map_err(stage_err("read images"))?;
    // Ids of a tree in its own user namespace are stored as seen inside it: only a restore
    // running inside a user namespace (a container runtime's init) may set them as they are.
    if crate::userns::restore::image_userns(&dir)
        .map_err(stage_err("read images"))?
        .is_some()
        && crate::userns::UserNs::of_task(std::process::id() as i32)
            .map_err(stage_err("read images"))?
            .uid
            .is_identity()
    {
        return Err(stage_err("read images")(
            "the images' tree has its own user namespace; restore it into a container that \
             makes one (ferry restore with uidMappings/gidMappings in the bundle's config)",
        ));
    }
    log.stage("read images", t);
    let t = Instant::now();
    let vdso = CurrentVdso::read().map_err(stage_err("check"))?;
    let seccomp = crate::seccomp::restore::load(&dir).map_err(stage_err("read images"))?;
    let needs = check(&mut tasks, &files, &vdso, opts, &seccomp)?;
    log.stage("check", t);
    let t = Instant::now();
    let max_fd = needs
        .fds
        .iter()
        .map(|(_, f)| f.fd as i32)
        .max()
        .unwrap_or(2);
    let opened = files::restore::prepare(
        &dir,
        &files,
        &needs,
        opts.shell_job,
        &opts.inherit_fds,
        (max_fd + 1).max(16),
    )
    .map_err(stage_err("open files"))?;
    for i in &opened.inherit_unused {
        // CRIU closes such an fd silently; a caller who named a file that is not there
        // should at least find out why its fd was not used.
        log.warn(&format!(
            "inherit-fd fd[{}]:{} matches no file of the images; the fd is not used",
            i.fd, i.key
        ));
    }
    for id in &opened.pipes_unconnected {
        log.warn(&format!(
            "pipe:[{id}] has no end of the other direction in the tree (it was held outside \
             or closed) and no inherit-fd names it: it comes back unconnected (reads see \
             EOF, writes EPIPE)"
        ));
    }
    log.stage("open files", t);
    let priv_max = tasks.iter().map(|t| priv_size(&vdso, t)).max().unwrap_or(0);
    let len = Ctl::size_for(tasks.len()) as u64 + priv_max;
    let at = crate::restore_range::choose_range(&tasks, len).ok_or_else(|| {
        stage_err("reserve restore range")(format!("no free range of {len} bytes in both layouts"))
    })?;
    crate::restore_range::reserve(at, len)?;
    let ctl = Ctl::map(at, tasks.len()).map_err(stage_err("reserve restore range"))?;
    // Checksumming every file (the pages above all) overlaps with forking and filling memory;
    // its verdict is awaited before any task is released into its own code.
    // In a namespace being filled in place, the checker gets a pid the tree does not use.
    let helper = (ns == NsMode::InPlace).then(|| crate::pidns::inplace::helper_pids(&tasks)[0]);
    let verifier = Verifier::spawn(dir.path(), helper)?;
    log.line(
        crate::log::DEBUG,
        &format!("restore range {at:#x}-{:#x}", at + len),
    );
    Ok(Plan {
        tasks,
        files,
        opened,
        range: Range { start: at, len },
        ctl,
        vdso,
        shell_job: opts.shell_job,
        verifier,
        ns,
        pid_wait: opts.pid_wait,
        seccomp,
    })
}

/// Runs a whole restore: plan, fork, wait, finish. On any error every forked task is killed.
pub fn restore(opts: &Options, log: &mut Log) -> Result<Outcome, RestoreError> {
    let start = Instant::now();
    let plan = plan(opts, log)?;
    // Orphans of a failed restore come to us, so we can reap every one of them.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let r = run(&plan, opts, log, start);
    if r.is_err() {
        abort(&plan, log);
    }
    r
}

fn run(
    plan: &Plan,
    opts: &Options,
    log: &mut Log,
    start: Instant,
) -> Result<Outcome, RestoreError> {
    let t = Instant::now();
    let root = &plan.tasks[0];
    let rp = root.entry.pid;
    let got = match plan.ns {
        NsMode::Host => pst::fork_with_pid(rp, opts.pid_wait).map_err(|e| e.to_string()),
        NsMode::NewNs => pidns::fork_ns_init().map_err(|e| e.to_string()),
        NsMode::InPlace => Err("an in-place restore goes through pidns::inplace".into()),
    }
    .map_err(|msg| RestoreError::Task {
        pid: rp,
        stage: "fork",
        msg,
    })?;
    if got == 0 {
        crate::restore_task::run(plan, 0);
    }
    plan.ctl.slot(0).pid.store(got, Ordering::Release);
    wait_ready(plan, opts.timeout)?;
    let forking = t.elapsed();
    log.stage(
        "fork and prepare (every thread waits before rt_sigreturn)",
        t,
    );
    let t = Instant::now();
    plan.verifier.verdict()?;
    log.stage("manifest check", t);
    let t = Instant::now();
    release(plan, opts.timeout, log)?;
    log.stage("sigreturn and restorer unmap", t);
    let pids: Vec<u32> = plan.tasks.iter().map(|t| t.entry.pid).collect();
    let pages = plan
        .tasks
        .iter()
        .filter_map(|t| t.mem.as_ref())
        .map(|m| m.runs.iter().map(|r| r.nr_pages).sum::<u64>())
        .sum();
    log.line(
        crate::log::INFO,
        &format!("restored tree of {} task(s), root {rp}", pids.len()),
    );
    Ok(Outcome {
        root: got,
        pids,
        pages,
        forking,
        total: start.elapsed(),
    })
}

/// Lets every prepared task through rt_sigreturn, then sets what is set from outside (sched,
/// job-control stops). Tasks are addressed by the tids /proc shows (host tids in a new pid ns).
pub(crate) fn release(plan: &Plan, limit: Duration, log: &mut Log) -> Result<(), RestoreError> {
    let mut tids = std::collections::HashMap::new();
    for (i, t) in plan.tasks.iter().enumerate().filter(|(_, t)| t.alive) {
        let pid = plan.ctl.slot(i).pid.load(Ordering::Acquire);
        pidns::host_tids(pid, &mut tids).map_err(|e| RestoreError::Task {
            pid: t.entry.pid,
            stage: "sigreturn",
            msg: e.to_string(),
        })?;
    }
    // Every mapping is in place: memfds take their seals back.
    crate::files::memfd::apply_seals(&plan.opened.memfd_seals).map_err(stage_err("memfd seals"))?;
    // Every task waits before rt_sigreturn: TCP connections leave repair mode now, before any
    // task runs its own code (files::inet::restore).
    crate::files::inet::restore::leave_repair(&plan.opened.inet)
        .map_err(stage_err("leave TCP repair"))?;
    let to = fin::Release {
        tasks: &plan.tasks,
        ctl: &plan.ctl,
        range: plan.range,
        priv_base: plan.priv_base(),
        limit,
    };
    let host = fin::host_of(&tids);
    fin::let_go(&to, &host, &[], log)
}

/// Polls the stage slots until every thread of every live task waits before rt_sigreturn.
pub(crate) fn wait_ready(plan: &Plan, limit: Duration) -> Result<(), RestoreError> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for (i, t) in plan.tasks.iter().enumerate() {
            let s = plan.ctl.slot(i);
            let st = s.stage.load(Ordering::Acquire);
            if let Some(msg) = plan.ctl.message(i) {
                return Err(RestoreError::Task {
                    pid: t.entry.pid,
                    stage: Stage::name(st),
                    msg,
                });
            }
            if t.alive && (s.ready.load(Ordering::Acquire) as usize) < t.cores.len() {
                all = false;
                let pid = s.pid.load(Ordering::Acquire);
                if pid != 0 && gone_or_zombie(pid) {
                    // Give a dying task's last message a moment to land.
                    std::thread::sleep(Duration::from_millis(20));
                    let msg = plan.ctl.message(i).unwrap_or_else(|| {
                        "the task died (a fault in its Rust half or in the restorer)".into()
                    });
                    return Err(RestoreError::Task {
                        pid: t.entry.pid,
                        stage: Stage::name(s.stage.load(Ordering::Acquire)),
                        msg,
                    });
                }
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > limit {
            let (i, t) = plan
                .tasks
                .iter()
                .enumerate()
                .find(|(i, t)| {
                    t.alive
                        && (plan.ctl.slot(*i).ready.load(Ordering::Acquire) as usize)
                            < t.cores.len()
                })
                .unwrap_or((0, &plan.tasks[0]));
            return Err(RestoreError::Timeout {
                pid: t.entry.pid,
                stage: Stage::name(plan.ctl.slot(i).stage.load(Ordering::Acquire)),
                limit,
            });
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn gone_or_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].trim_start().chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X'),
    }
}

/// Kills every task forked so far and reaps them; the first error stays the one reported.
fn abort(plan: &Plan, log: &mut Log) {
    // Only pids this restore recorded itself: the root's (set after its fork) and each task's
    // (set by its parent after the fork and by the task on start). A pid merely present in
    // /proc may belong to someone else.
    let pids: Vec<u32> = (0..plan.tasks.len())
        .map(|i| plan.ctl.slot(i).pid.load(Ordering::Acquire))
        .filter(|&p| p != 0)
        .collect();
    plan.verifier.kill();
    for &p in &pids {
        // SAFETY: SIGKILL by pid to a task this restore forked (recorded in its slot).
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    // Anything else of the tree (a task killed before it recorded itself, orphans of killed
    // parents) is, or becomes, our child: we are a subreaper. Kill and reap until none is left.
    let me = std::process::id();
    let start = Instant::now();
    loop {
        for tid in std::fs::read_dir(format!("/proc/{me}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(tid.path().join("children")).unwrap_or_default();
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok())
            {
                // SAFETY: SIGKILL to our own child: a task of this restore, its orphan, or the
                // manifest checker.
                unsafe { libc::kill(k, libc::SIGKILL) };
            }
        }
        let mut st = 0;
        // SAFETY: reaps any child (we are a subreaper, so orphans come to us).
        let r = unsafe { libc::waitpid(-1, &mut st, libc::__WALL | libc::WNOHANG) };
        if r < 0 {
            break; // ECHILD: nothing left
        }
        if r == 0 {
            if start.elapsed() > Duration::from_secs(5) {
                log.warn("tasks of the failed restore are still unreaped after 5 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    log.error(&format!("restore aborted; killed {pids:?}"));
}

/// Writes stats-restore (CRIU's format) into the image directory.
pub fn write_stats(dir: &Path, o: &Outcome) -> Result<(), RestoreError> {
    let d = ImageDir::open(dir).map_err(stage_err("write stats"))?;
    let e = pb::StatsEntry {
        dump: None,
        restore: Some(pb::RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: o.forking.as_micros() as u32,
            restore_time: o.total.as_micros() as u32,
            pages_restored: Some(o.pages),
        }),
    };
    d.write_entries("stats-restore", &[e])
        .map_err(stage_err("write stats"))
}

#[cfg(test)]
mod tests;

//! The dump pipeline: orders the stages, undoes them on error.
//!
//! Stages: prepare the image directory (before anything touches the tree), freeze the tree,
//! dump each task (parasite in, state out, memory drained, parasite cured), write the tree-wide
//! images, fsync everything and write ferry's manifest, and only then let the tree go: resumed
//! with `--leave-running`, killed otherwise. Every stage that changes the tree has its undo
//! built in: a parasite cures itself when dropped, a session restores registers/mask when
//! dropped, a stopped handle detaches when dropped; so any error, whatever its stage, ends with
//! the frozen tree released exactly as it was.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_images::{pb, ImageDir};

use crate::dump_log::DumpLog;
use crate::dump_task::{self, Ctx, TaskImages};
use crate::freeze::{self, FreezeError};

/// Errors of a dump; each names the task, fd, path or stage it happened in.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Freezing the tree.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// The tree's pid namespace.
    #[error(transparent)]
    PidNs(#[from] crate::pidns::PidNsError),
    /// Reading registers.
    #[error(transparent)]
    Regs(#[from] crate::regs::dump::RegsError),
    /// Reading signal queues.
    #[error(transparent)]
    Sigact(#[from] crate::sigact::dump::SigactError),
    /// Reading seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::dump::SeccompError),
    /// Reading timers.
    #[error(transparent)]
    Timers(#[from] crate::timers::dump::TimersError),
    /// Reading credentials or limits.
    #[error(transparent)]
    Creds(#[from] crate::creds::dump::CredsError),
    /// User namespace.
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
    /// Reading the address space.
    #[error(transparent)]
    Mem(#[from] crate::mem::dump::MemError),
    /// Moving pages.
    #[error(transparent)]
    Pages(#[from] crate::mem::dump_pages::PagesError),
    /// Dumping fds.
    #[error(transparent)]
    Files(#[from] crate::files::dump::FilesError),
    /// cwd/root.
    #[error(transparent)]
    Fs(#[from] crate::fs::dump::FsError),
    /// The parasite.
    #[error(transparent)]
    Parasite(#[from] ferry_inject::ParasiteError),
    /// A remote-syscall session.
    #[error(transparent)]
    Session(#[from] ferry_inject::SessionError),
    /// ptrace.
    #[error(transparent)]
    Ptrace(#[from] ferry_inject::PtraceError),
    /// Image directory.
    #[error(transparent)]
    Dir(#[from] ferry_images::dir::DirError),
    /// Image framing.
    #[error(transparent)]
    Frame(#[from] ferry_images::FrameError),
    /// The manifest.
    #[error(transparent)]
    Manifest(#[from] ferry_images::manifest::ManifestError),
    /// Plain I/O on a path.
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: std::io::Error,
    },
    /// A remote syscall failed in the task.
    #[error("thread {tid}: remote {what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Remote {
        tid: i32,
        what: &'static str,
        errno: i32,
    },
    /// A task vanished from under the dump.
    #[error("task {pid} vanished during the dump")]
    Vanished { pid: i32 },
    /// The tree uses a session or group led from outside.
    #[error("{0}")]
    Tree(String),
    /// The image directory is unusable.
    #[error("image directory {path}: {problem}")]
    BadDir { path: String, problem: String },
    /// An error with the stage and task it happened in.
    #[error("stage {stage} of task {pid}: {source}")]
    InTask {
        stage: &'static str,
        pid: i32,
        source: Box<DumpError>,
    },
}

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Root of the tree.
    pub pid: i32,
    /// Where the images go.
    pub images_dir: PathBuf,
    /// Resume the tree after a successful dump instead of killing it.
    pub leave_running: bool,
    /// The tree belongs to the caller's terminal session.
    pub shell_job: bool,
    /// Where stats-dump goes (CRIU's -W); the images directory when `None`.
    pub work_dir: Option<PathBuf>,
    /// Datagram unix sockets connected to named sockets outside the tree are allowed
    /// (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// File locks are dumped (`--file-locks`) instead of refused.
    pub file_locks: bool,
    /// Largest unlinked file whose content is dumped (`--ghost-limit`); 1 MiB when `None`.
    pub ghost_limit: Option<u64>,
    /// Established TCP connections are dumped with TCP repair (`--tcp-established`) instead
    /// of refused.
    pub tcp_established: bool,
}

impl DumpOptions {
    /// Options for a dump of `pid` into `images_dir`: tree killed afterwards, no shell job, log
    /// and stats in the images directory (CRIU's defaults).
    pub fn new(pid: i32, images_dir: impl Into<PathBuf>) -> DumpOptions {
        DumpOptions {
            pid,
            images_dir: images_dir.into(),
            leave_running: false,
            shell_job: false,
            work_dir: None,
            ext_unix_sk: false,
            file_locks: false,
            ghost_limit: None,
            tcp_established: false,
        }
    }
}

/// What a successful dump did.
#[derive(Debug, Clone, Default)]
pub struct DumpReport {
    /// Tasks dumped (zombies included).
    pub tasks: usize,
    /// Threads dumped.
    pub threads: usize,
    /// Pages written (private and shared).
    pub pages_written: u64,
    /// Time spent seizing.
    pub freezing_time: Duration,
    /// Time the tree was frozen, up to its release.
    pub frozen_time: Duration,
    /// Time spent scanning and draining memory.
    pub memdump_time: Duration,
    /// Time spent draining alone.
    pub memwrite_time: Duration,
    /// Bytes of page data written.
    pub page_bytes: u64,
    /// Time spent before the freeze allocating pages files ([`crate::mem::reserve`]).
    pub reserve_time: Duration,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> DumpError + 'a {
    move |source| DumpError::Io {
        path: path.display().to_string(),
        op,
        source,
    }
}

/// Creates the image directory and proves it writable, before the tree is touched.
fn prepare_dir(dir: &Path) -> Result<(), DumpError> {
    let bad = |problem: String| DumpError::BadDir {
        path: dir.display().to_string(),
        problem,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(bad("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create: {e}")))?;
    let probe = dir.join(".ferry-dump-probe");
    std::fs::write(&probe, b"probe").map_err(|e| bad(format!("not writable: {e}")))?;
    std::fs::remove_file(&probe).map_err(|e| bad(format!("cannot remove a probe file: {e}")))?;
    Ok(())
}

/// A root whose session is led from outside is a shell job: refused without --shell-job,
/// before the tree is touched (CRIU's rule).
fn check_session(opts: &DumpOptions) -> Result<(), DumpError> {
    let Some(st) = freeze::read_stat(opts.pid)? else {
        return Err(FreezeError::NoRoot { pid: opts.pid }.into());
    };
    if st.sid != opts.pid && !opts.shell_job {
        return Err(DumpError::Tree(format!(
            "task {}: its session {} is led from outside the tree; dump it with --shell-job",
            opts.pid, st.sid
        )));
    }
    Ok(())
}

/// Dumps the tree rooted at `opts.pid` into `opts.images_dir`.
pub fn dump(opts: &DumpOptions, log: &mut DumpLog) -> Result<DumpReport, DumpError> {
    dump_with(opts, log, None, None)
}

/// Dumps the tree rooted at `opts.pid`, whose cgroup `freezer` holds frozen on entry: the tree
/// is seized while frozen and the cgroup thawed once every task has a stop queued
/// ([`freeze::freeze_in_cgroup`]). A cgroup that was frozen before the checkpoint (a paused
/// container) is frozen again before the tree is let go, after a success with
/// `leave_running` as after an error. On an error before the seize the cgroup is left as the
/// caller froze it.
///
/// `reserve`: the pages files the caller allocated before it froze the cgroup
/// ([`reserve`]; empty for none).
pub fn dump_in_frozen_cgroup(
    opts: &DumpOptions,
    log: &mut DumpLog,
    freezer: &mut dyn freeze::Freezer,
    reserve: crate::mem::reserve::Reserve,
) -> Result<DumpReport, DumpError> {
    dump_with(opts, log, Some(freezer), Some(reserve))
}

/// Allocates the tree's pages files while it still runs ([`crate::mem::reserve`]), logged as
/// the `reserve` stage; for a caller that freezes the tree's cgroup itself, before it does.
pub fn reserve(opts: &DumpOptions, log: &mut DumpLog) -> crate::mem::reserve::Reserve {
    let t = Instant::now();
    let r = crate::mem::reserve::Reserve::make(opts.pid, &opts.images_dir);
    log.stage(
        "reserve",
        t,
        &format!("{} bytes for {} pages files", r.bytes, r.len()),
    );
    r
}

/// Freezes a paused container's cgroup again before its tasks are detached.
fn refreeze(freezer: &mut Option<&mut dyn freeze::Freezer>, log: &mut DumpLog) {
    if let Some(f) = freezer.as_deref_mut().filter(|f| f.was_frozen()) {
        let t = Instant::now();
        match f.freeze() {
            Ok(()) => log.stage("refreeze", t, "cgroup frozen again (it was paused)"),
            // The caller puts the cgroup back in its state again and reports that failure.
            Err(m) => log.error(&format!("refreeze the paused cgroup: {m}")),
        }
    }
}

fn dump_with(
    opts: &DumpOptions,
    log: &mut DumpLog,
    mut freezer: Option<&mut dyn freeze::Freezer>,
    reserved: Option<crate::mem::reserve::Reserve>,
) -> Result<DumpReport, DumpError> {
    let t = Instant::now();
    check_session(opts)?;
    prepare_dir(&opts.images_dir)?;
    let zero = crate::mem::dump_pages::zero_pfn().map_err(io_err(
        Path::new("/proc/self/pagemap"),
        "find the zero page",
    ))?;
    log.stage(
        "prepare",
        t,
        &format!("image directory {}", opts.images_dir.display()),
    );

    // Pages files are allocated while the tree still runs (a caller that froze the tree's
    // cgroup made them before it did).
    let t = Instant::now();
    let reserve = reserved.unwrap_or_else(|| reserve(opts, log));
    let reserve_time = t.elapsed();

    let t = Instant::now();
    let mut tree = match freezer.as_deref_mut() {
        None => freeze::freeze(opts.pid)?,
        Some(f) => freeze::freeze_in_cgroup(opts.pid, f, log)?,
    };
    log.stage(
        "freeze",
        t,
        &format!(
            "{} tasks, {} threads seized{}",
            tree.tasks.len(),
            tree.nr_threads(),
            if freezer.is_some() {
                " (seized frozen, cgroup thawed)"
            } else {
                ""
            }
        ),
    );
    let mut ctx = Ctx::new(opts.images_dir.clone(), zero);
    ctx.reserve = reserve;
    ctx.files.inet.tcp_established = opts.tcp_established;
    match write_images(&mut tree, &mut ctx, opts, log) {
        Ok(mut report) => {
            report.reserve_time = reserve_time;
            // Every image is written and fsynced. A tree that stays alive may go on now, before
            // ferry's manifest is summed; a tree that dies waits for the manifest too.
            if opts.leave_running {
                let t = Instant::now();
                report.frozen_time = tree.frozen_at.elapsed() + tree.freezing_time;
                // TCP connections leave repair mode before their tasks run again; a killed
                // tree's close them silently in repair mode (files::inet).
                let resumed = ctx.files.inet.resume();
                refreeze(&mut freezer, log);
                tree.release()?;
                log.stage("release", t, "tree resumed (--leave-running)");
                resumed.map_err(crate::files::dump::FilesError::from)?;
                write_manifest(&opts.images_dir, log)?;
            } else {
                write_manifest(&opts.images_dir, log)?;
                let t = Instant::now();
                report.frozen_time = tree.frozen_at.elapsed() + tree.freezing_time;
                tree.kill();
                log.stage("kill", t, "tree killed after the images were synced");
            }
            Ok(report)
        }
        Err(e) => {
            log.error(&e.to_string());
            let t = Instant::now();
            // A cleanup error never hides the first error.
            if let Err(r) = ctx.files.inet.resume() {
                log.error(&format!("rollback: {r}"));
            }
            refreeze(&mut freezer, log);
            match tree.release() {
                Ok(()) => log.stage("rollback", t, "tree released unharmed"),
                Err(r) => log.error(&format!("rollback: {r}")),
            }
            Err(e)
        }
    }
}

fn write_manifest(dir: &Path, log: &mut DumpLog) -> Result<(), DumpError> {
    let t = Instant::now();
    ferry_images::manifest::write(dir)?;
    log.stage("sync", t, "manifest written, directory fsynced");
    Ok(())
}

fn in_task(stage: &'static str, pid: i32) -> impl FnOnce(DumpError) -> DumpError {
    move |e| DumpError::InTask {
        stage,
        pid,
        source: Box::new(e),
    }
}

fn write_images(
    tree: &mut freeze::FrozenTree,
    ctx: &mut Ctx,
    opts: &DumpOptions,
    log: &mut DumpLog,
) -> Result<DumpReport, DumpError> {
    crate::pstree::dump::check_groups(tree).map_err(DumpError::Tree)?;
    // Pids as the tree sees them (its own pid namespace when it is a container's).
    let nsmap = crate::pidns::dump::collect(tree)?;
    ctx.files.tree_pids = crate::files::pidfd::TreePids::new(tree, &nsmap);
    let pids: Vec<i32> = tree
        .tasks
        .iter()
        .filter(|t| t.zombie.is_none())
        .map(|t| t.ids.pid)
        .collect();
    if !opts.file_locks {
        crate::files::dump::check_locks(&pids)?;
    }
    ctx.files.file_locks = opts.file_locks;
    if let Some(l) = opts.ghost_limit {
        ctx.files.ghost_limit = l;
    }
    let dir = ImageDir::open(&opts.images_dir)?;
    let mut report = DumpReport {
        tasks: tree.tasks.len(),
        threads: tree.nr_threads(),
        freezing_time: tree.freezing_time,
        ..Default::default()
    };
    // As CRIU: the inventory's root_ids are the dumper's own, numbered first, so a restore can
    // tell which namespaces are the tree's own (ids differing from these).
    let root_ids = Some(ctx.ids(std::process::id() as i32)?);
    // A tree in its own user namespace: its maps go to userns-ID.img and every id to the
    // images as seen inside (`userns`).
    let userns = crate::userns::dump::collect(tree)?;
    if let (Some(ns), Some(root)) = (&userns, tree.tasks.first()) {
        let id = ctx.ids(root.ids.pid)?.user_ns_id.unwrap_or(0);
        crate::userns::dump::write(&dir, id, ns)?;
        log.log(
            crate::log::INFO,
            &format!(
                "user namespace {id}: uid_map {}, gid_map {}",
                ns.uid.describe(),
                ns.gid.describe()
            ),
        );
    }
    let mut files_written = std::collections::HashSet::new();
    for task in tree.tasks.iter_mut() {
        let pid = task.ids.pid;
        let t = Instant::now();
        let mut imgs =
            dump_task::dump_task(task, ctx, opts.shell_job).map_err(in_task("dump", pid))?;
        imgs.pid = nsmap.ns(imgs.pid);
        crate::pidns::dump::translate_cores(&mut imgs.cores, &nsmap);
        if let Some(ns) = &userns {
            crate::userns::dump::translate_cores(pid, &mut imgs.cores, ns)
                .map_err(|e| in_task("dump", pid)(e.into()))?;
        }
        let (scan, drain, pages) = imgs.mem;
        log.stage(
            "task",
            t,
            &format!(
                "task {pid}: {} threads dumped; pagemap scan {:.3} ms, {pages} pages moved in {:.3} ms",
                imgs.cores.len(),
                scan.as_secs_f64() * 1e3,
                drain.as_secs_f64() * 1e3
            ),
        );
        let t = Instant::now();
        write_task(&dir, &imgs, &mut files_written).map_err(in_task("write", pid))?;
        log.stage("write", t, &format!("task {pid}: images written"));
    }
    let t = Instant::now();
    dir.write_entries("pstree.img", &crate::pstree::dump::entries(tree, &nsmap))?;
    ctx.files.finish_unix(opts.ext_unix_sk)?;
    if let Some(ns) = &userns {
        crate::userns::dump::translate_files(&mut ctx.files, ns);
    }
    dir.write_entries("files.img", &ctx.files.entries)?;
    // tty-info, pipes-data, ghost-file-N, remap-fpath: the file table's side images.
    ctx.files.write_side_images(&dir, &mut ctx.next_pages_id)?;
    dir.write_entries("seccomp.img", &[ctx.seccomp.entry()])?;
    dir.write_entries("timens-0.img", &[timens()?])?;
    let inventory = pb::InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids,
        ns_per_id: Some(true),
        root_cg_set: Some(1),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        network_lock_method: Some(0),
        plugins_entry: Some(pb::PluginsEntry::default()),
        dump_criu_run_id: std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .ok()
            .map(|s| s.trim().to_string()),
        ..Default::default()
    };
    dir.write_entries("inventory.img", &[inventory])?;
    report.pages_written = ctx.pages.written;
    report.page_bytes = ctx.pages.written * 4096;
    report.memdump_time = ctx.memdump;
    report.memwrite_time = ctx.memwrite;
    let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
    let stats = pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: us(tree.freezing_time),
            frozen_time: us(tree.frozen_at.elapsed() + tree.freezing_time),
            memdump_time: us(ctx.memdump),
            memwrite_time: us(ctx.memwrite),
            pages_scanned: ctx.pages.scanned,
            pages_skipped_parent: 0,
            pages_written: ctx.pages.written,
            irmap_resolve: Some(0),
            pages_lazy: ctx.pages.lazy,
            page_pipes: Some(ctx.pages.pipes),
            page_pipe_bufs: Some(ctx.pages.pipes),
            shpages_scanned: Some(0),
            shpages_skipped_parent: Some(0),
            shpages_written: Some(0),
        }),
        restore: None,
    };
    match &opts.work_dir {
        Some(w) if w != &opts.images_dir => {
            ImageDir::create(w)?.write_entries("stats-dump", &[stats])?
        }
        _ => dir.write_entries("stats-dump", &[stats])?,
    }
    log.stage("tree", t, "pstree, files, inventory, stats written");
    log.log(
        crate::log::INFO,
        &format!(
            "dump: {} pages written ({} zero pages skipped)",
            ctx.pages.written, ctx.pages.zero
        ),
    );
    Ok(report)
}

fn write_task(
    dir: &ImageDir,
    imgs: &TaskImages,
    files_written: &mut std::collections::HashSet<u32>,
) -> Result<(), DumpError> {
    for (tid, core) in &imgs.cores {
        dir.write_entries(&format!("core-{tid}.img"), std::slice::from_ref(core))?;
    }
    let Some(a) = &imgs.alive else {
        return Ok(());
    };
    let pid = imgs.pid;
    dir.write_entries(&format!("mm-{pid}.img"), std::slice::from_ref(&a.mm))?;
    let name = format!("pagemap-{pid}.img");
    let mut w = dir.writer(&name)?;
    w.write_entry(&pb::PagemapHead {
        pages_id: a.pagemap.0,
    })?;
    for e in &a.pagemap.1 {
        w.write_entry(e)?;
    }
    sync_writer(dir, &name, w)?;
    dir.write_entries(&format!("fs-{pid}.img"), std::slice::from_ref(&a.fs))?;
    dir.write_entries(&format!("ids-{pid}.img"), std::slice::from_ref(&a.ids))?;
    if files_written.insert(a.ids.files_id) {
        dir.write_entries(&format!("fdinfo-{}.img", a.ids.files_id), &a.fdinfo)?;
    }
    Ok(())
}

fn sync_writer(
    dir: &ImageDir,
    name: &str,
    w: ferry_images::ImageWriter<std::io::BufWriter<std::fs::File>>,
) -> Result<(), DumpError> {
    let path = dir.path().join(name);
    let f = w.finish()?.into_inner().map_err(|e| DumpError::Io {
        path: path.display().to_string(),
        op: "flush",
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io_err(&path, "fsync"))
}

fn timens() -> Result<pb::TimensEntry, DumpError> {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        pb::Timespec {
            tv_sec: ts.tv_sec as u64,
            tv_nsec: ts.tv_nsec as u64,
        }
    };
    Ok(pb::TimensEntry {
        monotonic: now(libc::CLOCK_MONOTONIC),
        boottime: now(libc::CLOCK_BOOTTIME),
    })
}

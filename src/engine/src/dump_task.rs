//! One task of a dump: everything collected while it is frozen, parasite in and out.
//!
//! Kernel mechanism: the leader's registers, XSAVE area, masks and queued signals are read with
//! ptrace before anything is injected; a short remote-syscall session then asks the kernel for
//! what only the task can ask about itself through a pointer (PR_GET_TID_ADDRESS,
//! PR_GET_CHILD_SUBREAPER into a scratch page mapped and unmapped again) or a return value
//! (securebits, brk, THP-disable); the parasite answers the rest and drains the memory; the cure
//! puts registers, mask and address space back exactly. Other threads get the same reads and a
//! one-shot parasite run on their own stack.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::time::{Duration, Instant};

use ferry_images::pb;
use ferry_inject::{Parasite, Session, Stopped};

use crate::dump::DumpError;
use crate::freeze::FrozenTask;
use crate::mem::dump::{Contents, MappedFile, Vma};
use crate::mem::dump_pages::{self, PageStats};
use crate::{creds, files, mem, regs, sigact, timers};

/// State shared by all tasks of one dump.
#[derive(Debug)]
pub struct Ctx {
    /// Image directory.
    pub dir: std::path::PathBuf,
    /// The file table.
    pub files: files::dump::FileTable,
    /// Next pages-N.img number.
    pub next_pages_id: u32,
    /// Shmem objects already dumped.
    pub shmem_seen: HashSet<u64>,
    /// Zero page PFN.
    pub zero_pfn: u64,
    /// Page counters.
    pub pages: PageStats,
    /// Time spent scanning and draining memory.
    pub memdump: Duration,
    /// Time spent draining alone.
    pub memwrite: Duration,
    /// seccomp filters of every thread.
    pub seccomp: crate::seccomp::dump::SeccompTable,
    /// Pages files allocated before the freeze.
    pub reserve: crate::mem::reserve::Reserve,
    kobj: HashMap<i32, Vec<(i32, u32)>>,
    ns: HashMap<(usize, u64), u32>,
}

impl Ctx {
    /// A fresh context writing into `dir`.
    pub fn new(dir: std::path::PathBuf, zero_pfn: u64) -> Ctx {
        Ctx {
            dir,
            files: Default::default(),
            next_pages_id: 1,
            shmem_seen: HashSet::new(),
            zero_pfn,
            pages: PageStats::default(),
            memdump: Duration::ZERO,
            memwrite: Duration::ZERO,
            seccomp: Default::default(),
            reserve: Default::default(),
            kobj: HashMap::new(),
            ns: HashMap::new(),
        }
    }

    fn create(&self, name: &str) -> Result<File, DumpError> {
        let p = self.dir.join(name);
        // Read-write: the page copy thread maps the file shared.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .map_err(|source| DumpError::Io {
                path: p.display().to_string(),
                op: "create",
                source,
            })
    }

    /// The private pages file of `pid`: its reserve if it has one, else a fresh file.
    fn create_pages(&mut self, pid: i32, name: &str) -> Result<File, DumpError> {
        match self.reserve.take(pid, &self.dir.join(name)) {
            Some(f) => Ok(f),
            None => self.create(name),
        }
    }

    /// An id for kernel object `kind` (kcmp type) of `pid`, shared with any task kcmp finds
    /// holding the same object.
    fn kobj_id(&mut self, pid: i32, kind: i32) -> u32 {
        let reps = self.kobj.entry(kind).or_default();
        for &(other, id) in reps.iter() {
            // SAFETY: kcmp compares kernel objects; no memory is passed.
            if unsafe { libc::syscall(libc::SYS_kcmp, pid, other, kind, 0, 0) } == 0 {
                return id;
            }
        }
        let id = reps.len() as u32 + 1;
        reps.push((pid, id));
        id
    }

    /// Task kobj and namespace ids, CRIU's numbering of namespaces (pid, net, ipc, uts, time,
    /// mnt, user, cgroup in order of first sight).
    pub fn ids(&mut self, pid: i32) -> Result<pb::TaskKobjIdsEntry, DumpError> {
        const NS: [&str; 8] = ["pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup"];
        let mut ns = [None; 8];
        for (k, name) in NS.iter().enumerate() {
            let p = format!("/proc/{pid}/ns/{name}");
            let ino = match std::fs::metadata(&p) {
                Ok(m) => std::os::unix::fs::MetadataExt::ino(&m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(DumpError::Io {
                        path: p,
                        op: "stat",
                        source,
                    })
                }
            };
            let next = self.ns.len() as u32 + 1;
            ns[k] = Some(*self.ns.entry((k, ino)).or_insert(next));
        }
        Ok(pb::TaskKobjIdsEntry {
            vm_id: self.kobj_id(pid, 1),
            files_id: self.kobj_id(pid, 2),
            fs_id: self.kobj_id(pid, 3),
            sighand_id: self.kobj_id(pid, 4),
            pid_ns_id: ns[0],
            net_ns_id: ns[1],
            ipc_ns_id: ns[2],
            uts_ns_id: ns[3],
            time_ns_id: ns[4],
            mnt_ns_id: ns[5],
            user_ns_id: ns[6],
            cgroup_ns_id: ns[7],
        })
    }
}

/// What one task contributes to the images.
#[derive(Debug)]
pub struct TaskImages {
    /// pid.
    pub pid: i32,
    /// core-TID.img per thread, leader first.
    pub cores: Vec<(i32, pb::CoreEntry)>,
    /// mm, pagemap (head + entries), fs, ids, fdinfo; `None` for a zombie.
    pub alive: Option<AliveImages>,
    /// Time to scan pagemap, time to move the pages, pages moved.
    pub mem: (Duration, Duration, u64),
}

/// Images of a live task.
#[derive(Debug)]
pub struct AliveImages {
    /// mm-PID.img.
    pub mm: pb::MmEntry,
    /// pagemap-PID.img: pages id and entries.
    pub pagemap: (u32, Vec<pb::PagemapEntry>),
    /// fs-PID.img.
    pub fs: pb::FsEntry,
    /// ids-PID.img.
    pub ids: pb::TaskKobjIdsEntry,
    /// fdinfo entries (file `fdinfo-<files_id>.img`).
    pub fdinfo: Vec<pb::FdinfoEntry>,
}

/// Reads a small /proc file as a trimmed string.
fn proc_str(path: &str) -> Result<String, DumpError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(|source| DumpError::Io {
            path: path.into(),
            op: "read",
            source,
        })
}

/// Per-thread facts read with ptrace and from outside, before any session.
struct ThreadFacts {
    info: pb::ThreadInfoX86,
    sigmask: u64,
    pending: Vec<pb::SiginfoEntry>,
    rseq: Option<pb::RseqEntry>,
    seccomp: crate::seccomp::dump::ThreadSeccomp,
}

fn thread_facts(pid: i32, t: &Stopped, ctx: &mut Ctx) -> Result<ThreadFacts, DumpError> {
    let tid = t.pid();
    Ok(ThreadFacts {
        seccomp: ctx.seccomp.thread(pid, tid)?,
        info: regs::dump::thread_info(t)?,
        sigmask: t.sigmask().map_err(regs::dump::RegsError::from)?,
        pending: sigact::dump::pending(tid, false)?,
        rseq: regs::dump::rseq(tid)?,
    })
}

/// Answers of remote syscalls in a thread.
#[derive(Debug, Default, Clone, Copy)]
struct Remote {
    tid_addr: u64,
    secbits: u32,
    subreaper: bool,
    brk: u64,
    thp_disabled: bool,
}

fn remote(session: &mut Session, leader: bool) -> Result<Remote, DumpError> {
    let tid = session.pid();
    let fail = |what: &'static str, ret: i64| DumpError::Remote {
        tid,
        what,
        errno: -ret as i32,
    };
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let page = session.syscall(libc::SYS_mmap, &[0, 4096, rw, anon, u64::MAX, 0])?;
    if (-4095..0).contains(&page) {
        return Err(fail("mmap of a scratch page", page));
    }
    let page = page as u64;
    let mut r = Remote::default();
    let res = (|| {
        let ret = session.syscall(libc::SYS_prctl, &[libc::PR_GET_TID_ADDRESS as u64, page])?;
        if ret < 0 {
            return Err(fail("prctl(PR_GET_TID_ADDRESS)", ret));
        }
        let ret = session.syscall(libc::SYS_prctl, &[libc::PR_GET_SECUREBITS as u64])?;
        if ret < 0 {
            return Err(fail("prctl(PR_GET_SECUREBITS)", ret));
        }
        r.secbits = ret as u32;
        if leader {
            let arg = [libc::PR_GET_CHILD_SUBREAPER as u64, page + 8];
            let ret = session.syscall(libc::SYS_prctl, &arg)?;
            if ret < 0 {
                return Err(fail("prctl(PR_GET_CHILD_SUBREAPER)", ret));
            }
            r.brk = session.syscall(libc::SYS_brk, &[0])? as u64;
            let ret = session.syscall(libc::SYS_prctl, &[libc::PR_GET_THP_DISABLE as u64])?;
            r.thp_disabled = ret > 0;
        }
        let mut b = [0u8; 12];
        ferry_inject::mem::read(tid, page, &mut b).map_err(|e| DumpError::Remote {
            tid,
            what: "reading the scratch page",
            errno: match e {
                ferry_inject::mem::MemError::Access { source, .. } => {
                    source.raw_os_error().unwrap_or(libc::EIO)
                }
                _ => libc::EIO,
            },
        })?;
        r.tid_addr = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        r.subreaper = u32::from_le_bytes(b[8..].try_into().expect("4 bytes")) != 0;
        Ok(())
    })();
    let un = session.syscall(libc::SYS_munmap, &[page, 4096]);
    res?;
    if let Ok(ret) = un {
        if ret < 0 {
            return Err(fail("munmap of the scratch page", ret));
        }
    }
    un?;
    Ok(r)
}

fn sched(tid: i32) -> (Option<i32>, Option<u32>, Option<u32>) {
    // SAFETY: plain syscalls on a tid; errors are returned as -1.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    // SAFETY: as above (errno is irrelevant: a nice of -1 is a valid answer).
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    let prio = if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
        let mut p = libc::sched_param { sched_priority: 0 };
        // SAFETY: `p` is a valid out-pointer.
        unsafe { libc::sched_getparam(tid, &mut p) };
        Some(p.sched_priority as u32)
    } else {
        None
    };
    (Some(nice), Some(policy.max(0) as u32), prio)
}

fn robust_list(tid: i32) -> (u64, u32) {
    let (mut head, mut len) = (0u64, 0usize);
    // SAFETY: get_robust_list writes the two out-pointers.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) };
    if r == 0 {
        (head, len as u32)
    } else {
        (0, 0)
    }
}

fn thread_core(
    tid: i32,
    pid: i32,
    f: &ThreadFacts,
    rem: &Remote,
    tr: &ferry_inject::abi::ThreadResult,
) -> Result<pb::ThreadCoreEntry, DumpError> {
    let (nice, policy, prio) = sched(tid);
    let (rla, rla_len) = robust_list(tid);
    Ok(pb::ThreadCoreEntry {
        futex_rla: rla,
        futex_rla_len: rla_len,
        sched_nice: nice,
        sched_policy: policy,
        sched_prio: prio,
        blk_sigset: (tid != pid).then_some(f.sigmask),
        sas: Some(sas(tr)),
        // Per thread, as the kernel keeps it (CRIU's placement too).
        pdeath_sig: (tr.pdeath_sig != 0).then_some(tr.pdeath_sig as u32),
        signals_p: sigact::dump::queue(f.pending.clone()),
        creds: Some(creds::dump::creds(pid, tid, rem.secbits)?),
        seccomp_mode: (f.seccomp.mode != 0).then_some(f.seccomp.mode as i32),
        seccomp_filter: f.seccomp.filter,
        comm: Some(proc_str(&format!("/proc/{pid}/task/{tid}/comm"))?),
        blk_sigset_extended: None,
        rseq_entry: f.rseq,
        cg_set: Some(1),
    })
}

fn sas(t: &ferry_inject::abi::ThreadResult) -> pb::ThreadSasEntry {
    pb::ThreadSasEntry {
        ss_sp: t.altstack.sp,
        ss_size: t.altstack.size,
        ss_flags: t.altstack.flags as u32,
    }
}

/// A zombie: CRIU keeps only its core with state and exit code.
fn zombie(pid: i32, exit_code: u32) -> Result<TaskImages, DumpError> {
    let comm = proc_str(&format!("/proc/{pid}/comm")).unwrap_or_default();
    let tc = pb::TaskCoreEntry {
        task_state: 2,
        exit_code,
        comm,
        ..Default::default()
    };
    let core = pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        tc: Some(tc),
        ..Default::default()
    };
    Ok(TaskImages {
        pid,
        cores: vec![(pid, core)],
        alive: None,
        mem: Default::default(),
    })
}

/// Dumps task `task` (its threads' handles are taken and put back, stopped, on success).
pub fn dump_task(
    task: &mut FrozenTask,
    ctx: &mut Ctx,
    shell_job: bool,
) -> Result<TaskImages, DumpError> {
    let pid = task.ids.pid;
    if let Some(code) = task.zombie {
        return zombie(pid, code);
    }
    let mut vmas = mem::dump::vmas(pid)?;
    // exe and mapped files first, then fds: the order CRIU numbers files.img in.
    let exe = exe_file(pid)?;
    let exe_id = ctx.files.reg_object(&exe, 0, true);
    for v in vmas.iter_mut() {
        v.entry.shmid = match ctx.files.mapping(pid, v)? {
            Some(id) => u64::from(id),
            None => v.entry.shmid,
        };
    }
    let mmf = mem::dump::mm_fields(pid)?;
    let fdinfo = ctx.files.dump_fds(pid, shell_job)?;
    let ids = ctx.ids(pid)?;
    let stat = crate::freeze::read_stat(pid)?.ok_or(DumpError::Vanished { pid })?;

    let leader = task.threads[0]
        .stopped
        .take()
        .ok_or(DumpError::Vanished { pid })?;
    let lf = thread_facts(pid, &leader, ctx)?;
    let shared = sigact::dump::pending(pid, true)?;
    let mut session = Session::begin(leader)?;
    let lrem = remote(&mut session, true)?;
    let mut parasite = Parasite::inject(session)?;
    let acts = parasite.sigactions()?;
    let itimers = parasite.itimers()?;
    let ptimers = timers::dump::proc_timers(pid)?;
    let ids_list: Vec<i32> = ptimers.iter().map(|t| t.id).collect();
    let posix = parasite.posix_timers(&ids_list)?;
    let misc = parasite.misc()?;
    let lthread = parasite.thread()?;

    let mut cores = Vec::new();
    for i in 1..task.threads.len() {
        let tid = task.threads[i].tid;
        let t = task.threads[i]
            .stopped
            .take()
            .ok_or(DumpError::Vanished { pid: tid })?;
        let f = thread_facts(pid, &t, ctx)?;
        let mut s = Session::begin(t)?;
        let rem = remote(&mut s, false)?;
        let t = s.end()?;
        let (tr, t) = parasite.thread_state(t)?;
        task.threads[i].stopped = Some(t);
        let mut info = f.info.clone();
        info.clear_tid_addr = rem.tid_addr;
        let core = pb::CoreEntry {
            mtype: pb::core_entry::March::X8664 as i32,
            thread_info: Some(info),
            tc: None,
            ids: None,
            thread_core: Some(thread_core(tid, pid, &f, &rem, &tr)?),
        };
        cores.push((tid, core));
    }

    // Memory: scan pagemap, then drain through the parasite into pages-N.img.
    let t0 = Instant::now();
    let mut stats = PageStats::default();
    let runs = dump_pages::scan(pid, &vmas, ctx.zero_pfn, &mut stats)?;
    let pages_id = ctx.next_pages_id;
    ctx.next_pages_id += 1;
    let pname = format!("pages-{pages_id}.img");
    let out = ctx.create_pages(pid, &pname)?;
    let t1 = Instant::now();
    dump_pages::write(&mut parasite, &runs, &out, &pname, &mut stats)?;
    let mem = (t1 - t0, t1.elapsed(), stats.written);
    ctx.memwrite += t1.elapsed();
    ctx.memdump += t0.elapsed();
    out.sync_all().map_err(|source| DumpError::Io {
        path: pname.clone(),
        op: "fsync",
        source,
    })?;
    let leader = parasite.cure()?;
    task.threads[0].stopped = Some(leader);
    ctx.pages.scanned += stats.scanned;
    ctx.pages.written += stats.written;
    ctx.pages.zero += stats.zero;
    ctx.pages.lazy += stats.lazy;
    ctx.pages.pipes += stats.pipes;

    dump_shmem(pid, &vmas, ctx)?;
    let fs = crate::fs::dump::fs_entry(pid, misc.umask, &mut ctx.files)?;
    let mm = pb::MmEntry {
        mm_start_code: mmf.start_code,
        mm_end_code: mmf.end_code,
        mm_start_data: mmf.start_data,
        mm_end_data: mmf.end_data,
        mm_start_stack: mmf.start_stack,
        mm_start_brk: mmf.start_brk,
        mm_brk: lrem.brk,
        mm_arg_start: mmf.arg_start,
        mm_arg_end: mmf.arg_end,
        mm_env_start: mmf.env_start,
        mm_env_end: mmf.env_end,
        exe_file_id: exe_id,
        mm_saved_auxv: mmf.auxv,
        vmas: vmas.into_iter().map(|v| v.entry).collect(),
        dumpable: Some(misc.dumpable),
        aios: Vec::new(),
        thp_disabled: Some(lrem.thp_disabled),
    };

    let tc = pb::TaskCoreEntry {
        task_state: if task.stopped { 3 } else { 1 },
        exit_code: 0,
        personality: misc.personality,
        flags: stat.flags as u32,
        blk_sigset: lf.sigmask,
        comm: proc_str(&format!("/proc/{pid}/comm"))?,
        timers: Some(timers::dump::timers(&itimers, &ptimers, &posix)),
        rlimits: Some(creds::dump::rlimits(pid)?),
        cg_set: None,
        signals_s: sigact::dump::queue(shared),
        old_seccomp_mode: None,
        old_seccomp_filter: None,
        loginuid: proc_str(&format!("/proc/{pid}/loginuid"))?.parse().ok(),
        oom_score_adj: proc_str(&format!("/proc/{pid}/oom_score_adj"))?
            .parse()
            .ok(),
        sigactions: sigact::dump::sigactions(&acts),
        child_subreaper: Some(lrem.subreaper),
        blk_sigset_extended: None,
    };
    let mut info = lf.info.clone();
    info.clear_tid_addr = lrem.tid_addr;
    let lcore = thread_core(pid, pid, &lf, &lrem, &lthread)?;
    let core = pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(info),
        tc: Some(tc),
        ids: None,
        thread_core: Some(lcore),
    };
    cores.insert(0, (pid, core));
    Ok(TaskImages {
        pid,
        cores,
        alive: Some(AliveImages {
            mm,
            pagemap: (pages_id, dump_pages::entries(&runs)),
            fs,
            ids,
            fdinfo,
        }),
        mem,
    })
}

fn exe_file(pid: i32) -> Result<MappedFile, DumpError> {
    use std::os::unix::fs::MetadataExt;
    let link = format!("/proc/{pid}/exe");
    let io = |source| DumpError::Io {
        path: link.clone(),
        op: "read",
        source,
    };
    let path = std::fs::read_link(&link).map_err(io)?;
    let md = std::fs::metadata(&link).map_err(io)?;
    Ok(MappedFile {
        path: path.to_string_lossy().into_owned(),
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode(),
        size: md.size(),
    })
}

/// Writes each shared anonymous object the task maps, once per dump.
fn dump_shmem(pid: i32, vmas: &[Vma], ctx: &mut Ctx) -> Result<(), DumpError> {
    for v in vmas.iter() {
        let Contents::Shmem { ino } = v.contents else {
            continue;
        };
        if !ctx.shmem_seen.insert(ino) {
            continue;
        }
        let pages_id = ctx.next_pages_id;
        ctx.next_pages_id += 1;
        let pname = format!("pages-{pages_id}.img");
        let out = ctx.create(&pname)?;
        let (entries, nr) = dump_pages::shmem(pid, v, &out, &pname)?;
        out.sync_all().map_err(|source| DumpError::Io {
            path: pname.clone(),
            op: "fsync",
            source,
        })?;
        ctx.pages.written += nr;
        let dir = ferry_images::ImageDir::open(&ctx.dir)?;
        let name = format!("pagemap-shmem-{ino}.img");
        let mut w = dir.writer(&name)?;
        w.write_entry(&pb::PagemapHead { pages_id })?;
        for e in &entries {
            w.write_entry(e)?;
        }
        let f = w.finish()?.into_inner().map_err(|e| DumpError::Io {
            path: name.clone(),
            op: "flush",
            source: e.into_error(),
        })?;
        f.sync_all().map_err(|source| DumpError::Io {
            path: name.clone(),
            op: "fsync",
            source,
        })?;
    }
    Ok(())
}

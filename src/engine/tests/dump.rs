//! End-to-end dump tests, as root, against real processes: each workload is dumped with
//! ferry-criu, every image is decoded by Debian's crit and verified by ferry-images, and the
//! images are compared with what /proc says of the live tasks.

mod crit;
mod dump_util;
mod workload;

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use dump_util::*;
use ferry_images::pb;

fn core(dir: &std::path::Path, tid: i32) -> pb::CoreEntry {
    one(dir, &format!("core-{tid}.img"))
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

#[test]
fn dump_heap_leave_running() {
    let w = Workload::spawn("heap", "64");
    w.wait_ticks(2);
    let pid = w.pid;
    let before = maps(pid);
    let fds_before = fds(pid);
    let d = shm_dir();
    let out = dump(pid, d.path(), &["--leave-running"]);
    assert_ok(&out, d.path());
    check_images(d.path());
    check_log(d.path());
    // The pages file was allocated before the freeze (mem::reserve) and linked in.
    let log = std::fs::read_to_string(d.path().join("dump.log")).unwrap();
    assert!(log.contains(" for 1 pages files"), "{log}");

    let tree: Vec<pb::PstreeEntry> = all(d.path(), "pstree.img");
    assert_eq!(tree.len(), 1);
    assert_eq!(
        (tree[0].pid, tree[0].ppid, tree[0].pgid, tree[0].sid),
        (pid as u32, 0, pid as u32, pid as u32)
    );
    assert_eq!(tree[0].threads, vec![pid as u32]);

    let mm = check_mm(d.path(), pid, &before);
    // The 64 MiB buffer is in the images, byte for byte (byte i = i % 251).
    let buf = hex(w.info["buf"].trim_start_matches("0x"));
    let len: usize = w.info["len"].parse().unwrap();
    let got = image_bytes(d.path(), pid, buf, len);
    let bad = got
        .iter()
        .enumerate()
        .position(|(i, b)| *b != (i % 251) as u8);
    assert_eq!(bad, None, "heap byte differs in the images");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let files: Vec<pb::FileEntry> = all(d.path(), "files.img");
    let exe_entry = files.iter().find(|f| f.id == mm.exe_file_id).unwrap();
    assert_eq!(exe_entry.reg.as_ref().unwrap().name, exe.to_str().unwrap());

    let c = core(d.path(), pid);
    let tc = c.tc.unwrap();
    assert_eq!(tc.task_state, 1);
    assert_eq!(tc.comm, "ferry-dumpee");
    assert_eq!(tc.blk_sigset, hex(&status(pid, "SigBlk")));
    assert_eq!(tc.sigactions.len(), 62);
    let ti = c.thread_info.unwrap();
    let in_vma = |a: u64, x: bool| {
        before
            .iter()
            .any(|m| m.0 <= a && a < m.1 && (!x || m.2.as_bytes()[2] == b'x'))
    };
    assert!(
        in_vma(ti.gpregs.ip, true),
        "ip {:#x} not in code",
        ti.gpregs.ip
    );
    assert!(
        in_vma(ti.gpregs.sp, false),
        "sp {:#x} not mapped",
        ti.gpregs.sp
    );
    assert_ne!(ti.gpregs.fs_base, 0, "static glibc sets a TLS base");
    assert_eq!(ti.fpregs.xmm_space.len(), 64);
    let th = c.thread_core.unwrap();
    let cr = th.creds.unwrap();
    let uid: Vec<u32> = status(pid, "Uid")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(vec![cr.uid, cr.euid, cr.suid, cr.fsuid], uid);
    assert_eq!(cr.cap_eff.len(), 2);
    let rl = tc.rlimits.unwrap().rlimits;
    assert_eq!(rl.len(), 16);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading a limit of our child into `lim`.
    unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    assert_eq!((rl[7].cur, rl[7].max), (lim.rlim_cur, lim.rlim_max));

    // std fds: 0 and 2 are /dev/null (REG), 1 is the pipe to this test.
    let ids: pb::TaskKobjIdsEntry = one(d.path(), &format!("ids-{pid}.img"));
    let fdi: Vec<pb::FdinfoEntry> = all(d.path(), &format!("fdinfo-{}.img", ids.files_id));
    assert_eq!(fdi.len(), fds_before.len());
    let ty = |fd: u32| fdi.iter().find(|f| f.fd == fd).unwrap().r#type;
    assert_eq!(ty(0), pb::FdTypes::Reg as i32);
    assert_eq!(ty(1), pb::FdTypes::Pipe as i32);
    let fs: pb::FsEntry = one(d.path(), &format!("fs-{pid}.img"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let cwd_e = files.iter().find(|f| f.id == fs.cwd_id).unwrap();
    assert_eq!(cwd_e.reg.as_ref().unwrap().name, cwd.to_str().unwrap());
    assert_eq!(
        fs.umask,
        Some(u32::from_str_radix(&status(pid, "Umask"), 8).unwrap())
    );

    let stats: pb::StatsEntry = one(d.path(), "stats-dump");
    let pages = stats.dump.unwrap().pages_written;
    assert!(pages >= (64 << 20) / 4096, "{pages} pages written");

    // Never harmed: same maps, same fds, still working.
    assert_eq!(maps(pid), before);
    assert_eq!(fds(pid), fds_before);
    w.wait_ticks(3);
}

#[test]
fn dump_multithreaded() {
    let w = Workload::spawn("threads", "3");
    w.wait_ticks(2);
    let pid = w.pid;
    let before = maps(pid);
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    tids.sort();
    assert_eq!(tids.len(), 4);
    let d = shm_dir();
    assert_ok(&dump(pid, d.path(), &["-R"]), d.path());
    check_images(d.path());
    let tree: Vec<pb::PstreeEntry> = all(d.path(), "pstree.img");
    let mut got = tree[0].threads.clone();
    assert_eq!(got[0], pid as u32, "leader first");
    got.sort();
    assert_eq!(got, tids);
    for &tid in &tids {
        let c = core(d.path(), tid as i32);
        let ti = c.thread_info.unwrap();
        assert!(before
            .iter()
            .any(|m| m.0 <= ti.gpregs.sp && ti.gpregs.sp < m.1));
        let th = c.thread_core.unwrap();
        if tid == pid as u32 {
            assert!(c.tc.is_some());
        } else {
            assert!(c.tc.is_none(), "thread {tid} has no task core");
            let blk = status(tid as i32, "SigBlk");
            assert_eq!(th.blk_sigset, Some(hex(&blk)));
            assert_ne!(ti.clear_tid_addr, 0, "pthread sets clear_child_tid");
            assert_ne!(ti.gpregs.fs_base, 0);
        }
    }
    assert_eq!(maps(pid), before);
    w.wait_ticks(3);
}

#[test]
fn dump_tree_with_session_groups_and_zombie() {
    let w = Workload::spawn("tree", "0");
    w.wait_ticks(1);
    let pid = w.pid;
    let a: i32 = w.info["a"].parse().unwrap();
    let b: i32 = w.info["b"].parse().unwrap();
    let z: i32 = w.info["zombie"].parse().unwrap();
    let d = shm_dir();
    assert_ok(&dump(pid, d.path(), &["--leave-running"]), d.path());
    check_images(d.path());
    let tree: Vec<pb::PstreeEntry> = all(d.path(), "pstree.img");
    let mut pids: Vec<i32> = vec![pid];
    pids.extend(descendants(pid));
    assert_eq!(tree.len(), pids.len(), "{tree:?}");
    assert_eq!(tree[0].pid, pid as u32, "root first");
    for e in &tree {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", e.pid)).unwrap();
        let f: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split(' ').collect();
        let (ppid, pgid, sid): (u32, u32, u32) = (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        assert_eq!((e.pgid, e.sid), (pgid, sid), "task {}", e.pid);
        assert_eq!(
            e.ppid,
            if e.pid == pid as u32 { 0 } else { ppid },
            "task {}",
            e.pid
        );
        // Parents come before their children.
        if e.ppid != 0 {
            let pi = tree.iter().position(|x| x.pid == e.ppid).unwrap();
            let ci = tree.iter().position(|x| x.pid == e.pid).unwrap();
            assert!(pi < ci);
        }
    }
    let eb = tree.iter().find(|e| e.pid == b as u32).unwrap();
    assert_eq!(eb.pgid, b as u32, "B leads its own group");
    let ea = tree.iter().find(|e| e.pid == a as u32).unwrap();
    assert_eq!((ea.pgid, ea.sid), (pid as u32, pid as u32));
    // The zombie: core with state dead and the exit status, nothing else.
    let zc = core(d.path(), z).tc.unwrap();
    assert_eq!(zc.task_state, 2);
    assert_eq!(zc.exit_code, 7 << 8);
    assert!(!d.path().join(format!("mm-{z}.img")).exists());
    for p in [pid, a, b] {
        assert!(d.path().join(format!("mm-{p}.img")).exists());
        // Sleeping or, caught between ticks, running: neither stopped (T/t) nor dead.
        let st = status(p, "State");
        assert!(
            matches!(st.chars().next(), Some('S' | 'R')),
            "task {p} runs on: {st}"
        );
    }
    // The shared anonymous area: one shmem object, dumped once, the same shmid everywhere.
    let shm = hex(w.info["shm"].trim_start_matches("0x"));
    let mut shmids = Vec::new();
    for p in [pid, a, b] {
        let mm: pb::MmEntry = one(d.path(), &format!("mm-{p}.img"));
        let v = mm.vmas.iter().find(|v| v.start == shm).expect("shared VMA");
        assert_eq!(v.status, 1 | 1 << 8, "VMA_AREA_REGULAR | VMA_ANON_SHARED");
        assert_eq!(v.flags, 0x21, "MAP_SHARED | MAP_ANON");
        shmids.push(v.shmid);
    }
    assert!(shmids.iter().all(|s| *s == shmids[0]));
    let name = format!("pagemap-shmem-{}.img", shmids[0]);
    let d2 = ferry_images::ImageDir::open(d.path()).unwrap();
    let data = d2.read(&name).unwrap();
    let mut r = ferry_images::ImageReader::new(&name, &data).unwrap();
    let head: pb::PagemapHead = r.next_entry().unwrap().unwrap();
    let e: Vec<pb::PagemapEntry> = r.entries().unwrap();
    assert_eq!((e.len(), e[0].vaddr, e[0].nr_pages), (1, 0, Some(16)));
    let pages = std::fs::read(d.path().join(format!("pages-{}.img", head.pages_id))).unwrap();
    assert_eq!(pages.len(), 65536);
    assert!(pages
        .iter()
        .enumerate()
        .all(|(i, b)| *b == ((i * 7 + 3) % 256) as u8));
    w.wait_ticks(3);
}

#[test]
fn dump_stopped_task_stays_stopped() {
    let w = Workload::spawn("heap", "1");
    w.wait_ticks(1);
    let pid = w.pid;
    // SAFETY: stopping our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    while !status(pid, "State").starts_with('T') {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let d = shm_dir();
    assert_ok(&dump(pid, d.path(), &["--leave-running"]), d.path());
    check_images(d.path());
    assert_eq!(core(d.path(), pid).tc.unwrap().task_state, 3);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        status(pid, "State").starts_with('T'),
        "stopped again after the dump"
    );
    let n = w.ticks();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(w.ticks(), n, "a stopped task does not tick");
    // SAFETY: continuing our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    w.wait_ticks(2);
}

#[test]
fn dump_pending_signals_and_timers() {
    let w = Workload::spawn("sigs", "0");
    w.wait_ticks(1);
    let pid = w.pid;
    let (pnd, shd, blk) = (
        status(pid, "SigPnd"),
        status(pid, "ShdPnd"),
        status(pid, "SigBlk"),
    );
    let d = shm_dir();
    assert_ok(&dump(pid, d.path(), &["-R"]), d.path());
    check_images(d.path());
    let c = core(d.path(), pid);
    let tc = c.tc.unwrap();
    let th = c.thread_core.unwrap();
    let signo = |s: &pb::SiginfoEntry| i32::from_le_bytes(s.siginfo[..4].try_into().unwrap());
    let private: Vec<i32> = th.signals_p.unwrap().signals.iter().map(signo).collect();
    assert_eq!(private, vec![libc::SIGUSR1]);
    let shared = tc.signals_s.unwrap().signals;
    let sigs: Vec<i32> = shared.iter().map(signo).collect();
    assert_eq!(sigs, vec![libc::SIGUSR2, libc::SIGRTMIN() + 1]);
    assert!(shared.iter().all(|s| s.siginfo.len() == 128));
    // si_value of the sigqueue'd rt signal at offset 24.
    assert_eq!(
        u32::from_le_bytes(shared[1].siginfo[24..28].try_into().unwrap()),
        0xfe01
    );
    assert_eq!(tc.blk_sigset, hex(&blk));
    let handler = hex(w.info["handler"].trim_start_matches("0x"));
    let usr1 = &tc.sigactions[8]; // entry 9 = SIGUSR1
    assert_eq!(usr1.sigaction, handler);
    assert_eq!(
        usr1.flags & 0x1000_0004,
        0x1000_0004,
        "SA_RESTART|SA_SIGINFO"
    );
    let t = tc.timers.unwrap();
    assert_eq!(t.real.isec, 3600);
    assert!(t.real.vsec <= 3600 && t.real.vsec > 3500);
    assert_eq!(t.posix.len(), 1);
    let p = &t.posix[0];
    assert_eq!(
        (p.clock_id, p.si_signo, p.sival_ptr, p.isec),
        (1, 10, 0x5157, 7200)
    );
    // Nothing was delivered or lost.
    assert_eq!((status(pid, "SigPnd"), status(pid, "ShdPnd")), (pnd, shd));
    w.wait_ticks(2);
}

#[test]
fn dump_avx_registers() {
    let w = Workload::spawn("avx", "0");
    let pid = w.pid;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let d = shm_dir();
    assert_ok(&dump(pid, d.path(), &["-R"]), d.path());
    check_images(d.path());
    let fp = core(d.path(), pid).thread_info.unwrap().fpregs;
    let xs = fp.xsave.unwrap();
    assert_ne!(xs.xstate_bv & 4, 0, "AVX state in use");
    assert_eq!(xs.ymmh_space.len(), 64);
    for r in 1..16u32 {
        let lo = u32::from_le_bytes([(0x40 + 2 * r) as u8; 4]);
        let hi = u32::from_le_bytes([(0x41 + 2 * r) as u8; 4]);
        let i = r as usize * 4;
        assert_eq!(&fp.xmm_space[i..i + 4], &[lo; 4], "xmm{r}");
        assert_eq!(&xs.ymmh_space[i..i + 4], &[hi; 4], "ymm{r} upper half");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let st = status(pid, "State");
    assert!(
        st.starts_with('R') || st.starts_with('S'),
        "avx workload runs on: {st}"
    );
}

#[test]
fn dump_without_leave_running_kills_after_sync() {
    let mut w = Workload::spawn("heap", "8");
    w.wait_ticks(1);
    let d = shm_dir();
    assert_ok(&dump(w.pid, d.path(), &[]), d.path());
    let st = w.wait_exit();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "killed after the dump: {st:?}"
    );
    check_images(d.path());
    let log = std::fs::read_to_string(d.path().join("dump.log")).unwrap();
    let sync = log.find("stage sync").unwrap();
    let kill = log.find("stage kill").unwrap();
    assert!(
        sync < kill,
        "killed only after the images were synced:\n{log}"
    );
}

#[test]
fn criu_check_reports_features() {
    let out = criu(&["check", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for f in [
        "ptrace seize",
        "pidfd_getfd",
        "clone3 set_tid",
        "process_vm_readv",
        "memfd",
        "Looks good",
    ] {
        assert!(text.contains(f), "{f} missing in:\n{text}");
    }
}

#[test]
fn dump_shell_job_tty() {
    // Opened close-on-exec, so workloads other tests fork meanwhile do not inherit them.
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .unwrap();
    let (mut n, mut unlock) = (0u32, 0i32);
    // SAFETY: TIOCSPTLCK and TIOCGPTN take an int pointer each.
    unsafe {
        assert_eq!(
            libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock),
            0
        );
        assert_eq!(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n), 0);
    }
    let pts = std::path::PathBuf::from(format!("/dev/pts/{n}"));
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&pts)
        .unwrap();
    let index = n;
    let w = Workload::spawn_with("heap", "1", std::process::Stdio::from(slave));
    w.wait_ticks(1);
    let d = shm_dir();
    let out = dump(w.pid, d.path(), &["-R"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "task {}: fd 0: unsupported file type tty (use --shell-job",
            w.pid
        )),
        "{err}"
    );
    let d = shm_dir();
    assert_ok(&dump(w.pid, d.path(), &["-R", "--shell-job"]), d.path());
    check_images(d.path());
    let files: Vec<pb::FileEntry> = all(d.path(), "files.img");
    let tty = files
        .iter()
        .find_map(|f| f.tty.as_ref())
        .expect("a TTY entry");
    let regf = files.iter().find(|f| Some(f.id) == tty.regf_id).unwrap();
    assert_eq!(regf.reg.as_ref().unwrap().name, pts.to_str().unwrap());
    let infos: Vec<pb::TtyInfoEntry> = all(d.path(), "tty-info.img");
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].r#type, pb::TtyType::Pty as i32);
    assert_eq!(infos[0].pty.unwrap().index, index);
    assert!(infos[0].termios.as_ref().unwrap().c_cc.len() >= 17);
    w.wait_ticks(2);
    drop(master);
}

#[test]
fn dump_while_the_tree_forks_and_clones() {
    let w = Workload::spawn("churn", "0");
    w.wait_ticks(1);
    for i in 0..5 {
        let d = shm_dir();
        assert_ok(&dump(w.pid, d.path(), &["-R"]), d.path());
        let tree: Vec<pb::PstreeEntry> = all(d.path(), "pstree.img");
        assert_eq!(tree[0].pid, w.pid as u32, "run {i}");
        // Every task and thread in the tree has its core image.
        for e in &tree {
            for t in &e.threads {
                assert!(
                    d.path().join(format!("core-{t}.img")).exists(),
                    "run {i}: core-{t}"
                );
            }
        }
        check_images(d.path());
    }
    w.wait_ticks(3);
}

#[test]
fn dump_seccomp_filters() {
    let w = Workload::spawn("seccomp", "0");
    w.wait_ticks(1);
    let pid = w.pid;
    let d = shm_dir();
    assert_ok(&dump(pid, d.path(), &["-R"]), d.path());
    check_images(d.path());
    let sc: pb::SeccompEntry = one(d.path(), "seccomp.img");
    let f = &sc.seccomp_filters;
    assert_eq!(f.len(), 2, "two distinct filters, shared by both threads");
    assert_eq!((f[0].filter.len(), f[0].prev, f[0].flags), (8, None, None));
    assert_eq!((f[1].filter.len(), f[1].prev), (16, Some(0)));
    assert_eq!(f[1].flags, Some(2), "SECCOMP_FILTER_FLAG_LOG");
    let tree: Vec<pb::PstreeEntry> = all(d.path(), "pstree.img");
    assert_eq!(tree[0].threads.len(), 2);
    for t in &tree[0].threads {
        let th = core(d.path(), *t as i32).thread_core.unwrap();
        assert_eq!(
            (th.seccomp_mode, th.seccomp_filter),
            (Some(2), Some(1)),
            "thread {t}"
        );
    }
    assert_eq!(status(pid, "Seccomp"), "2");
    w.wait_ticks(3);
}

//! Real injections into real processes (run as root): remote syscalls, the parasite's commands
//! compared with what the victim set, exact cure, and fault paths that must end in typed errors.

mod common;

use common::{maps, proc_state, wait_in_syscall, Victim};
use ferry_inject::ptrace::Regs;
use ferry_inject::{
    seize, Parasite, ParasiteError, PtraceError, SeizedState, Session, SessionError, Stopped,
};

fn regs_eq(a: &Regs, b: &Regs) -> bool {
    let f = |r: &Regs| {
        [
            r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx,
            r.rdx, r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base,
            r.gs_base, r.ds, r.es, r.fs, r.gs,
        ]
    };
    f(a) == f(b)
}

/// Checks the task is back exactly as `saved` says, then detaches.
fn check_cured(task: Stopped, saved: &ferry_inject::session::SavedState, maps_before: &str) {
    let pid = task.pid();
    assert!(
        regs_eq(&task.regs().unwrap(), &saved.regs),
        "registers differ after cure"
    );
    let xstate = task.xstate().unwrap();
    let first_diff = xstate.iter().zip(&saved.xstate).position(|(a, b)| a != b);
    assert_eq!(xstate.len(), saved.xstate.len(), "XSAVE area size changed");
    assert_eq!(
        first_diff, None,
        "XSAVE state differs after cure (first differing byte)"
    );
    assert_eq!(
        task.sigmask().unwrap(),
        saved.sigmask,
        "signal mask differs after cure"
    );
    assert_eq!(
        maps(pid),
        maps_before,
        "/proc/{pid}/maps differs after cure"
    );
    task.detach().unwrap();
}

fn begin(v: &Victim) -> (Session, String) {
    if v.mode == "sleep" || v.mode == "seccomp" {
        // Seize it asleep in clock_nanosleep: the cure must let that syscall restart.
        assert!(
            wait_in_syscall(v.pid(), libc::SYS_clock_nanosleep),
            "victim never slept"
        );
    }
    let stopped = seize(v.pid()).unwrap().interrupt().unwrap();
    assert_eq!(stopped.seized_state(), SeizedState::Alive);
    let maps_before = maps(v.pid());
    (Session::begin(stopped).unwrap(), maps_before)
}

#[test]
fn remote_syscalls_and_exact_restore() {
    for mode in ["sleep", "spin"] {
        let mut v = Victim::spawn(mode);
        let (mut s, maps_before) = begin(&v);
        let saved = s.saved().clone();
        if mode == "sleep" {
            // Interrupted inside nanosleep, which the kernel restarts through restart_syscall.
            assert_eq!(saved.regs.orig_rax, libc::SYS_clock_nanosleep as u64);
            assert_eq!(saved.regs.rax as i64, -516, "-ERESTART_RESTARTBLOCK");
        }
        // The victim blocks SIGUSR2 itself; the session must not lose that.
        assert_eq!(
            saved.sigmask & (1 << (libc::SIGUSR2 - 1)),
            1 << (libc::SIGUSR2 - 1)
        );
        assert_eq!(s.syscall(libc::SYS_getpid, &[]).unwrap(), v.pid() as i64);
        assert_eq!(s.syscall(libc::SYS_gettid, &[]).unwrap(), v.pid() as i64);
        assert_eq!(
            s.syscall(libc::SYS_getppid, &[]).unwrap(),
            std::process::id() as i64
        );
        // Errors come back as -errno, not as failures of the mechanism.
        assert_eq!(
            s.syscall(libc::SYS_close, &[987_654]).unwrap(),
            -libc::EBADF as i64
        );
        let task = s.end().unwrap();
        check_cured(task, &saved, &maps_before);
        v.expect_ticks(5);
    }
}

#[test]
fn parasite_reports_what_the_victim_set() {
    let mut v = Victim::spawn("sleep");
    let (s, maps_before) = begin(&v);
    let saved = s.saved().clone();
    let mut p = Parasite::inject(s).unwrap();

    // While the parasite is in, its area is mapped in the task, shared and executable.
    let m = maps(v.pid());
    let line = format!("{:x}-{:x} rwxs", p.base(), p.base() + p.mapped_len() as u64);
    assert!(
        m.lines()
            .any(|l| l.starts_with(&line) && l.contains("memfd:ferry-parasite")),
        "{m}"
    );

    let hello = p.hello().unwrap();
    assert_eq!((hello.pid, hello.tid), (v.pid(), v.pid()));

    let acts = p.sigactions().unwrap().actions;
    let usr1 = acts[libc::SIGUSR1 as usize - 1];
    assert_eq!(usr1.handler, v.info.handler);
    let want = (libc::SA_SIGINFO | libc::SA_RESTART) as u64;
    assert_eq!(usr1.flags & want, want, "flags {:#x}", usr1.flags);
    assert_eq!(usr1.mask, 1 << (libc::SIGUSR2 - 1));
    assert_ne!(usr1.restorer, 0, "glibc installs a restorer");
    assert_eq!(acts[libc::SIGPIPE as usize - 1].handler, 1, "SIG_IGN");
    assert_eq!(acts[libc::SIGTERM as usize - 1].handler, 0, "SIG_DFL");
    assert_eq!(acts[libc::SIGKILL as usize - 1], Default::default());

    let th = p.thread().unwrap();
    assert_eq!(th.tid, v.pid());
    assert_eq!(
        (th.altstack.sp, th.altstack.size),
        (v.info.altsp, v.info.altsize)
    );
    assert_eq!(th.altstack.flags, 0);
    assert_eq!(
        th.pdeath_sig,
        libc::SIGWINCH,
        "the leader's own pdeath signal"
    );

    let it = p.itimers().unwrap();
    assert_eq!(
        (it.real.interval.sec, it.real.interval.usec),
        (100, 250_000)
    );
    assert!(
        it.real.value.sec <= 1000 && it.real.value.sec >= 900,
        "{:?}",
        it.real
    );
    assert_eq!(it.virt, Default::default());
    assert_eq!(it.prof, Default::default());

    let misc = p.misc().unwrap();
    assert_eq!(misc.umask, 0o027);
    assert_eq!(misc.pdeath_sig, libc::SIGWINCH);
    assert_eq!(misc.dumpable, 1);
    assert_eq!(misc.personality, 0);

    let ids = ferry_inject::timers::posix_timer_ids(v.pid()).unwrap();
    assert_eq!(ids, vec![v.info.extra["timer"].parse::<i32>().unwrap()]);
    let timers = p.posix_timers(&ids).unwrap();
    assert_eq!(timers.len(), 1);
    let t = timers[0];
    assert_eq!((t.id, t.overrun), (ids[0], 0));
    assert_eq!((t.interval.sec, t.interval.nsec), (7, 500_000_000));
    assert!(t.value.sec >= 20 && t.value.sec < 30, "{t:?}");
    // A timer id the task does not have is the kernel's EINVAL, not a broken session.
    let e = p.posix_timers(&[ids[0] + 1000]).unwrap_err();
    assert!(
        matches!(&e, ParasiteError::Command { source, .. } if source.raw_os_error() == Some(libc::EINVAL)),
        "{e}"
    );

    // Reading the umask wrote it twice: it must be back.
    assert_eq!(p.misc().unwrap().umask, 0o027);

    let task = p.cure().unwrap();
    check_cured(task, &saved, &maps_before);
    v.expect_ticks(10);
}

#[test]
fn inject_cure_repeatedly() {
    let mut v = Victim::spawn("sleep");
    for round in 0..3 {
        let (s, maps_before) = begin(&v);
        let saved = s.saved().clone();
        // Twice in one seize, then a fresh seize next round.
        let mut p = Parasite::inject(s).unwrap();
        assert_eq!(p.hello().unwrap().pid, v.pid(), "round {round}");
        let s = Session::begin(p.cure().unwrap()).unwrap();
        let mut p = Parasite::inject(s).unwrap();
        assert_eq!(p.misc().unwrap().umask, 0o027);
        check_cured(p.cure().unwrap(), &saved, &maps_before);
        v.expect_ticks(3);
    }
}

#[test]
fn dropped_parasite_still_cures() {
    let mut v = Victim::spawn("sleep");
    let maps_before = maps(v.pid());
    {
        let (s, _) = begin(&v);
        let mut p = Parasite::inject(s).unwrap();
        p.hello().unwrap();
        // Dropped mid-session (an error path upstream): unmapped, restored, detached.
    }
    assert_eq!(maps(v.pid()), maps_before);
    v.expect_ticks(5);
    // Not traced any more: a new seize works.
    let (s, _) = begin(&v);
    drop(s);
    v.expect_ticks(3);
}

#[test]
fn stopped_task_stays_stopped() {
    let mut v = Victim::spawn("sleep");
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(v.pid(), libc::SIGSTOP) };
    v.wait_state('T');
    let stopped = seize(v.pid()).unwrap().interrupt().unwrap();
    assert_eq!(stopped.seized_state(), SeizedState::Stopped);
    let maps_before = maps(v.pid());
    let s = Session::begin(stopped).unwrap();
    let saved = s.saved().clone();
    let mut p = Parasite::inject(s).unwrap();
    assert_eq!(p.hello().unwrap().pid, v.pid());
    check_cured(p.cure().unwrap(), &saved, &maps_before);
    v.wait_state('T');
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        proc_state(v.pid()),
        Some('T'),
        "task must stay stopped after detach"
    );
    // SAFETY: as above.
    unsafe { libc::kill(v.pid(), libc::SIGCONT) };
    v.expect_ticks(5);
}

fn is_task_died(e: &ParasiteError) -> bool {
    matches!(
        e,
        ParasiteError::Session(SessionError::Ptrace(PtraceError::TaskDied { .. }))
    )
}

#[test]
fn victim_killed_during_parasite_session() {
    let v = Victim::spawn("sleep");
    let (s, _) = begin(&v);
    let mut p = Parasite::inject(s).unwrap();
    p.hello().unwrap();
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(v.pid(), libc::SIGKILL) };
    let e = p.sigactions().unwrap_err();
    assert!(is_task_died(&e), "{e}");
    assert!(e.to_string().contains(&v.pid().to_string()), "{e}");
    // Curing a dead task is an error, never a hang or a panic.
    assert!(p.cure().is_err());
}

#[test]
fn victim_killed_during_remote_syscalls() {
    let v = Victim::spawn("sleep");
    let (mut s, _) = begin(&v);
    assert_eq!(s.syscall(libc::SYS_getpid, &[]).unwrap(), v.pid() as i64);
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(v.pid(), libc::SIGKILL) };
    let e = s.syscall(libc::SYS_getpid, &[]).unwrap_err();
    assert!(
        matches!(e, SessionError::Ptrace(PtraceError::TaskDied { pid, .. }) if pid == v.pid()),
        "{e}"
    );
    assert!(s.end().is_err());
}

#[test]
fn zombie_and_missing_tasks_are_typed_errors() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    // Not reaped yet: a zombie.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while proc_state(pid) != Some('Z') {
        assert!(
            std::time::Instant::now() < deadline,
            "child never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let e = seize(pid).unwrap_err();
    assert!(
        matches!(e, PtraceError::Zombie { pid: p } if p == pid),
        "{e}"
    );
    child.wait().unwrap();
    // Reaped: gone.
    let e = seize(pid).unwrap_err();
    assert!(matches!(e, PtraceError::TaskDied { .. }), "{e}");
}

#[test]
fn cured_task_resumed_while_traced_restarts_its_syscall() {
    // After a cure the task may be resumed with PTRACE_CONT instead of detached (a dump that
    // keeps the tree seized). Its interrupted nanosleep must still restart, not return -516.
    let mut v = Victim::spawn("sleep");
    let (mut s, _) = begin(&v);
    assert_eq!(s.syscall(libc::SYS_getpid, &[]).unwrap(), v.pid() as i64);
    let running = s.end().unwrap().cont(0).unwrap();
    v.expect_ticks(5);
    running.stop_now().unwrap().detach().unwrap();
    v.expect_ticks(3);
}

#[test]
fn avx_registers_survive_injection() {
    // The victim keeps a pattern in ymm0-15 across a raw nanosleep and exits if it changed; the
    // parasite itself uses xmm registers, so only an exact XSAVE restore keeps it alive.
    let mut v = Victim::spawn("avx");
    assert!(
        wait_in_syscall(v.pid(), libc::SYS_nanosleep),
        "victim never slept"
    );
    let task = seize(v.pid()).unwrap().interrupt().unwrap();
    let maps_before = maps(v.pid());
    let s = Session::begin(task).unwrap();
    let saved = s.saved().clone();
    // XSAVE standard format: xmm0 at byte 160, the upper half of ymm0 at byte 576.
    let lo: Vec<u8> = (1..=16).collect();
    let hi: Vec<u8> = (17..=32).collect();
    assert_eq!(
        &saved.xstate[160..176],
        lo.as_slice(),
        "xmm0 as the victim set it"
    );
    assert_eq!(&saved.xstate[576..592], hi.as_slice(), "ymm0's upper half");
    let mut p = Parasite::inject(s).unwrap();
    p.sigactions().unwrap();
    p.misc().unwrap();
    check_cured(p.cure().unwrap(), &saved, &maps_before);
    v.expect_ticks(5);
}

#[test]
fn seccomp_filtered_task_is_injected_with_its_filter_suspended() {
    // The victim's own seccomp filter denies memfd_create, which the loader needs; seize must
    // suspend the filter for ferry's remote syscalls (PTRACE_O_SUSPEND_SECCOMP) and the task's
    // filter must still be there afterwards.
    let mut v = Victim::spawn("seccomp");
    assert_eq!(v.info.extra["memfd_denied"], "1", "the filter is in force");
    let status = std::fs::read_to_string(format!("/proc/{}/status", v.pid())).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    let (s, maps_before) = begin(&v);
    let saved = s.saved().clone();
    let mut p = Parasite::inject(s).unwrap();
    assert_eq!(p.hello().unwrap().pid, v.pid());
    check_cured(p.cure().unwrap(), &saved, &maps_before);
    v.expect_ticks(5);
    let status = std::fs::read_to_string(format!("/proc/{}/status", v.pid())).unwrap();
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
}

#[test]
fn compat_32bit_task_is_refused_cleanly() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/victim32.c");
    let bin = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferry-inject-victim32.{}", std::process::id()));
    let st = std::process::Command::new("cc")
        .args([
            "-m32",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fno-pie",
            "-no-pie",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "cc -m32 tests/victim32.c: {st}");
    let mut child = std::process::Command::new(&bin).spawn().unwrap();
    let _ = std::fs::remove_file(&bin);
    let pid = child.id() as i32;
    let task = seize(pid).unwrap().interrupt().unwrap();
    let e = Session::begin(task).unwrap_err();
    assert!(
        matches!(e, SessionError::Unsupported { pid: p, .. } if p == pid),
        "{e}"
    );
    assert!(e.to_string().contains("32-bit"), "{e}");
    // Detached again and still running (sleeping), not stopped or dead.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(proc_state(pid), Some('S'));
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigstop_during_a_parasite_session_is_kept_for_after() {
    // SIGSTOP cannot be blocked: it reaches the task while the parasite runs. The session must
    // neither fail nor lose it: the task ends up stopped after the detach, as the sender wanted.
    let mut v = Victim::spawn("sleep");
    let (s, maps_before) = begin(&v);
    let saved = s.saved().clone();
    let mut p = Parasite::inject(s).unwrap();
    p.hello().unwrap();
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(v.pid(), libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(p.hello().unwrap().pid, v.pid());
    p.sigactions().unwrap();
    check_cured(p.cure().unwrap(), &saved, &maps_before);
    v.wait_state('T');
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(proc_state(v.pid()), Some('T'));
    // SAFETY: as above.
    unsafe { libc::kill(v.pid(), libc::SIGCONT) };
    v.expect_ticks(5);
}

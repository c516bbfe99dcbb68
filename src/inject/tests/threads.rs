//! The parasite run in a second thread of the victim: its own altstack and mask come back, and
//! both threads are restored exactly and keep running.

mod common;

use common::{maps, wait_in_syscall, Victim};
use ferry_inject::{seize, Parasite, Session};

fn info(v: &Victim, k: &str) -> u64 {
    let s = &v.info.extra[k];
    u64::from_str_radix(s, if k.ends_with("altsp") { 16 } else { 10 }).unwrap()
}

#[test]
fn thread_state_of_a_second_thread() {
    let mut v = Victim::spawn("threads");
    let tid = info(&v, "thread_tid") as i32;
    assert_ne!(tid, v.pid());
    assert!(wait_in_syscall(tid, libc::SYS_clock_nanosleep));
    let leader = seize(v.pid()).unwrap().interrupt().unwrap();
    let thread = seize(tid).unwrap().interrupt().unwrap();
    let maps_before = maps(v.pid());
    let (t_regs, t_xstate, t_mask) = (
        thread.regs().unwrap(),
        thread.xstate().unwrap(),
        thread.sigmask().unwrap(),
    );
    assert_eq!(
        t_mask & (1 << (libc::SIGUSR1 - 1)),
        1 << (libc::SIGUSR1 - 1)
    );

    let mut p = Parasite::inject(Session::begin(leader).unwrap()).unwrap();
    let (ts, thread) = p.thread_state(thread).unwrap();
    assert_eq!(ts.tid, tid);
    assert_eq!(ts.altstack.sp, info(&v, "thread_altsp"));
    assert_eq!(ts.altstack.size, info(&v, "thread_altsize"));
    // The leader's own view differs: its altstack and tid.
    let lt = p.thread().unwrap();
    assert_eq!((lt.tid, lt.altstack.sp), (v.pid(), v.info.altsp));
    // The parent-death signal is per thread: the leader set SIGWINCH, a new thread starts at 0.
    assert_eq!((lt.pdeath_sig, ts.pdeath_sig), (libc::SIGWINCH, 0));
    // The thread can be visited again.
    let (again, thread) = p.thread_state(thread).unwrap();
    assert_eq!(again, ts);

    let r = thread.regs().unwrap();
    assert_eq!(
        (r.rip, r.rsp, r.rax, r.orig_rax),
        (t_regs.rip, t_regs.rsp, t_regs.rax, t_regs.orig_rax)
    );
    assert_eq!(thread.xstate().unwrap(), t_xstate);
    assert_eq!(thread.sigmask().unwrap(), t_mask);

    let leader = p.cure().unwrap();
    assert_eq!(maps(v.pid()), maps_before);
    thread.detach().unwrap();
    leader.detach().unwrap();
    v.expect_ticks(5);
    // The thread restarted its nanosleep correctly too, or the victim would have exited.
    assert!(std::path::Path::new(&format!("/proc/{}/task/{tid}", v.pid())).exists());
    std::thread::sleep(std::time::Duration::from_millis(100));
    v.expect_ticks(2);
    assert!(v.child.try_wait().unwrap().is_none(), "victim exited");
}

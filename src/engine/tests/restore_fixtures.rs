//! Restores of the CRIU 4.2 fixture images (loop, sigs, tree) with `ferry-criu restore`, as
//! root: each restored task must run on with its own pid and state, checked from /proc and
//! from its memory. Every fixture is restored twice in a row.

mod restore_common;

use restore_common::*;

fn restore_ok(name: &str) -> (tempfile::TempDir, u32) {
    restore_ok_with(name, false)
}

fn restore_ok_with(name: &str, relative: bool) -> (tempfile::TempDir, u32) {
    let d = fixture(name);
    let out = if relative {
        restore_relative(d.path())
    } else {
        restore(d.path(), &[])
    };
    assert!(
        out.status.success(),
        "restore of {name} failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_of(d.path())
    );
    let pid: u32 = std::fs::read_to_string(d.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (d, pid)
}

#[test]
fn restore_loop_twice() {
    let _g = fixture_lock();
    setup();
    let bin = "/tmp/ferry-fixture/bin/loop";
    let _k = Killer(vec![8174]);
    for round in 0..2 {
        assert!(!exists(8174), "pid 8174 busy before round {round}");
        // The second round runs with a relative image directory.
        let (d, pid) = restore_ok_with("loop", round == 1);
        assert_eq!(pid, 8174);
        let log = log_of(d.path());
        assert!(log.contains("stage read images"), "{log}");
        assert!(log.contains("stage sigreturn and restorer unmap"), "{log}");
        assert!(d.path().join("stats-restore").is_file());
        assert_eq!(status_field(pid, "Name"), "loop");
        assert_eq!(maps(pid), maps_before("loop", pid));
        // The 1 MiB buffer: byte i = i % 251, behind the pointer the program keeps.
        let buf = read_u64(pid, symbol(bin, "loop_buf"));
        let data = read_mem(pid, buf, 1 << 20);
        assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        // The counter goes on from where it was.
        let ctr = symbol(bin, "loop_counter");
        let a = read_u64(pid, ctr);
        assert!(a > 0);
        assert_runs(pid);
        let start = std::time::Instant::now();
        while read_u64(pid, ctr) <= a {
            assert!(start.elapsed().as_secs() < 5, "loop_counter stuck at {a}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(status_field(pid, "SigBlk"), "0000000000000000");
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .unwrap()
                .to_str(),
            Some(bin)
        );
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/1"))
                .unwrap()
                .to_str(),
            Some("/dev/null")
        );
        kill_all(&[pid]);
        assert!(!exists(pid));
    }
}

#[test]
fn restore_sigs_twice() {
    let _g = fixture_lock();
    setup();
    let bin = "/tmp/ferry-fixture/bin/sigs";
    let _k = Killer(vec![8612]);
    for _ in 0..2 {
        let (_d, pid) = restore_ok("sigs");
        assert_eq!(pid, 8612);
        assert_eq!(maps(pid), maps_before("sigs", pid));
        // Masks exactly as dumped: SIGHUP pending privately and shared, two queued RT signals
        // (35), SIGHUP and 35 blocked, handlers for USR1, USR2 and ALRM.
        assert_eq!(status_field(pid, "SigPnd"), "0000000000000001");
        assert_eq!(status_field(pid, "ShdPnd"), "0000000400000001");
        assert_eq!(status_field(pid, "SigBlk"), "0000000400000001");
        assert_eq!(status_field(pid, "SigCgt"), "0000000000002a00");
        let timers = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap();
        assert!(timers.contains("ID: 0"), "{timers}");
        assert!(timers.contains("signal: 10/0000000000005157"), "{timers}");
        assert!(timers.contains("ClockID: 1"), "{timers}");
        assert_runs(pid);
        // Handlers work: SIGUSR1 runs on_usr, SIGUSR2 runs it on the altstack.
        let usr1 = symbol(bin, "sigs_usr1");
        let usr2 = symbol(bin, "sigs_usr2");
        let get = |a| u32::from_le_bytes(read_mem(pid, a, 4).try_into().unwrap());
        let (u1, u2) = (get(usr1), get(usr2));
        // SAFETY: signals by pid to the task this test restored.
        unsafe {
            libc::kill(pid as i32, libc::SIGUSR1);
            libc::kill(pid as i32, libc::SIGUSR2);
        }
        let start = std::time::Instant::now();
        while get(usr1) != u1 + 1 || get(usr2) != u2 + 1 {
            assert!(start.elapsed().as_secs() < 5, "signal handlers did not run");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The itimer is armed: the task is not killed by anything, and still runs.
        assert!(exists(pid));
        kill_all(&[pid]);
    }
}

fn fd_target(pid: u32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn ino_of_shm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("7f83aaabb000-7f83aaacb000 rw-s"))
        .map(|l| l.split_whitespace().nth(4).unwrap().to_string())
        .expect("shared mapping")
}

#[test]
fn restore_tree_twice() {
    let _g = fixture_lock();
    setup();
    let pids = [8772u32, 8773, 8774];
    let _k = Killer(vec![8773, 8774, 8772]);
    for _ in 0..2 {
        let (_d, root) = restore_ok("tree");
        assert_eq!(root, 8772);
        for p in pids {
            assert_eq!(status_field(p, "Name"), "tree");
            assert_eq!(status_field(p, "NSsid"), "8772");
        }
        assert_eq!(status_field(8773, "PPid"), "8772");
        assert_eq!(status_field(8774, "PPid"), "8772");
        assert_eq!(status_field(8774, "Threads"), "2");
        assert!(exists(8775) && std::path::Path::new("/proc/8774/task/8775").exists());
        // pgid, the 5th field after comm in /proc/PID/stat
        for p in pids {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
            let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            assert_eq!(rest[2], "8772", "pgid of {p}");
        }
        // One pipe shared by all three, with its 6 unread bytes; one shared memory object.
        let pipe = fd_target(8772, 3);
        assert!(pipe.starts_with("pipe:"));
        for p in pids {
            assert_eq!(fd_target(p, 3), pipe);
            assert_eq!(fd_target(p, 4), pipe);
        }
        let mut n: libc::c_int = 0;
        let f = std::fs::File::open("/proc/8773/fd/3").unwrap();
        // SAFETY: FIONREAD into a local int on an fd we own.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::FIONREAD, &mut n) };
        assert_eq!(n, 6);
        let ino = ino_of_shm(8772);
        for p in pids {
            assert_eq!(ino_of_shm(p), ino);
            let m = read_mem(p, 0x7f83_aaab_b000, 64 << 10);
            assert!(m
                .iter()
                .enumerate()
                .all(|(i, &b)| b == ((i * 7 + 3) % 256) as u8));
        }
        // Shared means shared: a write by one task is seen by the others.
        {
            use std::os::unix::fs::FileExt;
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/8773/mem")
                .unwrap();
            w.write_all_at(b"ferry!", 0x7f83_aaab_b000).unwrap();
        }
        assert_eq!(read_mem(8774, 0x7f83_aaab_b000, 6), b"ferry!");
        for p in pids {
            assert_runs(p);
        }
        kill_all(&[8773, 8774, 8772]);
        for p in [8772, 8773, 8774, 8775] {
            assert!(!exists(p));
        }
    }
}

//! Memory draining through vmsplice/splice, checked byte for byte against what the victim wrote.

mod common;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use common::{fds, maps, pattern, pending, wait_in_syscall, Victim};
use ferry_inject::abi::Iovec;
use ferry_inject::{seize, Parasite, ParasiteError, Session};

fn memfd() -> std::fs::File {
    // SAFETY: memfd_create with a valid C string; the fd is fresh and ours.
    let fd = unsafe { libc::memfd_create(c"drain-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh fd we own.
    std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn inject(v: &Victim) -> (Parasite, String, Vec<(String, String)>) {
    assert!(wait_in_syscall(v.pid(), libc::SYS_clock_nanosleep));
    let task = seize(v.pid()).unwrap().interrupt().unwrap();
    let (m, f) = (maps(v.pid()), fds(v.pid()));
    (
        Parasite::inject(Session::begin(task).unwrap()).unwrap(),
        m,
        f,
    )
}

fn check_pattern(file: &std::fs::File, file_off: u64, buf_off: u64, len: u64) {
    let mut got = vec![0u8; len as usize];
    file.read_exact_at(&mut got, file_off).unwrap();
    for (i, b) in got.iter().enumerate() {
        let want = pattern(buf_off + i as u64);
        assert_eq!(
            *b,
            want,
            "byte {} of the victim's buffer",
            buf_off + i as u64
        );
    }
}

#[test]
fn drains_memory_through_a_pipe_exactly() {
    let mut v = Victim::spawn("sleep");
    let (mut p, maps_before, fds_before) = inject(&v);
    let mb = 1u64 << 20;
    // A pipe smaller than the data: vmsplice and splice must take turns.
    let pipe = p.open_pipe(256 * 1024).unwrap();
    assert!(pipe.capacity() >= 256 * 1024);
    let out = memfd();
    let ranges = [
        Iovec {
            base: v.info.buf,
            len: mb,
        },
        Iovec {
            base: v.info.buf + 2 * mb,
            len: 2 * mb,
        },
        Iovec {
            base: v.info.buf + mb + 4096,
            len: 4096,
        },
    ];
    let mut off = 0i64;
    let n = p
        .drain(&pipe, &ranges, out.as_fd(), Some(&mut off))
        .unwrap();
    assert_eq!(n, 3 * mb + 4096);
    assert_eq!(off as u64, n);
    check_pattern(&out, 0, 0, mb);
    check_pattern(&out, mb, 2 * mb, 2 * mb);
    check_pattern(&out, 3 * mb, mb + 4096, 4096);

    // More ranges than one command carries: split across several commands.
    let ranges: Vec<Iovec> = (0..600)
        .map(|i| Iovec {
            base: v.info.buf + i * 4096,
            len: 4096,
        })
        .collect();
    let out2 = memfd();
    let n = p.drain(&pipe, &ranges, out2.as_fd(), Some(&mut 0)).unwrap();
    assert_eq!(n, 600 * 4096);
    check_pattern(&out2, 0, 0, 600 * 4096);

    p.close_pipe(pipe).unwrap();
    let task = p.cure().unwrap();
    assert_eq!(maps(v.pid()), maps_before);
    assert_eq!(
        fds(v.pid()),
        fds_before,
        "the task's fd table must end as it was"
    );
    task.detach().unwrap();
    assert_eq!(pending(v.pid()), (0, 0), "no signal may be left pending");
    v.expect_ticks(5);
}

#[test]
fn bad_range_is_an_error_and_the_cure_still_closes_the_pipe() {
    let mut v = Victim::spawn("sleep");
    let (mut p, maps_before, fds_before) = inject(&v);
    let pipe = p.open_pipe(0).unwrap();
    let out = memfd();
    // Page 0 is never mapped.
    let e = p
        .drain(&pipe, &[Iovec { base: 0, len: 4096 }], out.as_fd(), None)
        .unwrap_err();
    assert!(
        matches!(&e, ParasiteError::Command { source, .. } if source.raw_os_error() == Some(libc::EFAULT)),
        "{e}"
    );
    // The parasite still answers; the pipe is left for the cure to close.
    assert_eq!(p.hello().unwrap().pid, v.pid());
    drop(pipe);
    let task = p.cure().unwrap();
    assert_eq!(maps(v.pid()), maps_before);
    assert_eq!(fds(v.pid()), fds_before);
    task.detach().unwrap();
    assert_eq!(pending(v.pid()), (0, 0));
    v.expect_ticks(5);
}

#[test]
fn victim_killed_during_drain_is_a_typed_error() {
    let v = Victim::spawn("sleep");
    let (mut p, _, _) = inject(&v);
    let pipe = p.open_pipe(64 * 1024).unwrap();
    // A sink that is never read from: a pipe of our own, so the drain blocks on it.
    let mut fds_ = [0; 2];
    // SAFETY: valid out-array of two ints.
    let r = unsafe { libc::pipe2(fds_.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    // SAFETY: fresh fds we own.
    let (sink_r, sink_w) =
        unsafe { (OwnedFd::from_raw_fd(fds_[0]), OwnedFd::from_raw_fd(fds_[1])) };
    let pid = v.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let ranges = [Iovec {
        base: v.info.buf,
        len: v.info.buflen,
    }];
    let e = p.drain(&pipe, &ranges, sink_w.as_fd(), None).unwrap_err();
    killer.join().unwrap();
    assert!(e.to_string().contains(&pid.to_string()), "{e}");
    assert!(p.cure().is_err());
    drop(sink_r);
}

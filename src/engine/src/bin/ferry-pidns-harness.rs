//! Test harness for the pid namespace restores, playing the part of a container runtime.
//!
//! `ferry-pidns-harness [--root DIR] [--coordinator] IMAGES_DIR`
//!
//! Default (in-place, `pidns::inplace`): unshares a pid and a mount namespace, forks (the child
//! is PID 1 there), mounts /proc for the new namespace, optionally chroots into DIR, and calls
//! `restore_in_place` in the child; the parent prints the child's host pid and the status line
//! the restore writes, then exits (0 on "ok").
//!
//! `--coordinator`: a plain `criu restore` (ferry on the host making the new pid namespace),
//! run in a private mount namespace chrooted into DIR, for images whose paths are a rootfs's;
//! prints the host pid of the restored init.
//!
//! IMAGES_DIR is a path inside DIR when `--root` is given.

use std::io::Read as _;
use std::os::fd::FromRawFd as _;

use ferry_engine::pidns::inplace::restore_in_place;
use ferry_engine::restore::{self, Log, Options};

fn fail(what: &str) -> ! {
    eprintln!(
        "ferry-pidns-harness: {what}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(1)
}

fn main() {
    let mut root = None;
    let mut coordinator = false;
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next(),
            "--coordinator" => coordinator = true,
            _ => dir = Some(a),
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: ferry-pidns-harness [--root DIR] [--coordinator] IMAGES_DIR");
        std::process::exit(2)
    };
    if coordinator {
        as_coordinator(root.as_deref(), &dir);
    }
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into a valid array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail("pipe2");
    }
    // SAFETY: unshare with flags only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) } != 0 {
        fail("unshare(CLONE_NEWPID | CLONE_NEWNS)");
    }
    // SAFETY: fork in a single-threaded process.
    let child = unsafe { libc::fork() };
    if child < 0 {
        fail("fork");
    }
    if child == 0 {
        init(root.as_deref(), &dir, p[1]);
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(p[1]) };
    // SAFETY: the read end is ours.
    let mut rd = unsafe { std::fs::File::from_raw_fd(p[0]) };
    let mut line = String::new();
    let _ = rd.read_to_string(&mut line);
    println!("{child} {}", line.trim_end());
    if line.starts_with("ok") {
        std::process::exit(0);
    }
    let mut st = 0;
    // SAFETY: reaps our child (the failed init).
    unsafe { libc::waitpid(child, &mut st, 0) };
    if libc::WIFEXITED(st) {
        println!("init exited with {}", libc::WEXITSTATUS(st));
    } else {
        println!("init killed by signal {}", libc::WTERMSIG(st));
    }
    std::process::exit(1)
}

fn mount(src: &str, target: &str, fstype: Option<&str>, flags: libc::c_ulong) {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (s, t) = (c(src), c(target));
    let f = fstype.map(c);
    // SAFETY: mount(2) with valid C strings (or null) that outlive the call.
    let r = unsafe {
        libc::mount(
            if fstype.is_some() {
                s.as_ptr()
            } else {
                std::ptr::null()
            },
            t.as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        fail(&format!("mount {target}"));
    }
}

/// Private mounts, a /proc of the current pid namespace (inside `root` if given), chroot.
fn enter_root(root: Option<&str>) {
    mount("", "/", None, libc::MS_REC | libc::MS_PRIVATE);
    let proc_at = root.map_or("/proc".to_string(), |r| format!("{r}/proc"));
    mount(
        "proc",
        &proc_at,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    );
    if let Some(r) = root {
        let c = std::ffi::CString::new(r).expect("no NUL");
        // SAFETY: chroot/chdir with a valid C string and a static one.
        if unsafe { libc::chroot(c.as_ptr()) } != 0 || unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
            fail("chroot");
        }
    }
}

fn open_log(dir: &str) -> Log {
    let log_path = std::path::Path::new(dir).join("restore.log");
    match Log::new(Some(&log_path), 4) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-pidns-harness: {}: {e}", log_path.display());
            std::process::exit(1)
        }
    }
}

/// PID 1 of the new namespace: its own /proc (and root), then the restore.
fn init(root: Option<&str>, dir: &str, status: i32) -> ! {
    enter_root(root);
    let mut log = open_log(dir);
    let opts = Options::new(dir);
    match restore_in_place(&opts, Some(status), &mut log) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("ferry-pidns-harness: in-place restore failed: {e}");
            std::process::exit(1)
        }
    }
}

/// ferry as the coordinator on the host, in a private mount namespace chrooted into `root`.
fn as_coordinator(root: Option<&str>, dir: &str) -> ! {
    // SAFETY: unshare with flags only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        fail("unshare(CLONE_NEWNS)");
    }
    enter_root(root);
    let mut log = open_log(dir);
    match restore::restore(&Options::new(dir), &mut log) {
        Ok(o) => {
            println!("{} ok", o.root);
            std::process::exit(0)
        }
        Err(e) => {
            println!("0 error: {e}");
            std::process::exit(1)
        }
    }
}

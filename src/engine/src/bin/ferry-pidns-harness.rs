//! Test harness for the pid namespace restores, playing the part of a container runtime.
//!
//! `ferry-pidns-harness [--root DIR] [--coordinator] IMAGES_DIR`
//!
//! Default (in-place, `pidns::inplace`): unshares a pid namespace and forks; the child is PID 1
//! there, unshares a mount namespace, mounts /proc for the new pid namespace, optionally chroots
//! into DIR, and calls `restore_in_place`; the parent, outside the namespace as a container
//! runtime is, runs the outside half (`inplace_finish::finish_in_place`) and prints the child's
//! host pid and `ok <ns pids...>` or `error: <message>` (then how the child ended), and exits
//! (0 on "ok").
//!
//! `--coordinator`: a plain `criu restore` (ferry on the host making the new pid namespace),
//! run in a private mount namespace chrooted into DIR, for images whose paths are a rootfs's;
//! prints the host pid of the restored init.
//!
//! IMAGES_DIR is a path inside DIR when `--root` is given.

use std::os::fd::OwnedFd;

use ferry_engine::pidns::inplace::restore_in_place;
use ferry_engine::pidns::inplace_finish::finish_in_place;
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
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap_or_else(|_| fail("socketpair"));
    // SAFETY: unshare with flags only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        fail("unshare(CLONE_NEWPID)");
    }
    // SAFETY: fork in a single-threaded process.
    let child = unsafe { libc::fork() };
    if child < 0 {
        fail("fork");
    }
    if child == 0 {
        drop(ours);
        init(root.as_deref(), &dir, theirs);
    }
    drop(theirs);
    // The outside half sees the images where this process sees them.
    let outside = match &root {
        Some(r) => std::path::Path::new(r).join(dir.trim_start_matches('/')),
        None => std::path::PathBuf::from(&dir),
    };
    let log_path = outside.join("restore.log");
    let mut log = match std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
    {
        Ok(f) => Log::to(ferry_engine::log::Sink::File(f), 4),
        Err(e) => {
            eprintln!("ferry-pidns-harness: {}: {e}", log_path.display());
            std::process::exit(1)
        }
    };
    let timeout = Options::new(&dir).timeout;
    // The init's host pid first, so that a test sees it even if this process dies.
    print!("{child} ");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    match finish_in_place(child, ours, &outside, timeout, &mut log) {
        Ok(pids) => {
            let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            println!("ok {}", pids.join(" "));
            std::process::exit(0)
        }
        Err(e) => println!("error: {e}"),
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

/// PID 1 of the new namespace: its own mounts, /proc (and root), then the restore.
fn init(root: Option<&str>, dir: &str, chan: OwnedFd) -> ! {
    // SAFETY: unshare with flags only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        fail("unshare(CLONE_NEWNS)");
    }
    enter_root(root);
    let mut log = open_log(dir);
    let opts = Options::new(dir);
    match restore_in_place(&opts, chan, &mut log) {
        Ok(never) => match never {},
        // The outside half reports it; our fds may already be the tree's, so say nothing.
        // SAFETY: _exit without flushing anything into fds that may be the tree's.
        Err(_) => unsafe { libc::_exit(1) },
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

//! `criu check`: which kernel features ferry's engine relies on are present here.
//!
//! Each probe exercises the feature for real on a throwaway object (a child process forked for
//! the ptrace and clone3 probes, a memfd, an anonymous mapping, a userfaultfd), rather than
//! trusting the kernel version.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Arguments of `criu check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Also list the features found (CRIU prints only problems by default).
    #[arg(long = "all")]
    pub all: bool,
}

/// One probed feature.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Name.
    pub name: &'static str,
    /// Needed by dump/restore (missing = fail), or optional.
    pub required: bool,
    /// `Ok(())` when present, else why not.
    pub result: Result<(), String>,
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn sys(r: libc::c_long) -> Result<libc::c_long, String> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// Forks a child that pauses; runs `f` on it; kills and reaps it.
fn with_child(f: impl FnOnce(i32) -> Result<(), String>) -> Result<(), String> {
    // SAFETY: the child only calls async-signal-safe pause/_exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno());
    }
    if pid == 0 {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    let r = f(pid);
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
    }
    r
}

fn ptrace_seize() -> Result<(), String> {
    with_child(|pid| {
        let r = ferry_inject::seize(pid)
            .and_then(|t| t.interrupt())
            .map_err(|e| e.to_string())?;
        r.detach().map_err(|e| e.to_string())
    })
}

fn pidfd_getfd() -> Result<(), String> {
    with_child(|pid| {
        // SAFETY: pidfd_open takes a pid and flags.
        let pidfd = sys(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
        // SAFETY: fresh fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        // SAFETY: pidfd_getfd of the child's stdin.
        let fd = sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), 0, 0) })?;
        // SAFETY: fresh fd we own.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        Ok(())
    })
}

fn process_vm_readv() -> Result<(), String> {
    let src = [7u8; 16];
    let mut dst = [0u8; 16];
    let l = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: 16,
    };
    let r = libc::iovec {
        iov_base: src.as_ptr() as *mut _,
        iov_len: 16,
    };
    // SAFETY: both iovecs describe our own buffers.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &l, 1, &r, 1, 0) };
    if n != 16 || dst != src {
        return Err(errno());
    }
    Ok(())
}

fn memfd() -> Result<(), String> {
    // SAFETY: name is a NUL-terminated literal.
    let fd = sys(unsafe { libc::memfd_create(c"ferry-check".as_ptr(), libc::MFD_CLOEXEC) } as _)?;
    // SAFETY: fresh fd we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

fn clone3_set_tid() -> Result<(), String> {
    // clone3 with a set_tid array of size 1 needs CAP_SYS_ADMIN over the pid namespace; a bad
    // argument (tid 0 with set_tid_size 1) is rejected with EINVAL only when the field exists.
    #[repr(C)]
    #[derive(Default)]
    struct Args {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tids = [-1i32];
    let a = Args {
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: an invalid set_tid (-1) makes the kernel reject the call before any fork.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &a as *const Args,
            std::mem::size_of::<Args>(),
        )
    };
    let e = std::io::Error::last_os_error().raw_os_error();
    match (r, e) {
        (-1, Some(libc::EINVAL)) => Ok(()),
        (-1, Some(libc::ENOSYS)) => Err("clone3 not available".into()),
        (-1, Some(libc::E2BIG)) => Err("clone3 has no set_tid".into()),
        (-1, _) => Err(errno()),
        (0, _) => {
            // SAFETY: in the child: leave at once.
            unsafe { libc::_exit(0) }
        }
        (pid, _) => {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
            Err("clone3 accepted an invalid set_tid".into())
        }
    }
}

fn userfaultfd_wp() -> Result<(), String> {
    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    const UFFD_API: u64 = 0xaa;
    const UFFDIO_API: libc::c_ulong = 0xc018aa3f;
    const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    // SAFETY: userfaultfd takes flags only.
    let fd = sys(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = Api {
        api: UFFD_API,
        features: UFFD_FEATURE_PAGEFAULT_FLAG_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a struct uffdio_api.
    sys(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } as _)?;
    Ok(())
}

fn pagemap_scan() -> Result<(), String> {
    #[repr(C)]
    struct Arg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    const PAGEMAP_SCAN: libc::c_ulong = 0xc0606610;
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
    let buf = [0u8; 4096];
    let mut regions = [0u64; 3 * 4];
    let a = Arg {
        size: std::mem::size_of::<Arg>() as u64,
        flags: 0,
        start: buf.as_ptr() as u64 & !4095,
        end: (buf.as_ptr() as u64 & !4095) + 4096,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: 4,
        max_pages: 0,
        category_inverted: 0,
        category_mask: 0,
        category_anyof_mask: 1 << 3, // PAGE_IS_PRESENT
        return_mask: 1 << 3,
    };
    // SAFETY: PAGEMAP_SCAN takes a struct pm_scan_arg whose vec points to room for 4 regions.
    sys(unsafe { libc::ioctl(f.as_raw_fd(), PAGEMAP_SCAN, &a) } as _)?;
    Ok(())
}

fn time_ns() -> Result<(), String> {
    std::fs::metadata("/proc/self/ns/time")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn zero_pfn() -> Result<(), String> {
    crate::mem::dump_pages::zero_pfn()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Probes every feature.
pub fn probe() -> Vec<Feature> {
    let f = |name, required, result| Feature {
        name,
        required,
        result,
    };
    vec![
        f("ptrace seize/interrupt", true, ptrace_seize()),
        f("pidfd_getfd", true, pidfd_getfd()),
        f("process_vm_readv", true, process_vm_readv()),
        f("memfd_create", true, memfd()),
        f("pagemap PFNs (zero page)", true, zero_pfn()),
        f("clone3 set_tid", true, clone3_set_tid()),
        f("time namespaces", false, time_ns()),
        f("userfaultfd write-protect", false, userfaultfd_wp()),
        f("PAGEMAP_SCAN ioctl", false, pagemap_scan()),
    ]
}

/// Runs `criu check`; returns the exit code.
pub fn run(args: &CheckArgs) -> anyhow::Result<i32> {
    let mut ok = true;
    for f in probe() {
        match &f.result {
            Ok(()) if args.all => println!("{}: yes", f.name),
            Ok(()) => {}
            Err(e) => {
                println!(
                    "{}: {} ({e})",
                    f.name,
                    if f.required {
                        "MISSING"
                    } else {
                        "missing (optional)"
                    }
                );
                ok &= !f.required;
            }
        }
    }
    if ok {
        println!("Looks good.");
        Ok(0)
    } else {
        Ok(1)
    }
}

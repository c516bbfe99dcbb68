//! The code libcontainer runs as the container's process once namespaces, rootfs and cgroups are
//! ready: libcontainer's default exec, after one repair ([`FerryExecutor`]). (A restore's init
//! is ferry's own: `cr_build_init`.)
//!
//! The repair: libcontainer 0.7's init re-points every stdio fd that is the host's /dev/null to
//! the container's /dev/null, but opens it read-only, so a process started with stdout or
//! stderr on /dev/null (containerd's null IO, `ferry run >/dev/null`) gets EBADF on every write.
//! runc keeps such fds writable; so do we, by reopening /dev/null read-write over them.
//! For `ferry exec` it also joins the container's user namespace and becomes the process's
//! user there, which libcontainer's exec leaves out (see exec_userns.rs), then loads the
//! container's seccomp filter, which it leaves out too (see exec_seccomp.rs).

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::{fstat, major, minor, Mode, SFlag};

/// ferry's workload executor.
#[derive(Clone, Default)]
pub struct FerryExecutor {
    /// An exec'd process's seccomp filter, loaded just before execve.
    pub seccomp: Option<super::exec_seccomp::ExecSeccomp>,
    /// An exec'd process's entry into the container's user namespace, before the filter.
    pub userns: Option<super::exec_userns::ExecUserns>,
}

/// Whether `fd` is a read-only /dev/null (character device 1:3).
fn is_readonly_dev_null(fd: i32) -> bool {
    let Ok(st) = fstat(fd) else {
        return false;
    };
    let is_chr = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    if !is_chr || major(st.st_rdev) != 1 || minor(st.st_rdev) != 3 {
        return false;
    }
    match fcntl(fd, FcntlArg::F_GETFL) {
        Ok(flags) => OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDONLY,
        Err(_) => false,
    }
}

/// Makes stdout and stderr writable again where they are a read-only /dev/null.
fn repair_dev_null_stdio() {
    for fd in [1, 2] {
        if !is_readonly_dev_null(fd) {
            continue;
        }
        match open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(null) => {
                if let Err(e) = nix::unistd::dup2(null, fd) {
                    tracing::warn!("reopen fd {fd} on /dev/null read-write: {e}");
                }
                let _ = nix::unistd::close(null);
            }
            Err(e) => tracing::warn!("open /dev/null read-write for fd {fd}: {e}"),
        }
    }
}

impl Executor for FerryExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        repair_dev_null_stdio();
        if let Some(u) = &self.userns {
            u.apply().map_err(|e| ExecutorError::Other(e.to_string()))?;
        }
        if let Some(s) = &self.seccomp {
            s.apply().map_err(ExecutorError::Other)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn detects_readonly_dev_null_only() {
        let ro = std::fs::File::open("/dev/null").unwrap();
        assert!(is_readonly_dev_null(ro.as_raw_fd()));
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert!(!is_readonly_dev_null(rw.as_raw_fd()));
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert!(!is_readonly_dev_null(zero.as_raw_fd()));
    }
}

//! The code libcontainer runs as the container's process once namespaces, rootfs and cgroups are
//! ready: libcontainer's default exec, after one repair ([`FerryExecutor`]); or, for `ferry
//! restore`, the engine's in-place restore ([`RestoreExecutor`]): the init, PID 1 of the fresh pid
//! namespace, forks the checkpointed tree and becomes its PID 1.
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

/// The container init of a restore: runs `ferry_engine::pidns::inplace::restore_in_place`.
///
/// It runs after pivot_root, where host paths are out of reach, so the image directory and the
/// log come as fds opened by ferry before the container was built; the image directory is
/// reached through `/proc/self/fd/N` (the container's /proc, read only). `status_fd` is the init's end of the
/// socket pair whose other end ferry reads: the engine's in-place restore reports on it and
/// ferry, outside the container's pid namespace, finishes the restore from there. On success
/// it never returns: this process is the restored PID 1.
#[derive(Clone, Debug)]
pub struct RestoreExecutor {
    /// The image directory, open (O_PATH) in ferry.
    pub images_fd: i32,
    /// restore.log, open for writing in ferry (used as it is).
    pub log_fd: i32,
    /// The init's end of ferry's status socket pair (SOCK_SEQPACKET).
    pub status_fd: i32,
    /// Deadline for every task to reach the restorer.
    pub timeout: std::time::Duration,
    /// restore.log verbosity.
    pub log_level: u8,
    /// The init's own fds 0..2 (ferry's pipes, or its new console) standing for the images' stdio.
    pub inherit_fds: Vec<ferry_engine::files::inherit::InheritFd>,
}

impl Executor for RestoreExecutor {
    fn exec(&self, _spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        use ferry_engine::restore::{Log, Options};
        use std::os::fd::FromRawFd;
        // SAFETY: ferry handed this fd to the init for the restore alone; the engine owns and
        // closes it from here.
        let chan = unsafe { std::os::fd::OwnedFd::from_raw_fd(self.status_fd) };
        // Written through ferry's own fd, never reopened: in a container with its own user
        // namespace the init (its root) has no right to the host root's file.
        // SAFETY: ferry opened the log for the init alone; the engine owns and closes it.
        let log_file = unsafe { std::fs::File::from_raw_fd(self.log_fd) };
        let mut log = Log::to(ferry_engine::log::Sink::File(log_file), self.log_level);
        let mut opts = Options::new(format!("/proc/self/fd/{}", self.images_fd));
        opts.timeout = self.timeout;
        opts.inherit_fds = self.inherit_fds.clone();
        match ferry_engine::pidns::inplace::restore_in_place(&opts, chan, &mut log) {
            Ok(never) => match never {},
            // The engine has reported it to ferry (on the socket or in its stage slot). The
            // init's fds may already be the tree's, libcontainer's log and channel among them:
            // exit without writing anything anywhere.
            // SAFETY: _exit ends this process without running destructors or flushing buffers.
            Err(_) => unsafe { libc::_exit(1) },
        }
    }

    fn validate(&self, _spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        // The process comes from the images, not from the config's args.
        Ok(())
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

//! ferry's integrity manifest (ferry-manifest.json: length and CRC32C of every image file),
//! checked during a restore by a forked helper process, so checksumming gigabytes of page data
//! overlaps with forking the tree and filling its memory. A process, not a thread: the
//! coordinator keeps forking and must stay single-threaded. The coordinator waits for the verdict
//! before any task is released into its own code; a mismatch aborts the restore.

use std::path::Path;

use crate::restore::RestoreError;

fn stage_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> RestoreError {
    RestoreError::Stage {
        stage: "manifest check",
        source: e.into(),
    }
}

/// ferry's integrity manifest, checked by a forked helper process while the restore goes on
/// (a process, not a thread: the coordinator keeps forking and must stay single-threaded).
#[derive(Debug)]
pub struct Verifier {
    pid: i32,
    rd: Option<std::fs::File>,
}

impl Verifier {
    /// Forks the helper on `dir`, with pid `pid` (clone3 set_tid) when given: inside a pid
    /// namespace the tree is restored into, a plain fork() could take one of the tree's pids.
    pub fn spawn(dir: &Path, pid: Option<u32>) -> Result<Self, RestoreError> {
        let mut p = [0; 2];
        // SAFETY: pipe2 writes two fds into a valid array.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(stage_err(std::io::Error::last_os_error()));
        }
        let pid = match pid {
            Some(want) => crate::pstree::restore::fork_with_pid(want, std::time::Duration::ZERO)
                .map_err(stage_err)? as i32,
            // SAFETY: the coordinator is single-threaded, so the child's copy of every lock is
            // consistent; the child only checksums files, writes a verdict and _exits.
            None => unsafe { libc::fork() },
        };
        if pid < 0 {
            return Err(stage_err(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let msg = match ferry_images::manifest::check(dir) {
                Ok(None) => String::new(),
                Ok(Some(bad)) if bad.is_empty() => String::new(),
                Ok(Some(bad)) => format!("ferry manifest check failed: {}", bad.join("; ")),
                Err(e) => format!("ferry manifest check: {e}"),
            };
            // SAFETY: write of a valid buffer to our pipe end, then _exit without destructors.
            unsafe {
                libc::write(p[1], msg.as_ptr() as *const libc::c_void, msg.len());
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end; the read end becomes a File we own.
        let rd = unsafe {
            libc::close(p[1]);
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(p[0])
        };
        Ok(Self { pid, rd: Some(rd) })
    }

    /// Waits for the helper's verdict.
    pub fn verdict(&self) -> Result<(), RestoreError> {
        use std::io::Read;
        let mut msg = String::new();
        if let Some(mut rd) = self.rd.as_ref() {
            rd.read_to_string(&mut msg).map_err(stage_err)?;
        }
        let mut st = 0;
        // SAFETY: reaps our helper child.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
        if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
            return Err(stage_err(format!(
                "the manifest checker died (wait status {st:#x})"
            )));
        }
        if msg.is_empty() {
            Ok(())
        } else {
            Err(stage_err(msg))
        }
    }

    /// Stops the helper (the caller reaps it).
    pub fn kill(&self) {
        // SAFETY: SIGKILL to our own helper child (reaped by abort's wait loop).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

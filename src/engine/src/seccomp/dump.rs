//! Dump half: seccomp modes and filter chains.
//!
//! Kernel mechanism: /proc/PID/task/TID/status shows each thread's seccomp mode. For filter
//! mode, PTRACE_SECCOMP_GET_FILTER (tracer with CAP_SYS_ADMIN, tracee stopped) returns the
//! classic-BPF program of filter `index` (0 = the first installed, the root of the chain), and
//! PTRACE_SECCOMP_GET_METADATA its flags (e.g. SECCOMP_FILTER_FLAG_LOG). Filters are shared
//! along fork and TSYNC, so seccomp.img holds each distinct (program, parent) once, oldest
//! first, `prev` naming the parent's index, as CRIU writes it; a thread points at its newest.

use ferry_images::pb;

/// Errors of the seccomp dump.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A ptrace request failed.
    #[error("thread {tid}: {op} of seccomp filter {index}: {source}")]
    Ptrace {
        tid: i32,
        op: &'static str,
        index: u64,
        source: std::io::Error,
    },
    /// A filter ferry could not restore (a dump error, so the tree runs on undamaged).
    #[error("thread {tid}: {msg}")]
    Unsupported { tid: i32, msg: String },
    /// /proc status unreadable.
    #[error("thread {tid}: reading its seccomp mode: {source}")]
    Proc { tid: i32, source: std::io::Error },
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// Sanity bound on a chain's length (the kernel caps total instructions at 32768).
const MAX_CHAIN: u64 = 4096;

/// Every distinct filter of the dump, in seccomp.img order.
#[derive(Debug, Default)]
pub struct SeccompTable {
    /// seccomp.img's filters.
    pub filters: Vec<pb::SeccompFilter>,
}

/// A thread's seccomp state for its thread_core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadSeccomp {
    /// 0 disabled, 1 strict, 2 filter.
    pub mode: u32,
    /// Index of the newest filter in seccomp.img (filter mode).
    pub filter: Option<u32>,
}

fn mode(pid: i32, tid: i32) -> Result<u32, SeccompError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .map_err(|source| SeccompError::Proc { tid, source })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn get_filter(tid: i32, index: u64) -> Result<Option<Vec<u8>>, SeccompError> {
    let err = |op| {
        move |source| SeccompError::Ptrace {
            tid,
            op,
            index,
            source,
        }
    };
    // SAFETY: with a null buffer the kernel only returns the instruction count.
    let n = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(err("PTRACE_SECCOMP_GET_FILTER")(e));
    }
    // struct sock_filter is 8 bytes.
    let mut buf = vec![0u8; n as usize * 8];
    // SAFETY: `buf` holds the `n` instructions the kernel just reported.
    let r = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            buf.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if r != n {
        return Err(err("PTRACE_SECCOMP_GET_FILTER")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Some(buf))
}

fn get_flags(tid: i32, index: u64) -> Result<u32, SeccompError> {
    let mut md = [index, 0u64];
    // SAFETY: `md` is struct seccomp_metadata { filter_off, flags }.
    let r = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            std::mem::size_of_val(&md) as *mut libc::c_void,
            md.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if r < 0 {
        return Err(SeccompError::Ptrace {
            tid,
            op: "PTRACE_SECCOMP_GET_METADATA",
            index,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(md[1] as u32)
}

impl SeccompTable {
    /// Reads the seccomp state of stopped thread `tid` of task `pid`.
    pub fn thread(&mut self, pid: i32, tid: i32) -> Result<ThreadSeccomp, SeccompError> {
        let mode = mode(pid, tid)?;
        if mode != 2 {
            return Ok(ThreadSeccomp { mode, filter: None });
        }
        // Index 0 is the first filter installed (the kernel counts back from the newest).
        let mut chain = Vec::new();
        for index in 0..MAX_CHAIN {
            match get_filter(tid, index)? {
                Some(prog) => chain.push((prog, get_flags(tid, index)?)),
                None => break,
            }
        }
        let mut prev: Option<u32> = None;
        for (prog, flags) in chain {
            let f = pb::SeccompFilter {
                filter: prog,
                prev,
                flags: (flags != 0).then_some(flags),
            };
            if let Some(msg) = super::restore::unsupported(&f) {
                return Err(SeccompError::Unsupported { tid, msg });
            }
            let at = match self.filters.iter().position(|x| *x == f) {
                Some(i) => i,
                None => {
                    self.filters.push(f);
                    self.filters.len() - 1
                }
            };
            prev = Some(at as u32);
        }
        Ok(ThreadSeccomp { mode, filter: prev })
    }

    /// The seccomp.img entry.
    pub fn entry(&self) -> pb::SeccompEntry {
        pb::SeccompEntry {
            seccomp_filters: self.filters.clone(),
        }
    }
}

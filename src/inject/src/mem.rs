//! Remote memory access and the task's memory map.
//!
//! Kernel mechanism: process_vm_readv/writev copy between address spaces in one call but honour
//! page protections, so writing to a read-only page (or reading a PROT_NONE one) fails with
//! EFAULT. /proc/PID/mem goes through the kernel's FOLL_FORCE path, as a debugger's pokes do, and
//! is the fallback. Both need ptrace access to the task, which a tracer has.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;

/// Errors of remote memory access.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// Neither process_vm_*v nor /proc/PID/mem could move the bytes.
    #[error("{op} of {len} bytes at {addr:#x} in task {pid}: {source}")]
    Access {
        pid: i32,
        op: &'static str,
        addr: u64,
        len: usize,
        source: io::Error,
    },
    /// /proc/PID/maps could not be read or parsed.
    #[error("/proc/{pid}/maps: {msg}")]
    Maps { pid: i32, msg: String },
    /// No executable `syscall` instruction was found in the task.
    #[error("task {pid}: no syscall instruction found in any executable mapping")]
    NoSyscallInsn { pid: i32 },
}

type Result<T> = std::result::Result<T, MemError>;

/// Reads `buf.len()` bytes at `addr` of task `pid`.
pub fn read(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which we own mutably; `remote` is only an address.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n >= 0 && n as usize == buf.len() {
        return Ok(());
    }
    let len = buf.len();
    let err = |source| MemError::Access {
        pid,
        op: "read",
        addr,
        len,
        source,
    };
    let f = OpenOptions::new()
        .read(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(err)?;
    f.read_exact_at(buf, addr).map_err(err)
}

/// Writes `data` at `addr` of task `pid`, also into read-only pages (via /proc/PID/mem).
pub fn write(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data` (only read by this call); `remote` is only an address.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n >= 0 && n as usize == data.len() {
        return Ok(());
    }
    let len = data.len();
    let err = |source| MemError::Access {
        pid,
        op: "write",
        addr,
        len,
        source,
    };
    let f = OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(err)?;
    f.write_all_at(data, addr).map_err(err)
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// "rwxp"-style permissions.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Path or pseudo-name (`[vdso]`, `[stack]`, ...), empty for anonymous memory.
    pub name: String,
}

impl Vma {
    /// Whether the mapping is executable.
    pub fn exec(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// Parses the text of /proc/PID/maps.
pub fn parse_maps(pid: i32, text: &str) -> Result<Vec<Vma>> {
    let bad = |line: &str| MemError::Maps {
        pid,
        msg: format!("bad line {line:?}"),
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let range = it.next().ok_or_else(|| bad(line))?;
        let perms = it.next().ok_or_else(|| bad(line))?;
        let offset = it.next().ok_or_else(|| bad(line))?;
        let (_dev, _ino) = (it.next(), it.next());
        let name = it.next().unwrap_or("").trim_start().to_string();
        let (s, e) = range.split_once('-').ok_or_else(|| bad(line))?;
        let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|_| bad(line));
        out.push(Vma {
            start: hex(s)?,
            end: hex(e)?,
            perms: perms.to_string(),
            offset: hex(offset)?,
            name,
        });
    }
    Ok(out)
}

/// The task's current memory map.
pub fn maps(pid: i32) -> Result<Vec<Vma>> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| MemError::Maps {
            pid,
            msg: e.to_string(),
        })?;
    parse_maps(pid, &text)
}

/// Finds an existing `syscall` instruction (0f 05) in an executable mapping, preferring the
/// vDSO. Remote syscalls jump there instead of patching the task's code, so no file-backed text
/// page is ever copied-on-write by an injection.
pub fn find_syscall_insn(pid: i32) -> Result<u64> {
    let mut vmas: Vec<Vma> = maps(pid)?.into_iter().filter(Vma::exec).collect();
    // vDSO first, then the rest in address order; [vsyscall] cannot be read.
    vmas.sort_by_key(|v| (v.name != "[vdso]", v.start));
    for v in vmas.iter().filter(|v| v.name != "[vsyscall]") {
        let len = (v.end - v.start).min(4 << 20) as usize;
        let mut buf = vec![0u8; len];
        if read(pid, v.start, &mut buf).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(v.start + i as u64);
        }
    }
    Err(MemError::NoSyscallInsn { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = "55d0c0a00000-55d0c0a02000 r-xp 00001000 08:01 1234                       /usr/bin/sleep\n\
                    7ffd1b3f3000-7ffd1b3f5000 r-xp 00000000 00:00 0                          [vdso]\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";
        let v = parse_maps(1, text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].start, 0x55d0c0a00000);
        assert_eq!(v[0].offset, 0x1000);
        assert_eq!(v[0].name, "/usr/bin/sleep");
        assert!(v[1].exec() && v[1].name == "[vdso]");
        assert!(!v[2].exec() && v[2].name.is_empty());
        assert!(parse_maps(1, "garbage\n").is_err());
    }

    #[test]
    fn reads_and_writes_own_memory_through_proc() {
        let pid = std::process::id() as i32;
        let mut target = [1u8, 2, 3, 4];
        let addr = target.as_mut_ptr() as u64;
        write(pid, addr, &[9, 8]).unwrap();
        let mut back = [0u8; 4];
        read(pid, addr, &mut back).unwrap();
        assert_eq!(back, [9, 8, 3, 4]);
        // The compiler must not assume `target` unchanged.
        assert_eq!(std::hint::black_box(&target)[0], 9);
        let insn = find_syscall_insn(pid).unwrap();
        let mut two = [0u8; 2];
        read(pid, insn, &mut two).unwrap();
        assert_eq!(two, [0x0f, 0x05]);
    }
}

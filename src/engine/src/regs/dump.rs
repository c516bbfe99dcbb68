//! Dump half: CPU state of a stopped thread into CRIU's `thread_info_x86`.
//!
//! Kernel mechanism: in a ptrace-stop, PTRACE_GETREGS gives the general registers (including
//! fs_base/gs_base), PTRACE_GETREGSET(NT_X86_XSTATE) the XSAVE area in the standard
//! (non-compacted) layout, whose bytes 464..488 (`sw_reserved`) carry the kernel's xfeatures
//! mask, PTRACE_GET_THREAD_AREA the three GDT TLS slots, and PTRACE_GET_RSEQ_CONFIGURATION the
//! rseq registration. A thread stopped inside a syscall has `orig_rax >= 0`; as CRIU's compel
//! does, a restartable errno in rax is rewound (rip -= 2, rax = orig_rax) so the restored task
//! re-issues the call, and -ERESTART_RESTARTBLOCK becomes -EINTR.

use ferry_images::pb;
use ferry_inject::ptrace::Regs;
use ferry_inject::Stopped;

/// Errors of the register dump.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A ptrace read failed.
    #[error(transparent)]
    Ptrace(#[from] ferry_inject::PtraceError),
    /// A raw ptrace request failed.
    #[error("thread {tid}: ptrace {op}: {source}")]
    Request {
        tid: i32,
        op: &'static str,
        source: std::io::Error,
    },
    /// The XSAVE area is shorter than its legacy part.
    #[error("thread {tid}: XSAVE area of {len} bytes is too short (need 576)")]
    ShortXsave { tid: i32, len: usize },
}

type Result<T> = std::result::Result<T, RegsError>;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// First GDT TLS entry on x86_64 (GDT_ENTRY_TLS_MIN), three entries.
const GDT_ENTRY_TLS_MIN: u32 = 12;

fn raw_ptrace(
    req: libc::c_uint,
    tid: i32,
    addr: usize,
    data: usize,
    op: &'static str,
) -> Result<i64> {
    // SAFETY: callers pass `data` pointing to a buffer sized for the request.
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        return Err(RegsError::Request {
            tid,
            op,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(r)
}

/// Applies the syscall-restart rewind CRIU's compel applies to a thread stopped in a syscall.
pub fn restart_fixup(regs: &mut Regs) {
    if (regs.orig_rax as i64) < 0 {
        return;
    }
    match -(regs.rax as i64) {
        ERESTARTNOHAND | ERESTARTSYS | ERESTARTNOINTR => {
            regs.rax = regs.orig_rax;
            regs.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => regs.rax = (-libc::EINTR) as u64,
        _ => {}
    }
}

/// CRIU's `user_x86_regs_entry` from ptrace registers.
pub fn gpregs(r: &Regs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

fn u16_at(b: &[u8], o: usize) -> u32 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u32
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn words32(b: &[u8], off: usize, len: usize) -> Vec<u32> {
    b[off..off + len]
        .chunks_exact(4)
        .map(|c| u32_at(c, 0))
        .collect()
}
fn words64(b: &[u8], off: usize, len: usize) -> Vec<u64> {
    b[off..off + len]
        .chunks_exact(8)
        .map(|c| u64_at(c, 0))
        .collect()
}

/// Offset and size of XSAVE component `i` in the standard format (CPUID leaf 0xD).
fn xcomponent(i: u32) -> (usize, usize) {
    let r = core::arch::x86_64::__cpuid_count(0xd, i);
    (r.ebx as usize, r.eax as usize)
}

/// XSAVE components CRIU names in `user_x86_xsave_entry`, by feature bit.
const YMM: u32 = 2;
const BNDREGS: u32 = 3;
const BNDCSR: u32 = 4;
const OPMASK: u32 = 5;
const ZMM_HI256: u32 = 6;
const HI16_ZMM: u32 = 7;
const PKRU: u32 = 9;

/// Converts an NT_X86_XSTATE area into CRIU's `user_x86_fpregs_entry`. Components are included
/// when the kernel's xfeatures mask (sw_reserved) says the CPU state has them, as CRIU does.
pub fn fpregs(tid: i32, x: &[u8]) -> Result<pb::UserX86FpregsEntry> {
    if x.len() < 576 {
        return Err(RegsError::ShortXsave { tid, len: x.len() });
    }
    // sw_reserved: magic1 @464 (FP_XSTATE_MAGIC1), xfeatures @472.
    let xfeatures = if u32_at(x, 464) == 0x4650_5853 {
        u64_at(x, 472)
    } else {
        let r = core::arch::x86_64::__cpuid_count(0xd, 0);
        (r.edx as u64) << 32 | r.eax as u64
    };
    let has = |bit: u32| xfeatures & (1 << bit) != 0;
    let comp = |bit: u32, words: usize| -> Option<(usize, usize)> {
        if !has(bit) {
            return None;
        }
        let (off, size) = xcomponent(bit);
        let len = words.min(size);
        (off != 0 && off + len <= x.len()).then_some((off, len))
    };
    let mut xs = pb::UserX86XsaveEntry {
        xstate_bv: u64_at(x, 512),
        ..Default::default()
    };
    if let Some((o, l)) = comp(YMM, 256) {
        xs.ymmh_space = words32(x, o, l);
    }
    if let Some((o, l)) = comp(BNDREGS, 64) {
        xs.bndreg_state = words64(x, o, l);
    }
    if let Some((o, l)) = comp(BNDCSR, 16) {
        xs.bndcsr_state = words64(x, o, l);
    }
    if let Some((o, l)) = comp(OPMASK, 64) {
        xs.opmask_reg = words64(x, o, l);
    }
    if let Some((o, l)) = comp(ZMM_HI256, 512) {
        xs.zmm_upper = words64(x, o, l);
    }
    if let Some((o, l)) = comp(HI16_ZMM, 1024) {
        xs.hi16_zmm = words64(x, o, l);
    }
    if let Some((o, l)) = comp(PKRU, 8) {
        xs.pkru = words32(x, o, l);
    }
    Ok(pb::UserX86FpregsEntry {
        cwd: u16_at(x, 0),
        swd: u16_at(x, 2),
        twd: u16_at(x, 4),
        fop: u16_at(x, 6),
        rip: u64_at(x, 8),
        rdp: u64_at(x, 16),
        mxcsr: u32_at(x, 24),
        mxcsr_mask: u32_at(x, 28),
        st_space: words32(x, 32, 128),
        xmm_space: words32(x, 160, 256),
        padding: Vec::new(),
        xsave: Some(xs),
    })
}

/// The three GDT TLS slots (empty ones read back as not-present, read-exec-only).
pub fn tls(tid: i32) -> Result<Vec<pb::UserDescT>> {
    let mut out = Vec::new();
    for n in GDT_ENTRY_TLS_MIN..GDT_ENTRY_TLS_MIN + 3 {
        let mut d = [0u32; 4];
        d[0] = n;
        let p = d.as_mut_ptr() as usize;
        raw_ptrace(
            PTRACE_GET_THREAD_AREA,
            tid,
            n as usize,
            p,
            "GET_THREAD_AREA",
        )?;
        let f = d[3];
        out.push(pb::UserDescT {
            entry_number: d[0],
            base_addr: d[1],
            limit: d[2],
            seg_32bit: f & 1 != 0,
            contents_h: f & 4 != 0,
            contents_l: f & 2 != 0,
            read_exec_only: f & 8 != 0,
            limit_in_pages: f & 16 != 0,
            seg_not_present: f & 32 != 0,
            usable: f & 64 != 0,
        });
    }
    Ok(out)
}

/// The thread's rseq registration, `None` when it has none. A thread inside an rseq critical
/// section also gets `rseq_cs_pointer`, read from its `struct rseq`.
pub fn rseq(tid: i32) -> Result<Option<pb::RseqEntry>> {
    #[repr(C)]
    #[derive(Default)]
    struct Conf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = Conf::default();
    let size = std::mem::size_of::<Conf>();
    let p = &mut c as *mut Conf as usize;
    match raw_ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        size,
        p,
        "GET_RSEQ_CONFIGURATION",
    ) {
        Ok(_) => {}
        // Kernels without rseq support for ptrace: no rseq to carry.
        Err(RegsError::Request { source, .. }) if source.raw_os_error() == Some(libc::EIO) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    if c.ptr == 0 {
        return Ok(None);
    }
    let mut cs = [0u8; 8];
    let cs_ptr = ferry_inject::mem::read(tid, c.ptr + 8, &mut cs)
        .ok()
        .map(|_| u64::from_le_bytes(cs))
        .filter(|v| *v != 0);
    Ok(Some(pb::RseqEntry {
        rseq_abi_pointer: c.ptr,
        rseq_abi_size: c.size,
        signature: c.sig,
        rseq_cs_pointer: cs_ptr,
    }))
}

/// Everything register-like of one stopped thread (clear_tid_addr is filled in by the caller).
pub fn thread_info(t: &Stopped) -> Result<pb::ThreadInfoX86> {
    let tid = t.pid();
    let mut regs = t.regs()?;
    restart_fixup(&mut regs);
    let x = t.xstate()?;
    Ok(pb::ThreadInfoX86 {
        clear_tid_addr: 0,
        gpregs: gpregs(&regs),
        fpregs: fpregs(tid, &x)?,
        tls: tls(tid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Regs {
        // SAFETY: plain integers.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn restart_rewinds_like_compel() {
        let mut r = regs();
        r.orig_rax = 7;
        r.rax = (-ERESTARTSYS) as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r);
        assert_eq!((r.rax, r.rip), (7, 0x1000));
        let mut r = regs();
        r.orig_rax = 230;
        r.rax = (-ERESTART_RESTARTBLOCK) as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r);
        assert_eq!((r.rax as i64, r.rip), (-4, 0x1002));
        let mut r = regs();
        r.orig_rax = u64::MAX;
        r.rax = (-ERESTARTSYS) as u64;
        restart_fixup(&mut r);
        assert_eq!(r.rax as i64, -ERESTARTSYS);
    }

    #[test]
    fn fpregs_reads_legacy_area() {
        let mut x = vec![0u8; 1024];
        x[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        x[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        x[160..164].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        x[464..468].copy_from_slice(&0x4650_5853u32.to_le_bytes());
        x[472..480].copy_from_slice(&3u64.to_le_bytes());
        let f = fpregs(1, &x).unwrap();
        assert_eq!(
            (f.cwd, f.mxcsr, f.xmm_space[0]),
            (0x37f, 0x1f80, 0xdeadbeef)
        );
        assert_eq!((f.st_space.len(), f.xmm_space.len()), (32, 64));
        assert!(f.xsave.unwrap().ymmh_space.is_empty());
        assert!(fpregs(1, &x[..100]).is_err());
    }
}

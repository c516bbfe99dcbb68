//! Restore half of the CPU state: the `rt_sigframe` each thread returns through.
//!
//! `rt_sigreturn` takes every general register, the flags, the blocked signal mask, the
//! sigaltstack and the FPU/XSAVE state from a frame on the stack (`rsp - 8` at the syscall). The
//! frame is built here, in the restore range, from core-TID.img: the sigcontext from the GP
//! registers, `uc_sigmask` from the blocked set, `uc_stack` from the saved sigaltstack, and an
//! XSAVE image (legacy FXSAVE area, XSAVE header, and each component at the offset CPUID leaf
//! 0xD gives on this machine) with the `fpx_sw_bytes` magic the kernel checks before it accepts
//! extended state. FS/GS base are not in the frame; the restorer sets them with `arch_prctl`.

use ferry_images::pb;
use thiserror::Error;

use crate::restorer::{Arena, RestorerError};

/// Errors building a thread's frame.
#[derive(Debug, Error)]
pub enum RegsError {
    /// The core image lacks something the frame needs.
    #[error("thread {tid}: core image has no {what}")]
    Missing {
        /// Thread.
        tid: u32,
        /// What.
        what: &'static str,
    },
    /// The thread ran 32-bit code.
    #[error(
        "thread {tid}: compat (32-bit) register state is not supported by ferry's restore yet"
    )]
    Compat {
        /// Thread.
        tid: u32,
    },
    /// No room in the argument area.
    #[error("thread {tid}: {source}")]
    Arena {
        /// Thread.
        tid: u32,
        /// Why.
        source: RestorerError,
    },
}

const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
/// pretcode + ucontext (flags, link, stack 24, mcontext 256, sigmask 8) + siginfo 128.
const FRAME_SIZE: usize = 8 + 8 + 8 + 24 + 256 + 8 + 128;
const MCONTEXT: usize = 48;
const SIGMASK: usize = MCONTEXT + 256;

fn put<const N: usize>(buf: &mut [u8], off: usize, v: [u8; N]) {
    buf[off..off + N].copy_from_slice(&v);
}

fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// XCR0: the state components the OS enabled.
fn xcr0() -> u64 {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 27) == 0 {
        return 0x3; // no OSXSAVE: x87 + SSE only
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so xgetbv(0) is allowed in user mode; it only writes eax/edx.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                         options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Builds the XSAVE image of `fp` as this CPU lays it out; returns (bytes, xstate_size).
pub fn xsave_image(fp: &pb::UserX86FpregsEntry) -> Vec<u8> {
    let mask = xcr0();
    let x = fp.xsave.as_ref();
    let comps: [(u32, Vec<u8>); 7] = [
        (2, x.map(|x| u32s(&x.ymmh_space)).unwrap_or_default()),
        (3, x.map(|x| u64s(&x.bndreg_state)).unwrap_or_default()),
        (4, x.map(|x| u64s(&x.bndcsr_state)).unwrap_or_default()),
        (5, x.map(|x| u64s(&x.opmask_reg)).unwrap_or_default()),
        (6, x.map(|x| u64s(&x.zmm_upper)).unwrap_or_default()),
        (7, x.map(|x| u64s(&x.hi16_zmm)).unwrap_or_default()),
        (9, x.map(|x| u32s(&x.pkru)).unwrap_or_default()),
    ];
    // Size: the end of the furthest enabled component we restore (never below the header).
    let mut size = 576usize;
    let mut layout = Vec::new();
    for (bit, data) in comps {
        if mask & (1 << bit) == 0 {
            continue;
        }
        let (sz, off, _, _) = cpuid(0xd, bit);
        size = size.max((off + sz) as usize);
        layout.push((bit, off as usize, sz as usize, data));
    }
    let mut buf = vec![0u8; size + 4];
    put(&mut buf, 0, (fp.cwd as u16).to_le_bytes());
    put(&mut buf, 2, (fp.swd as u16).to_le_bytes());
    put(&mut buf, 4, (fp.twd as u16).to_le_bytes());
    put(&mut buf, 6, (fp.fop as u16).to_le_bytes());
    put(&mut buf, 8, fp.rip.to_le_bytes());
    put(&mut buf, 16, fp.rdp.to_le_bytes());
    put(&mut buf, 24, fp.mxcsr.to_le_bytes());
    put(&mut buf, 28, fp.mxcsr_mask.to_le_bytes());
    let st = u32s(&fp.st_space);
    buf[32..32 + st.len().min(128)].copy_from_slice(&st[..st.len().min(128)]);
    let xmm = u32s(&fp.xmm_space);
    buf[160..160 + xmm.len().min(256)].copy_from_slice(&xmm[..xmm.len().min(256)]);
    // fpx_sw_bytes at 464: magic1, extended_size, xfeatures, xstate_size.
    put(&mut buf, 464, FP_XSTATE_MAGIC1.to_le_bytes());
    put(&mut buf, 468, ((size + 4) as u32).to_le_bytes());
    put(&mut buf, 472, mask.to_le_bytes());
    put(&mut buf, 480, (size as u32).to_le_bytes());
    // XSAVE header: xstate_bv (what the image had, limited to what is enabled), xcomp_bv = 0.
    // A component whose bit is clear is put in its init state by the kernel.
    let mut bv = x.map_or(0x3, |x| x.xstate_bv) & mask;
    for (bit, off, sz, data) in layout {
        if data.is_empty() {
            bv &= !(1 << bit);
            continue;
        }
        let n = data.len().min(sz);
        buf[off..off + n].copy_from_slice(&data[..n]);
    }
    put(&mut buf, 512, bv.to_le_bytes());
    put(&mut buf, size, FP_XSTATE_MAGIC2.to_le_bytes());
    buf
}

/// Builds the rt_sigframe of one thread in `arena`; returns its address.
pub fn build_frame(
    arena: &mut Arena,
    tid: u32,
    core: &pb::CoreEntry,
    blocked: u64,
) -> Result<u64, RegsError> {
    let ti = core.thread_info.as_ref().ok_or(RegsError::Missing {
        tid,
        what: "thread_info (x86 registers)",
    })?;
    let g = &ti.gpregs;
    if g.mode == Some(pb::UserX86RegsMode::Compat as i32) {
        return Err(RegsError::Compat { tid });
    }
    let arena_err = |source| RegsError::Arena { tid, source };
    let xs = xsave_image(&ti.fpregs);
    let fpstate = arena.push_bytes(&xs, 64, "XSAVE area").map_err(arena_err)?;
    let mut f = vec![0u8; FRAME_SIZE];
    put(
        &mut f,
        8,
        (UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS).to_le_bytes(),
    );
    if let Some(sas) = core.thread_core.as_ref().and_then(|t| t.sas) {
        put(&mut f, 24, sas.ss_sp.to_le_bytes());
        // SS_ONSTACK is a report, not a setting.
        put(&mut f, 32, (sas.ss_flags & !1).to_le_bytes());
        put(&mut f, 40, sas.ss_size.to_le_bytes());
    } else {
        put(&mut f, 32, 2u32.to_le_bytes()); // SS_DISABLE
    }
    let regs = [
        g.r8, g.r9, g.r10, g.r11, g.r12, g.r13, g.r14, g.r15, g.di, g.si, g.bp, g.bx, g.dx, g.ax,
        g.cx, g.sp, g.ip, g.flags,
    ];
    for (i, r) in regs.iter().enumerate() {
        put(&mut f, MCONTEXT + i * 8, r.to_le_bytes());
    }
    let seg = MCONTEXT + 18 * 8;
    put(&mut f, seg, (g.cs as u16).to_le_bytes());
    put(&mut f, seg + 2, (g.gs as u16).to_le_bytes());
    put(&mut f, seg + 4, (g.fs as u16).to_le_bytes());
    put(&mut f, seg + 6, (g.ss as u16).to_le_bytes());
    put(&mut f, MCONTEXT + 23 * 8, fpstate.to_le_bytes());
    put(&mut f, SIGMASK, blocked.to_le_bytes());
    arena
        .push_bytes(&f, 64, "sigreturn frame")
        .map_err(arena_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsave_image_has_magics_and_legacy_area() {
        let fp = pb::UserX86FpregsEntry {
            cwd: 0x37f,
            mxcsr: 0x1f80,
            xmm_space: (0..64).collect(),
            ..Default::default()
        };
        let b = xsave_image(&fp);
        let size = u32::from_le_bytes(b[480..484].try_into().unwrap()) as usize;
        assert_eq!(&b[0..2], &0x37fu16.to_le_bytes());
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 0x1f80);
        assert_eq!(u32::from_le_bytes(b[160 + 4..168].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(b[464..468].try_into().unwrap()),
            FP_XSTATE_MAGIC1
        );
        assert_eq!(
            u32::from_le_bytes(b[size..size + 4].try_into().unwrap()),
            FP_XSTATE_MAGIC2
        );
        assert_eq!(u64::from_le_bytes(b[512..520].try_into().unwrap()) & 3, 3);
    }
}

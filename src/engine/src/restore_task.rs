//! The restore of one task, run inside the task itself right after it was forked with its pid:
//! session and group, its children, cwd/root/umask, limits, staged memory, signal dispositions,
//! timers and pending signals, its fds, and finally the jump into the restorer blob with the
//! argument block laid out at its final address. Errors are written to the task's stage slot
//! (the coordinator reports them) and the task exits; it never returns to the caller.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;

use ferry_blob_abi::restorer::{Range, RestorerArgs, ThreadArgs, RESTORER_MAGIC, RESTORER_VERSION};

use crate::mem::restore as mem;
use crate::restore::{Plan, STACK_SIZE};
use crate::stage::Stage;
use crate::{creds, files, fs, pstree, regs, restorer, seccomp, sigact, timers};

/// Runs task `i` of the plan in the freshly forked process; never returns.
pub fn run(plan: &Plan, i: usize) -> ! {
    let slot = plan.ctl.slot(i);
    // The pid the coordinator sees (a host pid when the tree has its own pid namespace).
    slot.pid.store(
        crate::pidns::restore::proc_self_pid(),
        std::sync::atomic::Ordering::Release,
    );
    // Die with the parent while the restore is unfinished; the restorer sets the real value.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    match prepare(plan, i) {
        Ok((args, sp)) => {
            plan.ctl.set_stage(i, Stage::Restorer);
            jump(plan.priv_base(), sp, args)
        }
        Err(msg) => plan.ctl.fail(i, &msg),
    }
    // SAFETY: _exit ends this forked copy without running destructors of the coordinator's
    // objects it inherited.
    unsafe { libc::_exit(1) }
}

/// A failure-injection hook for the all-or-nothing tests: `var` names task `pid`. Debug builds
/// only (the tests run them); a release build never reads the variable.
fn test_hook(var: &str, pid: u32) -> bool {
    cfg!(debug_assertions) && std::env::var(var).is_ok_and(|v| v == pid.to_string())
}

/// Prepares task `i` in the calling process (forks its children); returns the argument block
/// and stack for [`jump`].
pub(crate) fn prepare(plan: &Plan, i: usize) -> Result<(u64, u64), String> {
    let t = &plan.tasks[i];
    let pid = t.entry.pid;
    pstree::restore::set_session(&t.entry, i == 0, plan.shell_job).map_err(|e| e.to_string())?;
    plan.ctl.set_stage(i, Stage::Forked);
    for &c in &t.children {
        let ct = &plan.tasks[c];
        let got = pstree::restore::fork_with_pid(ct.entry.pid, plan.pid_wait)
            .map_err(|e| e.to_string())?;
        // Namespace pids mean nothing to a coordinator outside the namespace: there each task
        // records its own pid as /proc shows it.
        let ns_pids = plan.ns == crate::pidns::restore::NsMode::NewNs;
        if got != 0 && !ns_pids {
            plan.ctl
                .slot(c)
                .pid
                .store(got, std::sync::atomic::Ordering::Release);
        }
        if got == 0 {
            if ct.alive {
                run(plan, c);
            }
            if let Some(tc) = ct.cores.first().and_then(|(_, c)| c.tc.as_ref()) {
                let name = std::ffi::CString::new(tc.comm.replace('\0', "")).unwrap_or_default();
                // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
            }
            plan.ctl.set_stage(c, Stage::Restorer);
            if !ns_pids {
                plan.ctl
                    .slot(c)
                    .pid
                    .store(ct.entry.pid, std::sync::atomic::Ordering::Release);
            }
            pstree::restore::become_zombie(ct.exit_code);
        }
    }
    // Failure injection for the all-or-nothing tests: fail this task after its children exist.
    if test_hook("FERRY_TEST_FAIL_TASK", pid) {
        return Err("injected failure (FERRY_TEST_FAIL_TASK)".into());
    }
    sigact::restore::block_all();
    if let Some(f) = &t.fs {
        fs::restore::apply(pid, f, &plan.files).map_err(|e| e.to_string())?;
    }
    let main = &t.cores[0].1;
    let tc = main.tc.as_ref().ok_or("core image has no task core (tc)")?;
    if let Some(c) = main.thread_core.as_ref().and_then(|c| c.creds.as_ref()) {
        creds::restore::set_bounding(pid, c).map_err(|e| e.to_string())?;
    }
    creds::restore::apply(pid, tc).map_err(|e| e.to_string())?;
    let main_creds = main.thread_core.as_ref().and_then(|c| c.creds.as_ref());
    seccomp::restore::set_nnp(pid, main_creds).map_err(|e| e.to_string())?;
    if tc.child_subreaper == Some(true) {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }

    let img = t.mem.as_ref().ok_or("no memory image")?;
    let base = plan.priv_base();
    let blob_len = restorer::blob_len() as u64;
    map_private(base, blob_len, true)?;
    // SAFETY: base..base+blob_len was just mapped writable and executable for the blob.
    unsafe { restorer::install(base as *mut u8, blob_len as usize) }.map_err(|e| e.to_string())?;
    let arena_at = base + blob_len;
    map_private(arena_at, t.arena_size, false)?;
    // SAFETY: mapped just above, writable, and used only by this task.
    let mut arena = unsafe { restorer::Arena::new(arena_at, t.arena_size as usize) };
    let stacks = arena_at + t.arena_size;
    let nthreads = t.cores.len() as u64;
    map_private(stacks, nthreads * STACK_SIZE, false)?;
    let park = stacks + nthreads * STACK_SIZE;
    let staging = park + plan.vdso.park_len().next_multiple_of(mem::PAGE);
    let staging_len = img.staging_size();
    let staged =
        mem::stage(img, &plan.map_fds(), staging, staging_len).map_err(|e| e.to_string())?;

    sigact::restore::set_actions(pid, tc).map_err(|e| e.to_string())?;
    if let Some(tm) = &tc.timers {
        timers::restore::arm(pid, tm).map_err(|e| e.to_string())?;
    }
    sigact::restore::queue_pending(pid, &t.cores).map_err(|e| e.to_string())?;

    let err = |e: restorer::RestorerError| e.to_string();
    let mut remaps = plan.vdso.moves(img, park);
    remaps.extend(staged.remaps.iter().copied());
    // Failure injection for the all-or-nothing tests: a move the kernel refuses, so the restorer
    // fails after it has already unmapped this task's old memory.
    if test_hook("FERRY_TEST_FAIL_RESTORER", pid) {
        remaps.push(ferry_blob_abi::restorer::Remap {
            from: 0x1000,
            len: 0x1000,
            to: 0x2000,
        });
    }
    let mut keep = vec![Range {
        start: plan.range.start,
        len: plan.range.len,
    }];
    if img.vdso().1.is_some() {
        keep.extend(plan.vdso.keep());
    }
    keep.sort_by_key(|r| r.start);
    let exe_fd = plan
        .opened
        .maps
        .get(&img.mm.exe_file_id)
        .map(|f| f.as_raw_fd())
        .ok_or_else(|| format!("exe file id {} was not opened", img.mm.exe_file_id))?;
    let auxv = arena.push(&img.mm.mm_saved_auxv, "auxv").map_err(err)?;
    let seccomp_at = seccomp::restore::lay_out(&mut arena, &t.cores, &plan.seccomp)
        .map_err(|e| e.to_string())?;
    let mut threads = Vec::new();
    for (k, (tid, core)) in t.cores.iter().enumerate() {
        let ti = core
            .thread_info
            .as_ref()
            .ok_or("core image has no thread_info")?;
        let tcore = core.thread_core.as_ref();
        let blocked =
            tcore
                .and_then(|c| c.blk_sigset)
                .unwrap_or(if k == 0 { tc.blk_sigset } else { 0 });
        let frame = regs::restore::build_frame(&mut arena, *tid, core, blocked)
            .map_err(|e| e.to_string())?;
        let rseq = tcore.and_then(|c| c.rseq_entry);
        let (sigs, nr_sigs) = if k == 0 {
            (0, 0)
        } else {
            let raw = sigact::restore::thread_siginfos(pid, core).map_err(|e| e.to_string())?;
            let at = arena.push_bytes(&raw, 8, "thread siginfos").map_err(err)?;
            (at, (raw.len() / 128) as u32)
        };
        let name = tcore
            .and_then(|c| c.comm.clone())
            .or_else(|| core.tc.as_ref().map(|c| c.comm.clone()))
            .unwrap_or_default();
        let mut comm = [0u8; 16];
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        threads.push(ThreadArgs {
            tid: *tid as i32,
            has_rseq: u32::from(rseq.is_some_and(|r| r.rseq_abi_pointer != 0)),
            frame,
            // The top of this thread's own slot; the blob's clone3 gets exactly the slot.
            stack_top: stacks + (k as u64 + 1) * STACK_SIZE,
            fs_base: ti.gpregs.fs_base,
            gs_base: ti.gpregs.gs_base,
            clear_tid_addr: ti.clear_tid_addr,
            robust_list: tcore.map_or(0, |c| c.futex_rla),
            robust_len: tcore.map_or(0, |c| u64::from(c.futex_rla_len)),
            rseq: rseq.map_or(0, |r| r.rseq_abi_pointer),
            rseq_len: rseq.map_or(0, |r| r.rseq_abi_size),
            rseq_sig: rseq.map_or(0, |r| r.signature),
            comm,
            sigs,
            nr_sigs,
            // Per thread, as the kernel keeps it (dumped per thread by the parasite).
            pdeath_sig: tcore.and_then(|c| c.pdeath_sig).unwrap_or(0),
            seccomp: seccomp_at[k],
        });
    }
    let slot = plan.ctl.slot(i);
    let args = RestorerArgs {
        magic: RESTORER_MAGIC,
        version: RESTORER_VERSION,
        keep: arena.push(&keep, "keep list").map_err(err)?,
        nr_keep: keep.len() as u32,
        nr_remap: remaps.len() as u32,
        remap: arena.push(&remaps, "remap list").map_err(err)?,
        madv: arena.push(&staged.madvise, "madvise list").map_err(err)?,
        nr_madv: staged.madvise.len() as u32,
        nr_close: 1,
        close: arena.push(&[exe_fd], "close list").map_err(err)?,
        threads: arena.push(&threads, "thread list").map_err(err)?,
        nr_threads: threads.len() as u32,
        has_mm_map: 1,
        mm_map: mem::mm_map(&img.mm, auxv, exe_fd),
        ready_word: plan.ctl.addr_of(i, &slot.ready),
        go_word: plan.ctl.addr_of(i, &slot.go),
        error_word: plan.ctl.addr_of(i, &slot.error),
        task_size: mem::TASK_SIZE,
        has_caps: u32::from(t.caps.is_some()),
        _pad: 0,
        caps: t.caps.unwrap_or_default(),
        ambient: t.ambient,
    };
    let at = arena.push(&[args], "argument block").map_err(err)?;
    let keep_fds: BTreeSet<i32> = [exe_fd].into_iter().collect();
    files::restore::install(pid, &t.fds, &plan.opened, &keep_fds).map_err(|e| e.to_string())?;
    if let Some(c) = main_creds {
        // Last of what the Rust half does with its privileges: everything is open.
        creds::restore::set_ids(pid, c).map_err(|e| e.to_string())?;
    }
    if let Some(d) = img.mm.dumpable {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, d, 0, 0, 0) };
    }
    plan.ctl.set_stage(i, Stage::Prepared);
    Ok((at, threads[0].stack_top))
}

fn map_private(at: u64, len: u64, exec: bool) -> Result<(), String> {
    let prot = libc::PROT_READ | libc::PROT_WRITE | if exec { libc::PROT_EXEC } else { 0 };
    // SAFETY: MAP_FIXED inside the restore range reserved for this task's private part; no Rust
    // object lives there.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap of {len} bytes at {at:#x} in the restore range: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// Unregisters the rseq area glibc registered for this thread (fork keeps the registration; the
/// restorer unmaps the area, and the kernel would fault writing to it).
fn unregister_rseq() {
    // SAFETY: glibc (2.35+) exports these read-only after startup.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return;
    }
    let tp: u64;
    // SAFETY: fs:0 holds the thread pointer on x86_64 glibc; a plain load.
    unsafe { core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    let area = (tp as i64 + off as i64) as u64;
    for len in [32u32, size] {
        // SAFETY: RSEQ_FLAG_UNREGISTER of the area glibc registered, with its signature.
        let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, 1, 0x5305_3053u32) };
        if r == 0 {
            return;
        }
    }
}

/// Enters the restorer blob at `entry` with `args` on the stack `sp`; never returns.
pub(crate) fn jump(entry: u64, sp: u64, args: u64) -> ! {
    unregister_rseq();
    // SAFETY: the restorer blob is installed at `entry`, its argument block at `args` and the
    // main thread's stack below `sp`, all inside the kept restore range; the blob never returns
    // (it ends in rt_sigreturn or exit_group).
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "jmp {entry}",
            sp = in(reg) sp,
            entry = in(reg) entry,
            in("rdi") args,
            options(noreturn),
        )
    }
}

//! Restore half: each thread's seccomp mode and filter chain.
//!
//! Kernel mechanism: a filter is installed with seccomp(SECCOMP_SET_MODE_FILTER, flags, prog) by
//! the thread it applies to (or by one thread for all with SECCOMP_FILTER_FLAG_TSYNC), which needs
//! no_new_privs or CAP_SYS_ADMIN; strict mode with prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT).
//! Neither can be undone, and a filter may forbid the syscalls the restorer still makes, so the
//! restorer blob installs them last, after ferry released the thread and traces it with
//! PTRACE_O_SUSPEND_SECCOMP (filters are skipped while that tracer is attached), and before
//! dropping its capabilities (a task without no_new_privs must not gain it). The prefix of the
//! chain every thread of a task shares is installed once with TSYNC by the main thread, so the
//! threads share those filter objects again (a later TSYNC by the application needs that).

use ferry_blob_abi::restorer::{SeccompArgs, SeccompProg};
use ferry_images::pb;

use crate::restorer::{Arena, RestorerError};

/// Errors of the seccomp restore.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Something in the images ferry cannot restore faithfully.
    #[error("thread {tid}: {msg}")]
    Unsupported { tid: u32, msg: String },
    /// The argument arena was too small.
    #[error(transparent)]
    Arena(#[from] RestorerError),
    /// A ptrace request failed.
    #[error("thread {tid}: PTRACE_SETOPTIONS with PTRACE_O_SUSPEND_SECCOMP: {source}")]
    Suspend { tid: u32, source: std::io::Error },
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("task {pid}: prctl(PR_SET_NO_NEW_PRIVS): {source}")]
    Nnp { pid: u32, source: std::io::Error },
}

/// Filter flags reproduced by passing them again at install: SECCOMP_FILTER_FLAG_LOG (the one
/// flag PTRACE_SECCOMP_GET_METADATA reports) and SECCOMP_FILTER_FLAG_SPEC_ALLOW.
const FLAGS_KEPT: u32 = 2 | 4;
/// Install-time actions, not properties of a filter: dropped (TSYNC, TSYNC_ESRCH).
const FLAGS_DROPPED: u32 = 1 | 16;
/// Flags that tie a filter to a listener fd outside the task: refused by name.
const FLAGS_REFUSED: [(u32, &str); 2] = [
    (8, "SECCOMP_FILTER_FLAG_NEW_LISTENER"),
    (32, "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"),
];
const RET_ACTION_FULL: u32 = 0xffff_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// BPF_RET | BPF_K.
const BPF_RET_K: u16 = 0x06;
/// BPF_MAXINSNS.
const MAX_INSNS: usize = 4096;

/// seccomp.img's filters (none without the file: an image of a tree without seccomp).
pub fn load(
    dir: &ferry_images::ImageDir,
) -> Result<Vec<pb::SeccompFilter>, ferry_images::dir::DirError> {
    if !dir.has("seccomp.img") {
        return Ok(Vec::new());
    }
    Ok(dir
        .read_entries::<pb::SeccompEntry>("seccomp.img")?
        .into_iter()
        .flat_map(|e| e.seccomp_filters)
        .collect())
}

/// A thread's mode from its core image (0 disabled, 1 strict, 2 filter).
pub fn mode(core: &pb::CoreEntry) -> u32 {
    core.thread_core
        .as_ref()
        .and_then(|c| c.seccomp_mode)
        .unwrap_or(0) as u32
}

fn newest(core: &pb::CoreEntry) -> Option<u32> {
    core.thread_core.as_ref().and_then(|c| c.seccomp_filter)
}

/// The reasons a filter program cannot be restored, if any (shared with the dump half).
pub fn unsupported(f: &pb::SeccompFilter) -> Option<String> {
    let n = f.filter.len() / 8;
    if f.filter.len() % 8 != 0 || n == 0 || n > MAX_INSNS {
        return Some(format!(
            "a seccomp filter of {} bytes is not a classic-BPF program of 1..={MAX_INSNS} instructions",
            f.filter.len()
        ));
    }
    let flags = f.flags.unwrap_or(0);
    for (bit, name) in FLAGS_REFUSED {
        if flags & bit != 0 {
            return Some(format!(
                "seccomp filter flag {name} is not supported by ferry"
            ));
        }
    }
    if flags & !(FLAGS_KEPT | FLAGS_DROPPED) != 0 {
        return Some(format!(
            "seccomp filter flags {flags:#x} are not supported by ferry"
        ));
    }
    for insn in f.filter.chunks_exact(8) {
        let code = u16::from_le_bytes([insn[0], insn[1]]);
        let k = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        if code == BPF_RET_K && k & RET_ACTION_FULL == RET_USER_NOTIF {
            return Some(
                "a seccomp filter returning SECCOMP_RET_USER_NOTIF (its listener fd lives \
                 outside the task) is not supported by ferry"
                    .into(),
            );
        }
    }
    None
}

/// The chain of thread `tid` (indices into `table`, oldest first).
pub fn chain(
    tid: u32,
    core: &pb::CoreEntry,
    table: &[pb::SeccompFilter],
) -> Result<Vec<u32>, SeccompError> {
    let bad = |msg: String| SeccompError::Unsupported { tid, msg };
    match mode(core) {
        0 | 1 => return Ok(Vec::new()),
        2 => {}
        m => return Err(bad(format!("seccomp mode {m} is unknown"))),
    }
    let mut out = Vec::new();
    let mut at = newest(core).ok_or_else(|| bad("seccomp filter mode without a filter".into()))?;
    loop {
        let f = table.get(at as usize).ok_or_else(|| {
            bad(format!(
                "seccomp filter {at} is not in seccomp.img ({} filters)",
                table.len()
            ))
        })?;
        if out.len() > table.len() {
            return Err(bad(
                "seccomp.img: the filters' prev links form a loop".into()
            ));
        }
        if let Some(why) = unsupported(f) {
            return Err(bad(why));
        }
        out.push(at);
        match f.prev {
            Some(p) => at = p,
            None => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// Checks every thread of a task (before anything is forked).
pub fn check(
    cores: &[(u32, pb::CoreEntry)],
    table: &[pb::SeccompFilter],
) -> Result<(), SeccompError> {
    for (tid, core) in cores {
        chain(*tid, core, table)?;
    }
    Ok(())
}

/// Bytes [`lay_out`] may take in the task's arena (each distinct program once, the per-thread
/// lists and blocks, alignment), so a long chain never runs the arena out.
pub fn arena_need(cores: &[(u32, pb::CoreEntry)], table: &[pb::SeccompFilter]) -> u64 {
    let mut progs = std::collections::BTreeSet::new();
    let mut need = 64u64;
    for (tid, core) in cores {
        let ch = chain(*tid, core, table).unwrap_or_default();
        need += 64 + 64 + ch.len() as u64 * std::mem::size_of::<SeccompProg>() as u64;
        progs.extend(ch);
    }
    need + progs
        .iter()
        .map(|&i| table[i as usize].filter.len() as u64 + 8)
        .sum::<u64>()
}

/// Whether any thread of the task has a seccomp mode.
pub fn any(cores: &[(u32, pb::CoreEntry)]) -> bool {
    cores.iter().any(|(_, c)| mode(c) != 0)
}

/// Lays out each thread's [`SeccompArgs`] in the task's arena; returns one address per thread
/// (0: no seccomp), in `cores` order (main thread first).
pub fn lay_out(
    arena: &mut Arena,
    cores: &[(u32, pb::CoreEntry)],
    table: &[pb::SeccompFilter],
) -> Result<Vec<u64>, SeccompError> {
    let chains = cores
        .iter()
        .map(|(tid, c)| chain(*tid, c, table))
        .collect::<Result<Vec<_>, _>>()?;
    // The prefix every thread shares (only when every thread is in filter mode: TSYNC also
    // reaches threads without filters, which must stay without).
    let all_filter = cores.iter().all(|(_, c)| mode(c) == 2);
    let shared = if all_filter && cores.len() > 1 {
        let first = &chains[0];
        (0..first.len())
            .take_while(|&k| chains.iter().all(|c| c.get(k) == Some(&first[k])))
            .count()
    } else {
        0
    };
    let sync_word = if shared > 0 {
        arena.push(&[0u32], "seccomp sync word")?
    } else {
        0
    };
    let mut progs_at = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(cores.len());
    for (k, ((_, core), ch)) in cores.iter().zip(&chains).enumerate() {
        let m = mode(core);
        if m == 0 {
            out.push(0);
            continue;
        }
        // The main thread installs the shared prefix for everyone; the others only their rest.
        let own = if k == 0 { &ch[..] } else { &ch[shared..] };
        let mut progs = Vec::with_capacity(own.len());
        for &i in own {
            let f = &table[i as usize];
            let filter = match progs_at.get(&i) {
                Some(&at) => at,
                None => {
                    let at = arena.push_bytes(&f.filter, 8, "seccomp filter")?;
                    progs_at.insert(i, at);
                    at
                }
            };
            progs.push(SeccompProg {
                len: (f.filter.len() / 8) as u16,
                _pad: [0; 3],
                filter,
                flags: u64::from(f.flags.unwrap_or(0) & FLAGS_KEPT),
            });
        }
        let args = SeccompArgs {
            mode: m,
            nr_progs: progs.len() as u32,
            progs: arena.push(&progs, "seccomp programs")?,
            nr_tsync: if k == 0 { shared as u32 } else { 0 },
            _pad: 0,
            sync_word,
            wait_sync: u32::from(k > 0 && shared > 0),
            _pad2: 0,
        };
        out.push(arena.push(&[args], "seccomp arguments")?);
    }
    Ok(out)
}

/// Sets no_new_privs as the image says (in the task before its threads exist: they inherit it).
/// Never clears it: the kernel cannot, and a task that lacked it keeps lacking it.
pub fn set_nnp(pid: u32, creds: Option<&pb::CredsEntry>) -> Result<(), SeccompError> {
    if creds.and_then(|c| c.no_new_privs).unwrap_or(0) == 0 {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SeccompError::Nnp {
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Adds PTRACE_O_SUSPEND_SECCOMP to a thread ferry has seized for the final stage (the options
/// [`crate::restore_finish::seize`] set, plus this one), so neither the filters the blob installs
/// nor strict mode apply until ferry detaches.
pub fn suspend(tid: u32) -> Result<(), SeccompError> {
    let opts =
        libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_SUSPEND_SECCOMP;
    // SAFETY: PTRACE_SETOPTIONS on a stopped tracee of ours; no memory arguments.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, tid, 0, opts) };
    if r < 0 {
        return Err(SeccompError::Suspend {
            tid,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(insns: &[(u16, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(code, k) in insns {
            v.extend_from_slice(&code.to_le_bytes());
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&k.to_le_bytes());
        }
        v
    }

    fn core(mode: Option<i32>, filter: Option<u32>) -> pb::CoreEntry {
        pb::CoreEntry {
            thread_core: Some(pb::ThreadCoreEntry {
                seccomp_mode: mode,
                seccomp_filter: filter,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn table() -> Vec<pb::SeccompFilter> {
        let allow = prog(&[(BPF_RET_K, 0x7fff_0000)]);
        vec![
            pb::SeccompFilter {
                filter: allow.clone(),
                prev: None,
                flags: None,
            },
            pb::SeccompFilter {
                filter: prog(&[(0x20, 0), (BPF_RET_K, 0x7fff_0000)]),
                prev: Some(0),
                flags: Some(2),
            },
            pb::SeccompFilter {
                filter: allow,
                prev: Some(0),
                flags: None,
            },
        ]
    }

    #[test]
    fn arena_need_covers_what_lay_out_takes() {
        let t = table();
        let cores = vec![
            (10, core(Some(2), Some(1))),
            (11, core(Some(2), Some(2))),
            (12, core(Some(1), None)),
        ];
        let need = arena_need(&cores, &t) as usize;
        let mut buf = vec![0u64; need.div_ceil(8) + 1];
        // Start misaligned by 8 so every alignment costs what it can.
        // SAFETY: buf holds need + 8 writable bytes alive for the test.
        let mut a = unsafe { Arena::new(buf.as_mut_ptr() as u64 + 8, need) };
        lay_out(&mut a, &cores, &t).unwrap();
    }

    #[test]
    fn chains_are_oldest_first() {
        let t = table();
        assert_eq!(chain(1, &core(Some(2), Some(1)), &t).unwrap(), vec![0, 1]);
        assert_eq!(
            chain(1, &core(Some(1), None), &t).unwrap(),
            Vec::<u32>::new()
        );
        assert!(chain(1, &core(Some(2), Some(9)), &t).is_err());
        assert!(chain(1, &core(Some(2), None), &t).is_err());
        assert!(chain(1, &core(Some(3), None), &t).is_err());
    }

    #[test]
    fn loops_and_unsupported_filters_are_refused_by_name() {
        let mut t = table();
        t[0].prev = Some(1);
        assert!(chain(1, &core(Some(2), Some(1)), &t)
            .unwrap_err()
            .to_string()
            .contains("loop"));
        let mut t = table();
        t[1].filter = prog(&[(BPF_RET_K, RET_USER_NOTIF)]);
        let e = chain(7, &core(Some(2), Some(1)), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("thread 7") && e.contains("SECCOMP_RET_USER_NOTIF"),
            "{e}"
        );
        let mut t = table();
        t[1].flags = Some(8);
        let e = chain(7, &core(Some(2), Some(1)), &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SECCOMP_FILTER_FLAG_NEW_LISTENER"), "{e}");
        let mut t = table();
        t[1].filter.pop();
        assert!(chain(7, &core(Some(2), Some(1)), &t).is_err());
    }

    #[test]
    fn shared_prefix_goes_to_the_main_thread_with_tsync() {
        let t = table();
        let cores = vec![(10, core(Some(2), Some(1))), (11, core(Some(2), Some(2)))];
        let mut buf = vec![0u64; 1024];
        // SAFETY: buf is 8 KiB of writable memory alive for the test.
        let mut a = unsafe { Arena::new(buf.as_mut_ptr() as u64, 8192) };
        let at = lay_out(&mut a, &cores, &t).unwrap();
        // SAFETY: lay_out wrote SeccompArgs at these addresses inside buf.
        let (m, o) = unsafe {
            (
                *(at[0] as *const SeccompArgs),
                *(at[1] as *const SeccompArgs),
            )
        };
        assert_eq!((m.mode, m.nr_progs, m.nr_tsync, m.wait_sync), (2, 2, 1, 0));
        assert_eq!((o.mode, o.nr_progs, o.nr_tsync, o.wait_sync), (2, 1, 0, 1));
        assert_eq!(m.sync_word, o.sync_word);
        assert_ne!(m.sync_word, 0);
        // SAFETY: progs point at SeccompProg lists lay_out wrote inside buf.
        let (p0, p1) = unsafe {
            (
                *((m.progs + 24) as *const SeccompProg),
                *(o.progs as *const SeccompProg),
            )
        };
        assert_eq!((p0.len, p0.flags), (2, 2));
        assert_eq!((p1.len, p1.flags), (1, 0));
        // A thread without seccomp: no TSYNC at all, every thread installs its own chain.
        let cores = vec![(10, core(Some(2), Some(1))), (11, core(None, None))];
        let at = lay_out(&mut a, &cores, &t).unwrap();
        assert_eq!(at[1], 0);
        // SAFETY: as above.
        let m = unsafe { *(at[0] as *const SeccompArgs) };
        assert_eq!((m.nr_progs, m.nr_tsync, m.sync_word), (2, 0, 0));
    }
}

//! Restore half of credentials and per-process limits, applied by the task's Rust half:
//! personality, rlimits (raised only as far as the restoring process may: without
//! CAP_SYS_RESOURCE a hard limit cannot go up, so it is clamped to the current one) and the
//! capability sets. Bounding and ambient sets are set here; effective/permitted/inheritable are
//! handed to the restorer, which calls `capset` after its own privileged steps. A task with other
//! uids/gids than the restoring process is refused with a clear error for now.

use ferry_images::pb;
use thiserror::Error;

/// Errors restoring credentials.
#[derive(Debug, Error)]
pub enum CredsError {
    /// Not supported yet.
    #[error("task {pid}: {what} is not supported by ferry's restore yet")]
    Unsupported {
        /// Task.
        pid: u32,
        /// What.
        what: String,
    },
    /// A syscall failed.
    #[error("task {pid}: {op}: {source}")]
    Sys {
        /// Task.
        pid: u32,
        /// Operation.
        op: String,
        /// Why.
        source: std::io::Error,
    },
}

fn caps_of(v: &[u32]) -> u64 {
    u64::from(v.first().copied().unwrap_or(0)) | (u64::from(v.get(1).copied().unwrap_or(0)) << 32)
}

/// This process's (effective, permitted, inheritable) sets.
fn current_caps() -> (u64, u64, u64) {
    let hdr: [u32; 2] = [0x2008_0522, 0];
    let mut d = [0u32; 6];
    // SAFETY: capget with a v3 header and room for two data structs.
    unsafe { libc::syscall(libc::SYS_capget, hdr.as_ptr(), d.as_mut_ptr()) };
    let j = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    (j(d[0], d[3]), j(d[1], d[4]), j(d[2], d[5]))
}

/// Checks the image's credentials against this process and returns the capability block for
/// the restorer (`None` when nothing needs to change).
pub fn check(pid: u32, c: &pb::CredsEntry) -> Result<Option<[u32; 6]>, CredsError> {
    let (mut ruid, mut euid, mut suid, mut rgid, mut egid, mut sgid) = (0, 0, 0, 0, 0, 0);
    // SAFETY: getres[ug]id write three ids each into valid locals.
    unsafe {
        libc::getresuid(&mut ruid, &mut euid, &mut suid);
        libc::getresgid(&mut rgid, &mut egid, &mut sgid);
    }
    if (c.uid, c.euid, c.suid, c.fsuid) != (ruid, euid, suid, euid)
        || (c.gid, c.egid, c.sgid, c.fsgid) != (rgid, egid, sgid, egid)
    {
        return Err(CredsError::Unsupported {
            pid,
            what: format!(
                "restoring uids {}/{}/{} gids {}/{}/{} as a process with uids {ruid}/{euid}/{suid} gids {rgid}/{egid}/{sgid}",
                c.uid, c.euid, c.suid, c.gid, c.egid, c.sgid
            ),
        });
    }
    let (eff, prm, inh) = current_caps();
    let (ie, ip, ii) = (
        caps_of(&c.cap_eff),
        caps_of(&c.cap_prm),
        caps_of(&c.cap_inh),
    );
    if ip & !prm != 0 {
        return Err(CredsError::Unsupported {
            pid,
            what: format!(
                "granting capabilities {:#x} the restoring process does not hold",
                ip & !prm
            ),
        });
    }
    if (ie, ip, ii) == (eff, prm, inh) {
        return Ok(None);
    }
    Ok(Some([
        ie as u32,
        (ie >> 32) as u32,
        ip as u32,
        (ip >> 32) as u32,
        ii as u32,
        (ii >> 32) as u32,
    ]))
}

/// Drops bounding-set capabilities the image did not have (needs CAP_SETPCAP, held until the
/// restorer's capset).
pub fn set_bounding(pid: u32, c: &pb::CredsEntry) -> Result<(), CredsError> {
    if c.cap_bnd.is_empty() {
        return Ok(());
    }
    let bnd = caps_of(&c.cap_bnd);
    for cap in 0..64u64 {
        if bnd & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let has = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if has == 1 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                return Err(CredsError::Sys {
                    pid,
                    op: format!("PR_CAPBSET_DROP {cap}"),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
}

/// Applies personality and rlimits. Returns notes on limits that had to be clamped.
pub fn apply(pid: u32, tc: &pb::TaskCoreEntry) -> Result<Vec<String>, CredsError> {
    let mut notes = Vec::new();
    // SAFETY: personality with an integer argument.
    if unsafe { libc::personality(tc.personality as libc::c_ulong) } < 0 {
        return Err(CredsError::Sys {
            pid,
            op: format!("personality({:#x})", tc.personality),
            source: std::io::Error::last_os_error(),
        });
    }
    let Some(rl) = &tc.rlimits else {
        return Ok(notes);
    };
    for (res, want) in rl.rlimits.iter().enumerate() {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit on ourselves reading into a valid rlimit.
        if unsafe { libc::prlimit(0, res as _, std::ptr::null(), &mut cur) } != 0 {
            continue; // a resource this kernel does not know
        }
        if (cur.rlim_cur, cur.rlim_max) == (want.cur, want.max) {
            continue;
        }
        let max = want.max.min(cur.rlim_max);
        let new = libc::rlimit {
            rlim_cur: want.cur.min(max),
            rlim_max: max,
        };
        if (new.rlim_cur, new.rlim_max) != (want.cur, want.max) {
            notes.push(format!(
                "task {pid}: rlimit {res} clamped to {}/{} (image {}/{}; raising a hard limit needs CAP_SYS_RESOURCE)",
                new.rlim_cur, new.rlim_max, want.cur, want.max
            ));
        }
        // SAFETY: prlimit on ourselves with a valid new limit.
        if unsafe { libc::prlimit(0, res as _, &new, std::ptr::null_mut()) } != 0 {
            return Err(CredsError::Sys {
                pid,
                op: format!("setrlimit({res})"),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(notes)
}

//! Restore half of credentials and per-process limits, applied by the task's Rust half:
//! personality, rlimits (raised only as far as the restoring process may: without
//! CAP_SYS_RESOURCE a hard limit cannot go up, so it is clamped to the current one) and the
//! capability sets. The bounding set is set here; effective/permitted/inheritable are handed to
//! the restorer, which calls `capset` after its own privileged steps and then raises the
//! ambient set (a uid change away from 0, or a lowered permitted or inheritable set, clears it,
//! so nothing earlier could hold it).
//!
//! Ids ([`set_ids`]): the task's Rust half takes the image's groups, gids and uids (as they
//! are: in a container with its own user namespace the images hold them as seen inside, and
//! the task runs inside) once everything it opens is open, as CRIU's restorer does. Leaving
//! uid 0 would clear the permitted and effective sets, so `PR_SET_KEEPCAPS` holds the permitted
//! set across `setresuid` and the effective set is raised again to it: the restorer still
//! needs it (PR_SET_MM, clone3 with set_tid for threads, seccomp) until its final `capset`.
//! The image's securebits come last.

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
    let ids_change = (c.uid, c.euid, c.suid, c.fsuid) != (ruid, euid, suid, euid)
        || (c.gid, c.egid, c.sgid, c.fsgid) != (rgid, egid, sgid, egid)
        || c.groups != own_groups();
    let (eff, prm, inh) = current_caps();
    const SETGID: u64 = 1 << 6;
    const SETUID: u64 = 1 << 7;
    if ids_change && prm & (SETUID | SETGID) != SETUID | SETGID {
        return Err(CredsError::Unsupported {
            pid,
            what: format!(
                "restoring uids {}/{}/{} gids {}/{}/{} without CAP_SETUID and CAP_SETGID \
                 (the restoring process has uids {ruid}/{euid}/{suid} gids {rgid}/{egid}/{sgid})",
                c.uid, c.euid, c.suid, c.gid, c.egid, c.sgid
            ),
        });
    }
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
    // New ids leave the effective set at the permitted one (see [`set_ids`]): the restorer's
    // capset then always has work to do.
    if (ie, ip, ii) == (eff, prm, inh) && !ids_change {
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

/// The image's ambient set for the restorer (bit n = capability n).
pub fn ambient(c: &pb::CredsEntry) -> u64 {
    caps_of(&c.cap_amb)
}

fn own_groups() -> Vec<u32> {
    nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

fn sys(pid: u32, op: String) -> impl FnOnce(std::io::Error) -> CredsError {
    move |source| CredsError::Sys { pid, op, source }
}

fn check_rc(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes the image's groups, gids, uids, fs ids and securebits (the task is single-threaded:
/// its threads are the restorer's clones, made later). Capabilities: see the module docs.
pub fn set_ids(pid: u32, c: &pb::CredsEntry) -> Result<(), CredsError> {
    let (mut ruid, mut euid, mut suid, mut rgid, mut egid, mut sgid) = (0, 0, 0, 0, 0, 0);
    // SAFETY: getres[ug]id write three ids each into valid locals.
    unsafe {
        libc::getresuid(&mut ruid, &mut euid, &mut suid);
        libc::getresgid(&mut rgid, &mut egid, &mut sgid);
    }
    let same = (c.uid, c.euid, c.suid, c.fsuid) == (ruid, euid, suid, euid)
        && (c.gid, c.egid, c.sgid, c.fsgid) == (rgid, egid, sgid, egid)
        && c.groups == own_groups();
    if !same {
        // SAFETY: prctl with integer arguments only.
        check_rc(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
            .map_err(sys(pid, "PR_SET_KEEPCAPS".into()))?;
        // SAFETY: setgroups reads `len` gids from a live slice.
        check_rc(unsafe { libc::setgroups(c.groups.len(), c.groups.as_ptr()) })
            .map_err(sys(pid, format!("setgroups({:?})", c.groups)))?;
        // SAFETY: plain system calls on integer arguments.
        check_rc(unsafe { libc::setresgid(c.gid, c.egid, c.sgid) }).map_err(sys(
            pid,
            format!("setresgid({}, {}, {})", c.gid, c.egid, c.sgid),
        ))?;
        // SAFETY: as above.
        check_rc(unsafe { libc::setresuid(c.uid, c.euid, c.suid) }).map_err(sys(
            pid,
            format!("setresuid({}, {}, {})", c.uid, c.euid, c.suid),
        ))?;
        // setfs[ug]id report no error; the value read back tells.
        // SAFETY: as above.
        unsafe {
            libc::setfsgid(c.fsgid);
            libc::setfsuid(c.fsuid);
        }
        // SAFETY: with an invalid id, setfs[ug]id only return the current one.
        let (fsuid, fsgid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
        if (fsuid as u32, fsgid as u32) != (c.fsuid, c.fsgid) {
            return Err(CredsError::Sys {
                pid,
                op: format!("setfsuid({}) / setfsgid({})", c.fsuid, c.fsgid),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        // Leaving uid 0 cleared the effective set; the restorer's steps still need it.
        let (_, prm, inh) = current_caps();
        let hdr: [u32; 2] = [0x2008_0522, 0];
        let d: [u32; 6] = [
            prm as u32,
            prm as u32,
            inh as u32,
            (prm >> 32) as u32,
            (prm >> 32) as u32,
            (inh >> 32) as u32,
        ];
        // SAFETY: capset with a v3 header and two data structs.
        let r = unsafe { libc::syscall(libc::SYS_capset, hdr.as_ptr(), d.as_ptr()) };
        check_rc(r as libc::c_int).map_err(sys(pid, "capset (effective = permitted)".into()))?;
    }
    // SAFETY: prctl with integer arguments only.
    let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if bits >= 0 && bits as u32 != c.secbits {
        // SAFETY: prctl with integer arguments only.
        check_rc(unsafe {
            libc::prctl(libc::PR_SET_SECUREBITS, c.secbits as libc::c_ulong, 0, 0, 0)
        })
        .map_err(sys(pid, format!("PR_SET_SECUREBITS {:#x}", c.secbits)))?;
    }
    Ok(())
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

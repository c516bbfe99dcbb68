//! Dump half: credentials, capabilities and resource limits.
//!
//! Kernel mechanism: /proc/PID/task/TID/status shows each thread's uid/gid quadruples,
//! supplementary groups, the five capability sets and no_new_privs; securebits only
//! `prctl(PR_GET_SECUREBITS)` in the thread returns (a remote syscall). Resource limits are per
//! process and `prlimit(pid, ...)` reads them from outside; reading another user's limits that
//! way needs CAP_SYS_RESOURCE, which root may lack (as on this project's CI machine), so then
//! they are read from /proc/PID/limits, which anyone may read.

use ferry_images::pb;

/// Errors of the creds dump.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// /proc status unreadable.
    #[error("thread {tid}: reading {path}: {source}")]
    Proc {
        tid: i32,
        path: String,
        source: std::io::Error,
    },
    /// A status line did not parse.
    #[error("thread {tid}: /proc status field {field}: cannot parse {value:?}")]
    Parse {
        tid: i32,
        field: &'static str,
        value: String,
    },
    /// prlimit failed.
    #[error("task {pid}: prlimit({resource}): {source}")]
    Rlimit {
        pid: i32,
        resource: u32,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CredsError>;

/// Number of resource limits CRIU stores (RLIM_NLIMITS).
pub const RLIM_NLIMITS: u32 = 16;

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn caps(tid: i32, text: &str, name: &'static str) -> Result<Vec<u32>> {
    let v = field(text, name).unwrap_or("0");
    let n = u64::from_str_radix(v, 16).map_err(|_| CredsError::Parse {
        tid,
        field: name,
        value: v.into(),
    })?;
    Ok(vec![n as u32, (n >> 32) as u32])
}

fn ids4(tid: i32, text: &str, name: &'static str) -> Result<[u32; 4]> {
    let v = field(text, name).unwrap_or("");
    let bad = || CredsError::Parse {
        tid,
        field: name,
        value: v.into(),
    };
    let n: Vec<u32> = v
        .split_whitespace()
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    n.try_into().map_err(|_| bad())
}

/// `creds_entry` of thread `tid` of task `pid` from its status text and securebits.
pub fn parse_creds(tid: i32, text: &str, secbits: u32) -> Result<pb::CredsEntry> {
    let u = ids4(tid, text, "Uid")?;
    let g = ids4(tid, text, "Gid")?;
    let groups = field(text, "Groups")
        .unwrap_or("")
        .split_whitespace()
        .map(|x| {
            x.parse().map_err(|_| CredsError::Parse {
                tid,
                field: "Groups",
                value: x.into(),
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    let nnp = field(text, "NoNewPrivs").and_then(|v| v.parse::<u32>().ok());
    Ok(pb::CredsEntry {
        uid: u[0],
        euid: u[1],
        suid: u[2],
        fsuid: u[3],
        gid: g[0],
        egid: g[1],
        sgid: g[2],
        fsgid: g[3],
        cap_inh: caps(tid, text, "CapInh")?,
        cap_prm: caps(tid, text, "CapPrm")?,
        cap_eff: caps(tid, text, "CapEff")?,
        cap_bnd: caps(tid, text, "CapBnd")?,
        secbits,
        groups,
        lsm_profile: None,
        lsm_sockcreate: None,
        apparmor_data: None,
        // CRIU 4.2 leaves the field out when the bit is clear.
        no_new_privs: nnp.filter(|v| *v != 0),
        cap_amb: caps(tid, text, "CapAmb")?,
    })
}

/// Reads and parses /proc/PID/task/TID/status.
pub fn creds(pid: i32, tid: i32, secbits: u32) -> Result<pb::CredsEntry> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| CredsError::Proc {
        tid,
        path: path.clone(),
        source,
    })?;
    parse_creds(tid, &text, secbits)
}

/// All RLIM_NLIMITS limits of task `pid`.
pub fn rlimits(pid: i32) -> Result<pb::TaskRlimitsEntry> {
    let mut rlimits = Vec::new();
    for resource in 0..RLIM_NLIMITS {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit with a null new limit only writes `old`.
        let r = unsafe { libc::prlimit(pid, resource as _, std::ptr::null(), &mut old) };
        if r != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EPERM) {
                return proc_limits(pid).map_err(|source| CredsError::Rlimit {
                    pid,
                    resource,
                    source,
                });
            }
            return Err(CredsError::Rlimit {
                pid,
                resource,
                source,
            });
        }
        rlimits.push(pb::RlimitEntry {
            cur: old.rlim_cur,
            max: old.rlim_max,
        });
    }
    Ok(pb::TaskRlimitsEntry { rlimits })
}

/// The limits as /proc/PID/limits shows them: a header, then one line per resource in
/// RLIMIT_* order, `%-25s %-20s %-20s %-10s` (name, soft, hard, units), "unlimited" for
/// RLIM_INFINITY.
fn proc_limits(pid: i32) -> std::io::Result<pb::TaskRlimitsEntry> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    parse_limits(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/limits: unexpected layout"),
        )
    })
}

fn parse_limits(text: &str) -> Option<pb::TaskRlimitsEntry> {
    let value = |v: &str| match v.trim() {
        "unlimited" => Some(libc::RLIM_INFINITY),
        n => n.parse().ok(),
    };
    let rlimits = text
        .lines()
        .skip(1)
        .take(RLIM_NLIMITS as usize)
        .map(|l| {
            Some(pb::RlimitEntry {
                cur: value(l.get(26..46)?)?,
                max: value(l.get(47..67)?)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    (rlimits.len() == RLIM_NLIMITS as usize).then_some(pb::TaskRlimitsEntry { rlimits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_limits_equal_prlimit() {
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        assert_eq!(parse_limits(&text).unwrap(), rlimits(me).unwrap());
        assert!(parse_limits("Limit\nMax cpu time  x\n").is_none());
    }

    #[test]
    fn parses_status() {
        let text = "Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \n\
                    CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n\
                    CapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";
        let c = parse_creds(9, text, 0).unwrap();
        assert_eq!((c.uid, c.euid, c.suid, c.fsuid, c.fsgid), (1, 2, 3, 4, 8));
        assert_eq!(c.groups, vec![10, 20]);
        assert_eq!(c.cap_prm, vec![4278190079, 511]);
        assert_eq!(c.no_new_privs, None);
        let e = parse_creds(9, "Uid:\t1 2\n", 0).unwrap_err().to_string();
        assert!(e.contains("thread 9") && e.contains("Uid"), "{e}");
    }

    #[test]
    fn own_rlimits() {
        let r = rlimits(std::process::id() as i32).unwrap();
        assert_eq!(r.rlimits.len(), 16);
    }
}

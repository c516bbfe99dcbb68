//! Files in flight in unix socket queues (SCM_RIGHTS), both halves.
//!
//! Kernel mechanism: a file sent with SCM_RIGHTS and not received yet lives in the receiver's
//! queue as a reference to its open file description. A peek ([`super::queue`]) gives ferry
//! an fd on each; once every task's fds are dumped, each is dumped as any task's fd would be
//! (so a description a task also holds is found shared by `kcmp(KCMP_FILE)` and keeps one
//! files.img id), and the sk-queues.img entry of its message lists the ids in an `scm` entry
//! of type SCM_RIGHTS, as CRIU writes it. Restore keeps back the queue of every receiver with
//! files in flight until all task-held descriptions are open, then opens the rest in the
//! coordinator and sends each message again with `sendmsg(SCM_RIGHTS)`; a socket in flight has
//! its own queue filled first.
//!
//! Refused by name: sockets that carry themselves through their queues (a loop only the
//! kernel's garbage collector could free), more than [`MAX_IN_FLIGHT`] fds in flight, and kinds
//! whose restore needs a task (pidfds; epoll instances, terminals and inet sockets that no task
//! holds).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use ferry_images::pb;

use super::queue::send_msg;
use super::UnixError;
use crate::files::dump::{FileTable, FilesError};

/// At most this many fds may be in flight in the queues of one dump (references, counting a
/// file passed twice twice); the kernel allows 253 per message.
pub const MAX_IN_FLIGHT: usize = 4096;
/// SCM_MAX_FD of the kernel: fds one message can carry.
pub const SCM_MAX_FD: usize = 253;

/// A description in flight that ferry holds while the dump lasts.
#[derive(Debug)]
pub struct Flight {
    /// ferry's fd on it.
    pub fd: OwnedFd,
    dev: u64,
    ino: u64,
    /// The task, fd and socket inode whose queue holds it (the task's socket that is or leads to
    /// the receiver).
    pub owner: (i32, i32, u32),
    /// Its files.img id, once dumped.
    pub id: Option<u32>,
}

pub(super) fn same_description(a: RawFd, b: RawFd) -> bool {
    let me = std::process::id() as i32;
    // SAFETY: kcmp only compares kernel objects; no memory is passed.
    unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, a, b) == 0 }
}

impl super::UnixDump {
    /// Keeps the files of one peeked message; returns their indexes in `self.flight` (one per
    /// fd, a description already held is not held twice).
    pub(super) fn hold(
        &mut self,
        owner: (i32, i32, u32),
        rights: Vec<OwnedFd>,
    ) -> std::result::Result<Vec<usize>, UnixError> {
        let (pid, fd, ino) = owner;
        let err = |what: String| UnixError::InFlight { pid, fd, ino, what };
        self.refs += rights.len();
        if self.refs > MAX_IN_FLIGHT {
            return Err(err(format!(
                "more than {MAX_IN_FLIGHT} file descriptors in flight (SCM_RIGHTS) in the queues \
                 of the tree"
            )));
        }
        let mut out = Vec::with_capacity(rights.len());
        for f in rights {
            let md = std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .map_err(|e| err(format!("fstat of a file in flight: {e}")))?;
            let (dev, ino) = (md.dev(), md.ino());
            let known = self.flight.iter().position(|x| {
                x.dev == dev && x.ino == ino && same_description(x.fd.as_raw_fd(), f.as_raw_fd())
            });
            out.push(match known {
                Some(i) => i,
                None => {
                    self.flight.push(Flight {
                        fd: f,
                        dev,
                        ino,
                        owner,
                        id: None,
                    });
                    self.flight.len() - 1
                }
            });
        }
        Ok(out)
    }
}

/// Whether ferry restores a description of this type that only a queue holds.
fn restorable_in_flight(ty: i32) -> bool {
    use pb::FdTypes as T;
    matches!(
        T::try_from(ty),
        Ok(T::Reg
            | T::Pipe
            | T::Fifo
            | T::Eventfd
            | T::Signalfd
            | T::Timerfd
            | T::Inotify
            | T::Fanotify
            | T::Memfd
            | T::Unixsk)
    )
}

impl FileTable {
    /// Dumps every file in flight in the queues dumped so far (and in the queues of sockets in
    /// flight, as they turn up), then fills in the `scm` entries of the queued messages and
    /// refuses loops. Runs once every task's fds are dumped, so a description a task holds
    /// is found shared by `kcmp`.
    pub(super) fn dump_in_flight(&mut self) -> std::result::Result<(), FilesError> {
        let me = std::process::id() as i32;
        let mut i = 0;
        while i < self.unix.flight.len() {
            let raw = self.unix.flight[i].fd.as_raw_fd();
            let owner = self.unix.flight[i].owner;
            let (pid, fd, ino) = owner;
            let err = |what: String| UnixError::InFlight { pid, fd, ino, what };
            self.unix.ctx = Some(owner);
            // A socket in flight other than a unix one is refused before anything touches it
            // (an inet dump would put a connection into repair mode).
            let md = std::fs::metadata(format!("/proc/self/fd/{raw}")).ok();
            if let Some(m) = md.filter(|m| m.mode() & libc::S_IFMT == libc::S_IFSOCK) {
                if !self.unix.is_unix(me, m.ino()).unwrap_or(false) {
                    self.unix.ctx = None;
                    return Err(err(format!(
                        "a socket in flight (SCM_RIGHTS), inode {}, that is not a unix socket of \
                         the task's network namespace; ferry restores only unix sockets in flight",
                        m.ino()
                    ))
                    .into());
                }
            }
            let before = self.entries.len();
            let r = self.dump_fd(me, raw, false);
            self.unix.ctx = None;
            let fi = r.map_err(|e| err(format!("a file in flight: {e}")))?;
            let e = self.entries.iter().rev().find(|e| e.id == fi.id);
            let ty = e.map_or(0, |e| e.r#type);
            let name = pb::FdTypes::try_from(ty).map_or("unknown", |t| t.as_str_name());
            if ty == pb::FdTypes::Pidfd as i32
                || (self.entries.len() > before && !restorable_in_flight(ty))
            {
                return Err(err(format!(
                    "a file of type {name} in flight (SCM_RIGHTS) that no task holds; ferry \
                     restores regular files, pipes, FIFOs, eventfd, signalfd, timerfd, inotify, \
                     fanotify, memfd and unix sockets in flight"
                ))
                .into());
            }
            self.unix.flight[i].id = Some(fi.id);
            i += 1;
        }
        let ids: Vec<u32> = self.unix.flight.iter().filter_map(|f| f.id).collect();
        for q in &mut self.unix.queues {
            if !q.rights.is_empty() {
                q.entry.scm = vec![pb::ScmEntry {
                    r#type: libc::SCM_RIGHTS as u32,
                    rights: q.rights.iter().map(|&k| ids[k]).collect(),
                }];
            }
        }
        self.unix.refuse_loops()?;
        Ok(())
    }
}

impl super::UnixDump {
    /// A unix socket whose queue carries, directly or through sockets in flight, that socket
    /// itself is refused: nothing but the kernel's garbage collector could ever read it.
    fn refuse_loops(&self) -> std::result::Result<(), UnixError> {
        let socks: HashMap<u32, (i32, i32, u32)> = self
            .socks
            .iter()
            .map(|r| (r.id, (r.pid, r.fd, r.diag.ino)))
            .collect();
        let mut carries: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for q in &self.queues {
            for s in q.entry.scm.iter().flat_map(|s| &s.rights) {
                if socks.contains_key(s) {
                    carries.entry(q.entry.id_for).or_default().push(*s);
                }
            }
        }
        // Depth-first from every carrier: 1 = on the path, 2 = done.
        let mut state: HashMap<u32, u8> = HashMap::new();
        fn visit(
            n: u32,
            carries: &BTreeMap<u32, Vec<u32>>,
            state: &mut HashMap<u32, u8>,
            path: &mut Vec<u32>,
        ) -> Option<Vec<u32>> {
            match state.get(&n) {
                Some(2) => return None,
                Some(_) => {
                    let from = path.iter().position(|&p| p == n).unwrap_or(0);
                    return Some(path[from..].to_vec());
                }
                None => {}
            }
            state.insert(n, 1);
            path.push(n);
            for &m in carries.get(&n).into_iter().flatten() {
                if let Some(l) = visit(m, carries, state, path) {
                    return Some(l);
                }
            }
            path.pop();
            state.insert(n, 2);
            None
        }
        for &n in carries.keys() {
            if let Some(lp) = visit(n, &carries, &mut state, &mut Vec::new()) {
                let (pid, fd, ino) = socks[&lp[0]];
                let inodes: Vec<String> = lp.iter().map(|i| socks[i].2.to_string()).collect();
                return Err(UnixError::InFlight {
                    pid,
                    fd,
                    ino,
                    what: format!(
                        "a unix socket in flight carries itself (loop through socket inodes {}); \
                         only the kernel's garbage collector could free it",
                        inodes.join(" -> ")
                    ),
                });
            }
        }
        Ok(())
    }
}

// ---- restore ----

/// A queued message kept back until the files it carries are open: every message of a
/// receiver that has files in flight waits, so its queue keeps its order.
#[derive(Debug)]
pub struct Deferred {
    /// ferry's fd on the socket that sends it.
    pub sender: OwnedFd,
    /// The receiver's name, when the sender is not connected to it.
    pub to: Option<Vec<u8>>,
    /// files.img id of the receiver.
    pub receiver: u32,
    /// Whether the receiver is a stream.
    pub stream: bool,
    /// files.img ids of the files in flight with it.
    pub rights: Vec<u32>,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// The files.img ids an sk-queues.img entry carries (SCM_RIGHTS is the only kind CRIU writes).
pub fn rights_of(e: &pb::SkPacketEntry) -> std::result::Result<Vec<u32>, String> {
    match e.scm.as_slice() {
        [] => Ok(Vec::new()),
        [s] if s.r#type == libc::SCM_RIGHTS as u32 && s.rights.len() <= SCM_MAX_FD => {
            Ok(s.rights.clone())
        }
        [s] if s.r#type == libc::SCM_RIGHTS as u32 => Err(format!(
            "a message carries {} files, more than the kernel's {SCM_MAX_FD}",
            s.rights.len()
        )),
        [s] => Err(format!("an SCM entry of type {}, not SCM_RIGHTS", s.r#type)),
        v => Err(format!(
            "{} SCM entries on one message (at most 1)",
            v.len()
        )),
    }
}

/// Receivers in the order their queues are filled: a socket that travels in another's queue
/// gets its own queue first (as it had it when it was sent).
fn fill_order(deferred: &[Deferred]) -> Vec<u32> {
    let receivers: Vec<u32> = deferred.iter().fold(Vec::new(), |mut v, d| {
        if !v.contains(&d.receiver) {
            v.push(d.receiver);
        }
        v
    });
    let mut out: Vec<u32> = Vec::new();
    fn visit(r: u32, deferred: &[Deferred], receivers: &[u32], out: &mut Vec<u32>, depth: u32) {
        if out.contains(&r) || depth > 64 {
            return; // a loop in a bad image: its order no longer matters
        }
        for d in deferred.iter().filter(|d| d.receiver == r) {
            for x in d.rights.iter().filter(|x| receivers.contains(x)) {
                visit(*x, deferred, receivers, out, depth + 1);
            }
        }
        if !out.contains(&r) {
            out.push(r);
        }
    }
    for &r in &receivers {
        visit(r, deferred, &receivers, &mut out, 0);
    }
    out
}

/// Sends every kept-back message with the files it carries: the description a task holds when
/// one does (already open in `p.out.fds`), else one opened here and closed once in flight.
/// Runs in the coordinator after every task's fds are open, before pipes are filled.
pub fn send_in_flight(
    p: &mut crate::files::restore::Prep,
) -> std::result::Result<(), crate::files::restore::RestoreError> {
    let deferred = std::mem::take(&mut p.unix.deferred);
    if deferred.is_empty() {
        return Ok(());
    }
    let r = send_deferred(p, deferred);
    if r.is_err() {
        // Nothing is restored: the names this restore bound go again.
        p.unix.remove_bound();
    }
    r
}

fn send_deferred(
    p: &mut crate::files::restore::Prep,
    deferred: Vec<Deferred>,
) -> std::result::Result<(), crate::files::restore::RestoreError> {
    use crate::files::restore::RestoreError;
    let files = p.files;
    let state = |r: u32, what: String| RestoreError::State {
        pid: 0,
        fd: 0,
        kind: "unix socket",
        what: format!("refilling the queue of socket id {r}: {what}"),
    };
    let mut mine: BTreeMap<u32, OwnedFd> = BTreeMap::new();
    for r in fill_order(&deferred) {
        for m in deferred.iter().filter(|d| d.receiver == r) {
            let mut raws = Vec::with_capacity(m.rights.len());
            for &id in &m.rights {
                if p.out.pidfds.contains_key(&id) {
                    return Err(state(r, format!("file id {id} in flight is a pidfd")));
                }
                if !p.out.fds.contains_key(&id) && !mine.contains_key(&id) {
                    let f = files.get(&id).ok_or_else(|| RestoreError::NoFile {
                        what: format!("a message queued for unix socket id {r}"),
                        id,
                    })?;
                    if !restorable_in_flight(f.r#type) {
                        return Err(state(
                            r,
                            format!(
                                "file id {id} in flight is of type {}, which ferry does not open \
                                 outside a task",
                                f.r#type
                            ),
                        ));
                    }
                    let fi = pb::FdinfoEntry {
                        id,
                        r#type: f.r#type,
                        ..Default::default()
                    };
                    let fd = crate::files::restore::open_fd(p, 0, &fi, f)
                        .map_err(|e| state(r, format!("opening file id {id} in flight: {e}")))?;
                    mine.insert(id, fd);
                }
                let fd = p.out.fds.get(&id).or_else(|| mine.get(&id));
                raws.push(fd.map_or(-1, |f| f.as_raw_fd()));
            }
            send_msg(
                m.sender.as_raw_fd(),
                &m.data,
                &raws,
                m.to.as_deref(),
                m.stream,
            )
            .map_err(|e| {
                state(
                    r,
                    format!(
                        "sending {} bytes with {} files in flight: {e}",
                        m.data.len(),
                        raws.len()
                    ),
                )
            })?;
        }
    }
    drop(deferred);
    p.unix.finish_post().map_err(|e| state(0, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scm_entries_are_checked() {
        let e = |scm: Vec<pb::ScmEntry>| pb::SkPacketEntry {
            id_for: 1,
            length: 0,
            scm,
        };
        let r = |t: u32, n: usize| pb::ScmEntry {
            r#type: t,
            rights: (0..n as u32).collect(),
        };
        assert_eq!(rights_of(&e(vec![])).unwrap(), Vec::<u32>::new());
        assert_eq!(rights_of(&e(vec![r(1, 3)])).unwrap(), vec![0, 1, 2]);
        assert!(rights_of(&e(vec![r(2, 1)])).unwrap_err().contains("type 2"));
        assert!(rights_of(&e(vec![r(1, 254)])).unwrap_err().contains("253"));
        assert!(rights_of(&e(vec![r(1, 1), r(1, 1)]))
            .unwrap_err()
            .contains("2 SCM entries"));
    }

    #[test]
    fn a_socket_in_flight_gets_its_own_queue_first() {
        let d = |receiver: u32, rights: Vec<u32>| Deferred {
            sender: std::fs::File::open("/dev/null").unwrap().into(),
            to: None,
            receiver,
            stream: false,
            rights,
            data: Vec::new(),
        };
        // 1 carries 2, 2 carries 3 and a plain file 9; 4 carries nothing.
        let v = [
            d(1, vec![2]),
            d(4, vec![]),
            d(2, vec![3, 9]),
            d(3, vec![]),
            d(1, vec![]),
        ];
        assert_eq!(fill_order(&v), vec![3, 2, 1, 4]);
    }
}

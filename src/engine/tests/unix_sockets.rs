//! Unix sockets through ferry's dump and restore, zdtm style: tests/workloads/unix_sk.c sets its
//! sockets up, says ready, is dumped and restored twice in a row, and then checks from the
//! inside (data intact and in order both ways, peers connected, names bound, listeners
//! accepting, shutdown state, shared descriptions) and writes PASS or what failed.
//! Cases ferry refuses must fail the dump with a clear error and leave the tree running.

mod crit;
mod restore_common;
mod support;
mod workload;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use restore_common::{kill_all, restore};
use support::{
    assert_none_left, assert_ok, assert_still_run, crit, dump, no_check, restore_ok, spawn_session,
    tree, verify_pass_and_exit, wait_gone, wait_ready_or_failed,
};

fn workload_bin(name: &str) -> PathBuf {
    workload::build(&format!("{name}.c"), name, &["-O1", "-Wall"])
}

/// A running workload tree; killed by pid and its directory removed on drop.
struct Workload {
    pid: u32,
    dir: tempfile::TempDir,
    pids: Vec<u32>,
}

impl Workload {
    fn start(mode: &str) -> Workload {
        Workload::start_of("unix_sk", mode)
    }

    /// Mode `mode` of workload `bin`.
    fn start_of(bin: &str, mode: &str) -> Workload {
        let dir = tempfile::Builder::new()
            .prefix("fus")
            .tempdir_in("/tmp")
            .unwrap();
        Workload::start_bin(bin, mode, dir)
    }

    fn start_in(mode: &str, dir: tempfile::TempDir) -> Workload {
        Workload::start_bin("unix_sk", mode, dir)
    }

    fn start_bin(bin: &str, mode: &str, dir: tempfile::TempDir) -> Workload {
        // SAFETY: prctl with integer arguments: restored trees become ours to reap.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let mut c = Command::new(workload_bin(bin));
        c.args([mode]).arg(dir.path());
        let pid = spawn_session(c, bin);
        let mut w = Workload {
            pid,
            dir,
            pids: vec![pid],
        };
        wait_ready_or_failed(w.path(), mode);
        w.pids = tree(pid);
        w
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sends the go signal and waits for the workload's own verdict.
    fn verify(&self) {
        let child = || {
            let c = std::fs::read_to_string(self.path().join("child-result"));
            format!(" (child: {c:?})")
        };
        verify_pass_and_exit(
            self.pid,
            &self.pids,
            self.path(),
            Duration::from_secs(15),
            child,
        );
    }

    /// Dumps the tree, which must succeed, and waits until it is gone.
    fn dump_gone(&self, d: &Path) {
        assert_ok(&dump(self.pid, d, &[]), d, "dump");
        wait_gone(&self.pids);
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        kill_all(&self.pids);
    }
}

/// Two dump/restore rounds; `check` looks at each image directory.
fn two_rounds(w: &Workload, extra: &[&str], check: &dyn Fn(&Path)) {
    support::two_rounds(
        &w.pids,
        |d| dump(w.pid, d, extra),
        |d| restore(d, &[]),
        check,
    );
}

#[test]
fn socketpairs_of_every_type_in_one_task() {
    let w = Workload::start("pair");
    two_rounds(&w, &[], &|d| {
        let files = crit(d, "files.img");
        assert_eq!(files.matches("\"UNIXSK\"").count(), 8, "{files}");
        let q = crit(d, "sk-queues.img");
        // 3 + 2 datagrams for each of dgram and seqpacket, one stream queue per direction,
        // and the big stream queue.
        assert_eq!(q.matches("\"id_for\"").count(), 13, "{q}");
    });
    w.verify();
}

#[test]
fn socketpairs_split_between_parent_and_child() {
    let w = Workload::start("tree");
    assert_eq!(w.pids.len(), 2, "parent and child");
    two_rounds(&w, &[], &no_check);
    w.verify();
}

#[test]
fn named_listening_and_pending_sockets() {
    let w = Workload::start("named");
    two_rounds(&w, &[], &|d| {
        let files = crit(d, "files.img");
        assert!(files.contains("listen.sock"), "{files}");
    });
    w.verify();
}

#[test]
fn servers_blocked_in_recv_and_accept() {
    let w = Workload::start("blocked");
    assert_eq!(w.pids.len(), 2, "parent and child");
    two_rounds(&w, &[], &no_check);
    w.verify();
}

#[test]
fn unlinked_bound_names() {
    let w = Workload::start("unlinked");
    two_rounds(&w, &[], &|d| {
        let files = crit(d, "files.img");
        assert!(files.contains("\"deleted\": true"), "{files}");
    });
    w.verify();
}

#[test]
fn shutdown_state_and_closed_peers() {
    let w = Workload::start("shutdown");
    two_rounds(&w, &[], &|d| {
        let files = crit(d, "files.img");
        assert!(files.contains("\"shutdown\""), "{files}");
    });
    w.verify();
}

/// A bound socket of the test itself (outside the tree), removed on drop.
struct Outside {
    fd: OwnedFd,
    path: PathBuf,
}

impl Outside {
    fn new(path: PathBuf, ty: i32) -> Outside {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero sockaddr_un is valid.
        let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        a.sun_family = libc::AF_UNIX as u16;
        for (d, s) in a.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
            *d = s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as u32;
        // SAFETY: binding our socket to a valid address.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
        assert_eq!(r, 0, "bind {}", path.display());
        if ty == libc::SOCK_STREAM {
            // SAFETY: listen on our socket.
            assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 4) }, 0);
        }
        Outside { fd, path }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts the workload of `mode`, which connects to socket `name` of the test in its directory.
fn start_ext(mode: &str, name: &str, ty: i32) -> (Outside, Workload) {
    let dir = tempfile::Builder::new()
        .prefix("fus")
        .tempdir_in("/tmp")
        .unwrap();
    let o = Outside::new(dir.path().join(name), ty);
    (o, Workload::start_in(mode, dir))
}

fn expect_refused(w: &Workload, extra: &[&str], what: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let out = dump(w.pid, d.path(), extra);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "dump should fail");
    for w in what {
        assert!(err.contains(w), "error {err:?} should name {w:?}");
    }
    assert!(
        err.contains(&format!("task {}", w.pid)),
        "error names the task: {err}"
    );
    assert_still_run(&w.pids);
}

#[test]
fn stream_peer_outside_the_tree_is_refused() {
    let (o, w) = start_ext("ext-stream", "ext-stream.sock", libc::SOCK_STREAM);
    expect_refused(
        &w,
        &[],
        &["fd 3", "outside the dumped tree", "--ext-unix-sk"],
    );
    expect_refused(&w, &["--ext-unix-sk"], &["fd 3", "outside the dumped tree"]);
    w.verify();
    drop(o);
}

#[test]
fn datagram_peer_outside_the_tree_with_ext_unix_sk() {
    let (o, w) = start_ext("ext-dgram", "ext-dgram.sock", libc::SOCK_DGRAM);
    expect_refused(&w, &[], &["fd 3", "outside the dumped tree"]);
    two_rounds(&w, &["--ext-unix-sk"], &|d| {
        let files = crit(d, "files.img");
        assert!(files.contains("ext-dgram.sock"), "{files}");
    });
    w.verify();
    let mut f = std::fs::File::from(o.fd.try_clone().unwrap());
    let mut b = [0u8; 32];
    // SAFETY: F_SETFL on our socket.
    unsafe { libc::fcntl(o.fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let n = f
        .read(&mut b)
        .expect("the restored tree's datagram reaches the outside socket");
    assert_eq!(&b[..n], b"from-inside");
}

#[test]
fn out_of_band_bytes_are_refused_and_kept() {
    let w = Workload::start("oob");
    expect_refused(&w, &[], &["fd 4", "MSG_OOB", "unix socket inode"]);
    w.verify();
}

/// Files in flight (SCM_RIGHTS) in a datagram and a stream queue: a pipe read end with data
/// behind it, a regular file at an offset that the task also holds, another only in flight,
/// one end of another socketpair whose own queue carries an eventfd, the pipe twice. The
/// workload receives them after two cycles and checks contents, offsets, flags and sharing.
#[test]
fn files_in_flight_survive_two_cycles() {
    let w = Workload::start_of("unix_scm", "inflight");
    two_rounds(&w, &[], &|d| {
        let json = |img| -> serde_json::Value { serde_json::from_str(&crit(d, img)).unwrap() };
        let files = json("files.img");
        let entries = files["entries"].as_array().unwrap();
        let by_id = |id: &serde_json::Value| {
            entries
                .iter()
                .find(|e| &e["id"] == id)
                .unwrap_or_else(|| panic!("file id {id} in flight is not in files.img"))
        };
        let q = json("sk-queues.img");
        let scms: Vec<&serde_json::Value> = q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.get("scm"))
            .collect();
        // "files", "sock", "listener" and "anon" on the datagram pair, the last byte of "def"
        // on the stream, the last byte of "efd" in the queue of the socket in flight.
        assert_eq!(scms.len(), 6, "{q}");
        let kinds: Vec<Vec<String>> = scms
            .iter()
            .map(|s| {
                assert_eq!(s[0]["type"], 1, "SCM_RIGHTS: {s}");
                s[0]["rights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| {
                        let e = by_id(id);
                        match e["type"].as_str().unwrap() {
                            "REG" => format!("REG@{}", e["reg"]["pos"]),
                            t => t.to_string(),
                        }
                    })
                    .collect()
            })
            .collect();
        assert!(
            kinds.contains(&vec!["PIPE".into(), "REG@5".into(), "REG@7".into()]),
            "{kinds:?}"
        );
        let socks = kinds.iter().filter(|k| *k == &vec!["UNIXSK".to_string()]);
        assert_eq!(
            socks.count(),
            2,
            "a socket and a listener in flight: {kinds:?}"
        );
        assert!(kinds.contains(&vec!["PIPE".into()]), "{kinds:?}");
        assert!(kinds.contains(&vec!["EVENTFD".into()]), "{kinds:?}");
        let anon: Vec<String> = vec!["REG@6".into(), "MEMFD".into(), "REG@2".into()];
        assert!(kinds.contains(&anon), "{kinds:?}");
        assert!(
            d.join("ghost-file-1.img").exists(),
            "the unlinked file's content"
        );
        // The pipe passed twice is one entry, the read end of the task's pipe.
        let pipe_ids: Vec<&serde_json::Value> = scms
            .iter()
            .flat_map(|s| s[0]["rights"].as_array().unwrap())
            .filter(|id| by_id(id)["type"] == "PIPE")
            .collect();
        assert_eq!(pipe_ids[0], pipe_ids[1], "{q}");
        let pipe = &by_id(pipe_ids[0])["pipe"]["pipe_id"];
        let ends = entries.iter().filter(|e| &e["pipe"]["pipe_id"] == pipe);
        assert_eq!(
            ends.count(),
            2,
            "the pipe's write end is the task's: {files}"
        );
        let efd = entries.iter().find(|e| e["type"] == "EVENTFD").unwrap();
        assert_eq!(efd["efd"]["counter"], 7);
        let listener = entries
            .iter()
            .find(|e| e["usk"]["state"] == 10)
            .expect("the listener in flight");
        assert!(listener.to_string().contains("l.sock"), "{listener}");
    });
    w.verify();
}

/// A file only in flight that is gone at restore: the restore fails naming the queue and the
/// file, leaves no task and no socket file behind, and succeeds once the file is back.
#[test]
fn restore_of_a_file_in_flight_that_is_gone_fails_cleanly_then_succeeds() {
    let w = Workload::start_of("unix_scm", "inflight");
    let d = tempfile::tempdir().unwrap();
    w.dump_gone(d.path());
    let only = w.path().join("only.txt");
    std::fs::rename(&only, w.path().join("only.txt.away")).unwrap();
    let out = restore(d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "restore without the file in flight succeeded"
    );
    assert!(
        err.contains("in flight") && err.contains("only.txt") && err.contains("queue of socket id"),
        "error does not name the file and the queue: {err}"
    );
    assert_none_left(&w.pids);
    assert!(
        !w.path().join("l.sock").exists(),
        "a failed restore left the listener's socket file behind"
    );
    std::fs::rename(w.path().join("only.txt.away"), &only).unwrap();
    restore_ok(d.path(), "second try");
    w.verify();
}

#[test]
fn a_socket_carrying_itself_is_refused_and_kept() {
    let w = Workload::start_of("unix_scm", "loop");
    expect_refused(&w, &[], &["fd 4", "carries itself", "unix socket inode"]);
    w.verify();
}

#[test]
fn two_sockets_in_flight_in_each_other_are_refused_and_kept() {
    let w = Workload::start_of("unix_scm", "loop2");
    expect_refused(
        &w,
        &[],
        &["carries itself", "loop through socket inodes", " -> "],
    );
    w.verify();
}

#[test]
fn an_epoll_only_in_flight_is_refused_and_kept() {
    let w = Workload::start_of("unix_scm", "epoll");
    expect_refused(&w, &[], &["fd 4", "EVENTPOLL", "no task holds"]);
    w.verify();
}

#[test]
fn credentials_a_restore_would_change_are_refused_and_kept() {
    let w = Workload::start_of("unix_scm", "creds");
    expect_refused(&w, &[], &["fd 4", "SCM_CREDENTIALS", "uid 4242"]);
    w.verify();
}

#[test]
fn an_inet_socket_in_flight_is_refused_and_kept() {
    let w = Workload::start_of("unix_scm", "inet");
    expect_refused(&w, &[], &["fd 4", "not a unix socket", "in flight"]);
    w.verify();
}

#[test]
fn too_many_fds_in_flight_are_refused_and_kept() {
    let w = Workload::start_of("unix_scm", "many");
    expect_refused(&w, &[], &["fd 4", "more than 4096", "SCM_RIGHTS"]);
    w.verify();
}

#[test]
fn data_in_a_connection_not_accepted_yet_is_refused_and_kept() {
    let w = Workload::start("pending-data");
    expect_refused(&w, &[], &["fd 3", "accept queue", "task", "fd 4"]);
    w.verify();
}

#[test]
fn restore_refuses_a_name_taken_by_a_live_socket_then_succeeds() {
    let w = Workload::start("named");
    let d = tempfile::tempdir().unwrap();
    w.dump_gone(d.path());
    // Someone else listens on the name now: the restore must fail cleanly.
    // (dgram.sock is bound after listen.sock, which the failed restore must remove again.)
    let path = w.path().join("dgram.sock");
    std::fs::remove_file(&path).unwrap();
    let blocker = Outside::new(path.clone(), libc::SOCK_DGRAM);
    let out = restore(d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "restore over a live name succeeded");
    assert!(
        err.contains("in use by a live socket") && err.contains("dgram.sock"),
        "error does not say which name is taken: {err}"
    );
    assert_none_left(&w.pids);
    assert!(
        !w.path().join("listen.sock").exists(),
        "a failed restore left a socket file behind"
    );
    drop(blocker);
    restore_ok(d.path(), "second try");
    w.verify();
}

/// The restore half on CRIU 4.2's own images (the `files` fixture: a stream socketpair, ids 8
/// and 9, with "0123456789" queued for 9), rebuilt in this process: the bytes arrive at 9 and
/// the ends are connected to each other.
#[test]
fn criu_fixture_socketpair_is_rebuilt_with_its_queue() {
    use ferry_engine::files::unix::restore::Sockets;
    let src = Path::new(restore_common::FIXTURES).join("files/images");
    let dir = ferry_images::ImageDir::open(&src).unwrap();
    let mut s = Sockets::default();
    let a = s.open(&dir, 8).expect("socket id 8");
    let b = s.open(&dir, 9).expect("socket id 9");
    let mut buf = [0u8; 32];
    // SAFETY: receiving into `buf` from our own socket.
    let n = unsafe {
        libc::recv(
            b.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            32,
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"0123456789");
    // SAFETY: sending from a static buffer on our own socket.
    let n = unsafe { libc::send(b.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
    assert_eq!(n, 1);
    // SAFETY: as above.
    let n = unsafe {
        libc::recv(
            a.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            32,
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"x");
}

//! Mappings of memfds, SysV shared memory and unlinked files across checkpoints, zdtm style: a C
//! workload per kind maps what it maps, says "ready", is dumped and restored twice in a row
//! (dump → restore → dump → restore) by `ferry-criu`, then is told (SIGUSR1) to verify from the
//! inside — contents, private copies, writes going through the mapping to the file (fd, segment)
//! and back, one object shared by fds, mappings and tasks, names, seals — and writes PASS or
//! what failed. Between the cycles the test compares each task's /proc maps, checks the images
//! classify the VMAs as CRIU does, and decodes every image with Debian's crit. Runs as root.

#[path = "container_res_common.rs"]
mod common;
mod crit;
mod restore_common;
mod support;
mod workload;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferry_images::{pb, ImageDir};
use restore_common::*;
use support::{crit_decodes, ready_value, spawn_session, verdict, wait_file, wait_gone, Cycles};

/// CRIU's VMA status bits the tests look for.
const VMA_FILE_PRIVATE: u32 = 1 << 6;
const VMA_FILE_SHARED: u32 = 1 << 7;
const VMA_ANON_SHARED: u32 = 1 << 8;
const VMA_AREA_SYSVIPC: u32 = 1 << 10;
const VMA_AREA_MEMFD: u32 = 1 << 14;

fn bin(name: &str) -> PathBuf {
    workload::build(&format!("{name}.c"), name, &["-O1", "-Wall"])
}

/// Starts a workload as a session leader with /dev/null stdio and waits for DIR/ready.
fn start(bin: &Path, work: &Path) -> u32 {
    start_in(bin, work, None)
}

/// [`start`], in the IPC namespace `ipc_ns` (an open /proc/PID/ns/ipc) when given.
fn start_in(bin: &Path, work: &Path, ipc_ns: Option<i32>) -> u32 {
    let mut c = Command::new(bin);
    c.arg(work);
    if let Some(ns) = ipc_ns {
        // SAFETY: setns in the child between fork and exec touches no shared state.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWIPC) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let pid = spawn_session(c, &bin.display().to_string());
    wait_file(&work.join("ready"), Duration::from_secs(10), || {
        assert!(exists(pid), "workload {} died preparing", bin.display())
    });
    pid
}

/// A `key=N` line of DIR/ready.
fn ready_of(work: &Path, key: &str) -> Option<i64> {
    ready_value(&work.join("ready"), key)
}

fn dump(pid: u32, dir: &Path) -> Output {
    support::dump(pid, dir, &[])
}

/// The VMAs of mm-PID.img whose status has every bit of `bits`.
fn vmas_with(dir: &Path, pid: u32, bits: u32) -> Vec<pb::VmaEntry> {
    let d = ImageDir::open(dir).unwrap();
    let mm: pb::MmEntry = d.read_one(&format!("mm-{pid}.img")).unwrap();
    mm.vmas
        .into_iter()
        .filter(|v| v.status & bits == bits)
        .collect()
}

/// Two dump/restore cycles comparing each task's maps, `check` run on each image directory;
/// then SIGUSR1 and the workload's own verdict from DIR/result.
fn two_cycles_then_verify(pids: &[u32], work: &Path, check: impl Fn(&Path)) {
    let c = Cycles {
        extra: &[],
        what: "maps",
        view: &maps,
        runs: &|pids| assert_runs(pids[0]),
    };
    support::two_cycles_then_verify(pids, work, &c, &|_, d| check(d));
}

#[test]
fn maps_memfd_shared_private_closed_sealed_two_tasks_two_cycles() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let pid = start(&bin("maps_memfd"), work.path());
    let child = ready_of(work.path(), "child").unwrap() as u32;
    let _k = Killer(vec![pid, child]);
    two_cycles_then_verify(&[pid, child], work.path(), |d| {
        let shared = vmas_with(d, pid, VMA_AREA_MEMFD | VMA_FILE_SHARED);
        let private = vmas_with(d, pid, VMA_AREA_MEMFD | VMA_FILE_PRIVATE);
        assert_eq!((shared.len(), private.len()), (5, 3), "memfd VMAs");
        // A read-only shared mapping keeps the access its file had: O_RDWR for fd 3's memfd
        // (VM_MAYWRITE), O_RDONLY for the F_SEAL_WRITE one.
        let ro: Vec<Option<u32>> = shared
            .iter()
            .filter(|v| v.prot == libc::PROT_READ as u32)
            .map(|v| v.fdflags)
            .collect();
        assert_eq!(ro.len(), 2);
        assert!(
            ro.contains(&Some(libc::O_RDWR as u32)) && ro.contains(&Some(0)),
            "{ro:?}"
        );
        // Each names a MEMFD entry; both mappings of one memfd name its one inode.
        let dir = ImageDir::open(d).unwrap();
        let files: Vec<pb::FileEntry> = dir.read_entries("files.img").unwrap();
        let inode = |id: u64| {
            files
                .iter()
                .find(|f| u64::from(f.id) == id)
                .and_then(|f| f.memfd.as_ref())
                .map(|m| m.inode_id)
                .expect("a MEMFD entry")
        };
        let mut inodes: Vec<u32> = shared.iter().map(|v| inode(v.shmid)).collect();
        inodes.sort_unstable();
        let mut pinodes: Vec<u32> = private.iter().map(|v| inode(v.shmid)).collect();
        pinodes.sort_unstable();
        assert!(pinodes.iter().all(|i| inodes.contains(i)), "{pinodes:?}");
        let m: Vec<pb::MemfdInodeEntry> = dir.read_entries("memfd.img").unwrap();
        assert_eq!(m.len(), 4, "one memfd.img entry per memfd");
        for e in &m {
            assert!(dir.has(&format!("pagemap-shmem-{}.img", e.shmid)), "{e:?}");
        }
    });
}

#[test]
fn maps_unlinked_files_shared_private_and_with_an_fd_two_cycles() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let pid = start(&bin("maps_ghost"), work.path());
    let _k = Killer(vec![pid]);
    two_cycles_then_verify(&[pid], work.path(), |d| {
        let dir = ImageDir::open(d).unwrap();
        let remaps: Vec<pb::RemapFilePathEntry> = dir.read_entries("remap-fpath.img").unwrap();
        // The unlinked executable and three mapped files, one of them also open as fd 3: four
        // ghosts, five remaps.
        assert_eq!(remaps.len(), 5, "{remaps:?}");
        let mut ghosts: Vec<u32> = remaps.iter().map(|r| r.remap_id).collect();
        ghosts.sort_unstable();
        ghosts.dedup();
        assert_eq!(ghosts, vec![1, 2, 3, 4]);
        let mm: pb::MmEntry = dir.read_one(&format!("mm-{pid}.img")).unwrap();
        assert!(
            remaps.iter().any(|r| r.orig_id == mm.exe_file_id),
            "the exe is not a ghost"
        );
        // The mappings name REG entries that are ghosts: two shared; one private plus the
        // executable's own VMAs.
        let ids: Vec<u64> = remaps.iter().map(|r| u64::from(r.orig_id)).collect();
        let ghosted = |bits| {
            vmas_with(d, pid, bits)
                .iter()
                .filter(|v| ids.contains(&v.shmid))
                .count()
        };
        assert_eq!(ghosted(VMA_FILE_SHARED), 2);
        assert!(
            ghosted(VMA_FILE_PRIVATE) >= 3,
            "{}",
            ghosted(VMA_FILE_PRIVATE)
        );
    });
    for n in ["g-shared", "g-private", "g-both", "exe"] {
        assert!(!work.path().join(n).exists(), "{n} came back");
    }
}

/// Removes a SysV segment by id when dropped.
struct Segment(i32);

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID by id of the segment this test's workload made.
        unsafe { libc::shmctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

#[test]
fn maps_sysv_shm_attachments_two_tasks_two_cycles() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let pid = start(&bin("maps_sysv"), work.path());
    let shmid = ready_of(work.path(), "shmid").unwrap();
    let _s = Segment(shmid as i32);
    let child = ready_of(work.path(), "child").unwrap() as u32;
    let _k = Killer(vec![pid, child]);
    two_cycles_then_verify(&[pid, child], work.path(), |d| {
        let v = vmas_with(d, pid, VMA_ANON_SHARED | VMA_AREA_SYSVIPC);
        assert_eq!(v.len(), 3, "SysV VMAs");
        assert!(v.iter().all(|v| v.shmid == shmid as u64));
        let mut offs: Vec<u64> = v.iter().map(|v| v.pgoff).collect();
        offs.sort_unstable();
        assert_eq!(offs, vec![0, 0, 4096]);
        // The content is the segment's, not the task's.
        assert!(!ImageDir::open(d)
            .unwrap()
            .has(&format!("pagemap-shmem-{shmid}.img")));
    });
}

/// A restore whose SysV segment is gone fails naming the segment, and leaves no task behind.
#[test]
fn maps_sysv_restore_without_the_segment_fails_clearly() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let pid = start(&bin("maps_sysv"), work.path());
    let shmid = ready_of(work.path(), "shmid").unwrap();
    let seg = Segment(shmid as i32);
    let child = ready_of(work.path(), "child").unwrap() as u32;
    let _k = Killer(vec![pid, child]);
    let d = tempfile::tempdir().unwrap();
    let out = dump(pid, d.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_gone(&[pid, child]);
    drop(seg);
    let out = restore(d.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restore without the segment succeeded"
    );
    assert!(
        err.contains(&format!("SysV shm id {shmid}")) && err.contains(&format!("task {pid}")),
        "{err}"
    );
    assert_gone(&[pid, child]);
}

/// `ferry-criu restore` run inside the IPC namespace `ipc_ns` (an open /proc/PID/ns/ipc), as
/// the container restore runs it: the tree is forked into the namespace the segments were
/// restored into.
fn restore_in(dir: &Path, ipc_ns: i32) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-criu"));
    c.args(["restore", "-D"])
        .arg(dir)
        .args(["-d", "-v4", "-o", "restore.log"])
        .stdin(Stdio::null());
    // SAFETY: setns in the child between fork and exec touches no shared state.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(ipc_ns, libc::CLONE_NEWIPC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().expect("run ferry-criu restore")
}

/// The container case: the tree lives in its own IPC namespace, the namespace is dumped by
/// `ipc::dump_ipc` and restored by `ipc::restore_ipc` into a fresh one (segment ids and content
/// from the images), and the tree restored into it attaches the restored segment at its old
/// addresses. Twice (restore of a restore), then verified from the inside.
#[test]
fn maps_sysv_shm_in_a_restored_ipc_namespace_two_cycles() {
    use std::os::fd::AsRawFd;
    let _g = lock();
    setup();
    let ns_fd = |pid: i32| std::fs::File::open(format!("/proc/{pid}/ns/ipc")).unwrap();
    let mut holder = common::NsChild::spawn(&["--ipc"]);
    let work = tempfile::tempdir().unwrap();
    let ns = ns_fd(holder.pid);
    let pid = start_in(&bin("maps_sysv"), work.path(), Some(ns.as_raw_fd()));
    let child = ready_of(work.path(), "child").unwrap() as u32;
    let _k = Killer(vec![pid, child]);
    let mut old = Vec::new();
    for round in 0..2 {
        let before = [maps(pid), maps(child)];
        let d = tempfile::tempdir().unwrap();
        let out = dump(pid, d.path());
        assert!(
            out.status.success(),
            "round {round}: dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_gone(&[pid, child]);
        // The namespace's images beside the tree's (the container code keeps them in the
        // same directory, under its own manifest).
        let ipc_dir = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(ipc_dir.path()).unwrap();
        let sum = ferry_engine::ipc::dump_ipc(holder.pid, &dir, 7).unwrap();
        assert_eq!(sum.shm_ids.len(), 1, "round {round}: {sum:?}");
        crit_decodes(d.path());
        crit_decodes(ipc_dir.path());
        let fresh = common::NsChild::spawn(&["--ipc"]);
        ferry_engine::ipc::restore_ipc(fresh.pid, &dir, 7).unwrap();
        let ns = ns_fd(fresh.pid);
        let out = restore_in(d.path(), ns.as_raw_fd());
        assert!(
            out.status.success(),
            "round {round}: restore: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_of(d.path())
        );
        assert_runs(pid);
        assert_eq!([maps(pid), maps(child)], before, "round {round}");
        // The restored tree is in the fresh namespace.
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/ipc")).unwrap(),
            std::fs::read_link(format!("/proc/{}/ns/ipc", fresh.pid)).unwrap()
        );
        old.push(std::mem::replace(&mut holder, fresh));
    }
    assert_eq!(verdict(pid, work.path()), "PASS");
}

/// A mapped unlinked file past the ghost limit is a dump error naming the task, the mapping and
/// the limit; the tree runs on with the same mappings.
#[test]
fn maps_unlinked_file_above_the_ghost_limit_fails_the_dump_and_the_tree_runs_on() {
    let _g = lock();
    setup();
    let work = tempfile::tempdir().unwrap();
    let pid = start(&bin("maps_ghost"), work.path());
    let _k = Killer(vec![pid]);
    let before = maps(pid);
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-criu"))
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(d.path())
        .args(["-o", "dump.log", "--ghost-limit", "4K"])
        .output()
        .expect("run ferry-criu dump");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump past the ghost limit succeeded");
    assert!(
        err.contains(&format!("task {pid}: mapping "))
            && err.contains("(deleted)")
            && err.contains("ghost limit of 4096 bytes"),
        "{err}"
    );
    assert_runs(pid);
    assert_eq!(maps(pid), before);
}

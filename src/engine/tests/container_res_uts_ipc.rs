//! UTS and IPC namespaces: dump from a task in fresh namespaces, restore into fresh ones,
//! verify from inside, twice in a row (restore of a restore). Runs as root.

#[path = "container_res_common.rs"]
mod common;

use common::{crit_decodes_all, NsChild};
use ferry_engine::ipc::sys::{self, Msqid64Ds, Semid64Ds, ShmAttach, Shmid64Ds};
use ferry_engine::uts::enter::{in_namespaces, Ns};
use ferry_engine::{ipc, uts};
use ferry_images::ImageDir;

#[test]
fn uts_hostname_and_domainname_survive_two_cycles() {
    let a = NsChild::spawn(&["--uts"]);
    a.run(&["-u"], &["hostname", "ferry-uts-test"]);
    a.run(&["-u"], &["domainname", "ferry.example"]);
    let mut src = a;
    let mut keep = Vec::new();
    for round in 0..2 {
        let t = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(t.path()).unwrap();
        let st = uts::dump_uts(src.pid, &dir, 12).unwrap();
        assert_eq!(st.nodename, "ferry-uts-test", "round {round}");
        assert_eq!(st.domainname, "ferry.example", "round {round}");
        assert_eq!(crit_decodes_all(t.path()), vec!["utsns-12.img".to_string()]);
        let b = NsChild::spawn(&["--uts"]);
        assert_ne!(b.run(&["-u"], &["hostname"]).trim(), "ferry-uts-test");
        uts::restore_uts(b.pid, &dir, 12).unwrap();
        assert_eq!(b.run(&["-u"], &["hostname"]).trim(), "ferry-uts-test");
        assert_eq!(b.run(&["-u"], &["domainname"]).trim(), "ferry.example");
        keep.push(std::mem::replace(&mut src, b));
    }
    // The host's own name was never touched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "ferry-uts-test"
    );
}

#[test]
fn uts_restore_of_missing_image_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    let b = NsChild::spawn(&["--uts"]);
    let err = uts::restore_uts(b.pid, &dir, 7).unwrap_err().to_string();
    assert!(err.contains("utsns-7.img"), "{err}");
}

const SHM_KEY: i32 = 0x4645_0001;
const SEM_KEY: i32 = 0x4645_0002;
const MSG_KEY: i32 = 0x4645_0003;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Creates objects and tweaks limits inside the IPC namespace of `pid`.
fn populate(pid: i32) {
    in_namespaces(pid, &[Ns::Ipc], || {
        std::fs::write("/proc/sys/kernel/msgmnb", "20000").unwrap();
        std::fs::write("/proc/sys/kernel/shmmni", "3000").unwrap();
        std::fs::write("/proc/sys/fs/mqueue/msg_max", "20").unwrap();
        std::fs::write("/proc/sys/kernel/sem", "250 32000 40 128").unwrap();
        // SAFETY: plain SysV calls on integers inside the helper thread's namespace.
        unsafe {
            // A throw-away segment first, so ids are not simply 0.
            let junk = libc::shmget(libc::IPC_PRIVATE, 4096, 0o600 | libc::IPC_CREAT);
            assert!(junk >= 0);
            let id = libc::shmget(SHM_KEY, 3 * 4096 + 100, 0o640 | libc::IPC_CREAT);
            assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
            let mut at = ShmAttach::new(id, 3 * 4096 + 100, false).unwrap();
            at.bytes_mut().copy_from_slice(&pattern(3 * 4096 + 100, 7));
            drop(at);
            assert_eq!(libc::shmctl(junk, libc::IPC_RMID, std::ptr::null_mut()), 0);
            let sid = libc::semget(SEM_KEY, 3, 0o600 | libc::IPC_CREAT);
            assert!(sid >= 0);
            sys::sem_setall(sid, &[5, 0, 42]).unwrap();
            let qid = libc::msgget(MSG_KEY, 0o620 | libc::IPC_CREAT);
            assert!(qid >= 0);
            for (t, text) in [
                (1u64, &b"first message"[..]),
                (7, &b"second, longer message!"[..]),
            ] {
                let mut b = t.to_ne_bytes().to_vec();
                b.extend_from_slice(text);
                assert_eq!(libc::msgsnd(qid, b.as_ptr().cast(), text.len(), 0), 0);
            }
        }
    })
    .unwrap();
}

/// Reads back what `populate` made, from inside the IPC namespace of `pid`.
fn verify(pid: i32, want: &ipc::IpcSummary) {
    in_namespaces(pid, &[Ns::Ipc], || {
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/msgmnb")
                .unwrap()
                .trim(),
            "20000"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/kernel/shmmni")
                .unwrap()
                .trim(),
            "3000"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max")
                .unwrap()
                .trim(),
            "20"
        );
        let sem: Vec<String> = std::fs::read_to_string("/proc/sys/kernel/sem")
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(sem, ["250", "32000", "40", "128"]);
        // SAFETY: plain SysV lookups by key.
        let id = unsafe { libc::shmget(SHM_KEY, 0, 0) };
        assert_eq!(vec![id], want.shm_ids, "shm id by key");
        let mut ds = Shmid64Ds::default();
        sys::shmctl(id, sys::IPC_STAT, &mut ds).unwrap();
        assert_eq!(ds.segsz, 3 * 4096 + 100);
        assert_eq!(ds.perm.mode & 0o777, 0o640);
        let at = ShmAttach::new(id, 3 * 4096 + 100, true).unwrap();
        assert!(at.bytes() == pattern(3 * 4096 + 100, 7), "shm content");
        drop(at);
        // SAFETY: as above.
        let sid = unsafe { libc::semget(SEM_KEY, 0, 0) };
        assert_eq!(vec![sid], want.sem_ids);
        let mut sds = Semid64Ds::default();
        sys::semctl_ds(sid, sys::IPC_STAT, &mut sds).unwrap();
        assert_eq!(sds.nsems, 3);
        assert_eq!(sys::sem_getall(sid).unwrap(), [5, 0, 42]);
        // SAFETY: as above.
        let qid = unsafe { libc::msgget(MSG_KEY, 0) };
        assert_eq!(vec![qid], want.msg_ids);
        let mut mds = Msqid64Ds::default();
        sys::msgctl(qid, sys::IPC_STAT, &mut mds).unwrap();
        assert_eq!(mds.qnum, 2);
        assert_eq!(mds.perm.mode & 0o777, 0o620);
        // Peek without dequeuing, so the next cycle still has them.
        let mut buf = vec![0u8; 8 + 8192];
        for (i, (t, text)) in [
            (1u64, &b"first message"[..]),
            (7, &b"second, longer message!"[..]),
        ]
        .iter()
        .enumerate()
        {
            // SAFETY: buf holds mtype + 8192 bytes; MSG_COPY leaves the queue as it is.
            let n = unsafe {
                libc::msgrcv(
                    qid,
                    buf.as_mut_ptr().cast(),
                    8192,
                    i as i64,
                    libc::IPC_NOWAIT | sys::MSG_COPY,
                )
            };
            assert_eq!(n as usize, text.len());
            assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), *t);
            assert_eq!(&buf[8..8 + n as usize], *text);
        }
    })
    .unwrap();
}

#[test]
fn ipc_vars_and_sysv_objects_survive_two_cycles() {
    let a = NsChild::spawn(&["--ipc"]);
    populate(a.pid);
    let mut src = a;
    let mut keep = Vec::new();
    let mut first: Option<ipc::IpcSummary> = None;
    for round in 0..2 {
        let t = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(t.path()).unwrap();
        let sum = ipc::dump_ipc(src.pid, &dir, 11).unwrap();
        assert_eq!(sum.shm_ids.len(), 1, "round {round}: {sum:?}");
        assert_ne!(
            sum.shm_ids[0] % 32768,
            0,
            "the throw-away segment shifted the index"
        );
        if let Some(f) = &first {
            assert_eq!(&sum, f, "round {round}: ids drifted");
        }
        first.get_or_insert(sum.clone());
        let decoded = crit_decodes_all(t.path());
        assert_eq!(
            decoded,
            [
                "ipcns-msg-11.img",
                "ipcns-sem-11.img",
                "ipcns-shm-11.img",
                "ipcns-var-11.img"
            ]
        );
        let b = NsChild::spawn(&["--ipc"]);
        let got = ipc::restore_ipc(b.pid, &dir, 11).unwrap();
        assert_eq!(got, sum);
        verify(b.pid, &sum);
        keep.push(std::mem::replace(&mut src, b));
    }
}

#[test]
fn ipc_restore_with_taken_id_fails_clearly() {
    let a = NsChild::spawn(&["--ipc"]);
    populate(a.pid);
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    ipc::dump_ipc(a.pid, &dir, 3).unwrap();
    // Restoring into the namespace that still holds the objects must fail, naming the object.
    let err = ipc::restore_ipc(a.pid, &dir, 3).unwrap_err().to_string();
    assert!(err.contains("shm id"), "{err}");
    // A truncated shm image is an error, not a panic.
    let p = t.path().join("ipcns-shm-3.img");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() / 2]).unwrap();
    let b = NsChild::spawn(&["--ipc"]);
    let err = ipc::restore_ipc(b.pid, &dir, 3).unwrap_err().to_string();
    assert!(err.contains("ipcns-shm-3.img"), "{err}");
}

#[test]
fn ipc_restores_criu4_shm_content_from_pagemaps() {
    use ferry_images::pagemap::PE_PRESENT;
    use ferry_images::pb;
    // Start from a real dump, then rewrite the shm image the way CRIU 4.x lays it out.
    let a = NsChild::spawn(&["--ipc"]);
    populate(a.pid);
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    let sum = ipc::dump_ipc(a.pid, &dir, 5).unwrap();
    let shmid = sum.shm_ids[0] as u32;
    let mut e: pb::IpcShmEntry = {
        let data = dir.read("ipcns-shm-5.img").unwrap();
        let kind = ferry_images::dir::kind_for_name("ipcns-shm-5.img").unwrap();
        let mut r = ferry_images::ImageReader::expect("ipcns-shm-5.img", &data, kind).unwrap();
        r.next_entry().unwrap().unwrap()
    };
    e.in_pagemaps = Some(true);
    dir.write_entries("ipcns-shm-5.img", std::slice::from_ref(&e))
        .unwrap();
    let content = pattern(3 * 4096 + 100, 7);
    let entry = |vaddr: u64, n: u64| pb::PagemapEntry {
        vaddr,
        compat_nr_pages: Some(0),
        flags: Some(PE_PRESENT),
        nr_pages: Some(n),
        ..Default::default()
    };
    let mut w = dir.writer(&format!("pagemap-shmem-{shmid}.img")).unwrap();
    w.write_entry(&pb::PagemapHead { pages_id: 7 }).unwrap();
    // Page 1 is a hole: it must come back as zeros.
    w.write_entry(&entry(0, 1)).unwrap();
    w.write_entry(&entry(0x2000, 2)).unwrap();
    w.finish().unwrap();
    let mut pages = content[..4096].to_vec();
    pages.extend_from_slice(&content[0x2000..]);
    pages.resize(3 * 4096, 0);
    dir.write_raw("pages-7.img", &pages).unwrap();
    assert!(crit_decodes_all(t.path()).contains(&format!("pagemap-shmem-{shmid}.img")));
    let b = NsChild::spawn(&["--ipc"]);
    ipc::restore_ipc(b.pid, &dir, 5).unwrap();
    let mut want = content.clone();
    want[4096..8192].fill(0);
    in_namespaces(b.pid, &[Ns::Ipc], || {
        let at = ShmAttach::new(shmid as i32, 3 * 4096 + 100, true).unwrap();
        assert!(at.bytes() == want, "content rebuilt from the pagemap");
    })
    .unwrap();
    // A pagemap pointing past the segment is an error naming the image.
    let mut w = dir.writer(&format!("pagemap-shmem-{shmid}.img")).unwrap();
    w.write_entry(&pb::PagemapHead { pages_id: 7 }).unwrap();
    w.write_entry(&entry(0x4000, 1)).unwrap();
    w.finish().unwrap();
    let c = NsChild::spawn(&["--ipc"]);
    let err = ipc::restore_ipc(c.pid, &dir, 5).unwrap_err().to_string();
    assert!(
        err.contains("pagemap-shmem") && err.contains("outside"),
        "{err}"
    );
}

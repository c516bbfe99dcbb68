//! Restore half of the IPC namespace.

use std::collections::BTreeMap;

use ferry_images::{dir::kind_for_name, pb, ImageDir, ImageReader};

use super::sys::{self, Kind, Msqid64Ds, Semid64Ds, ShmAttach, Shmid64Ds};
use super::{image_names, round_up, IpcError, IpcSummary, Messages};
use crate::uts::enter::{in_namespaces, Ns};

const STAGE: &str = "restore";

/// Everything read from the images, checked before the namespace is touched.
#[derive(Debug, Default)]
struct Loaded {
    var: Option<pb::IpcVarEntry>,
    shm: Vec<(pb::IpcShmEntry, Vec<u8>)>,
    sem: Vec<(pb::IpcSemEntry, Vec<u16>)>,
    msg: Vec<(pb::IpcMsgEntry, Messages)>,
}

fn img_err(file: &str) -> impl FnOnce(ferry_images::dir::DirError) -> IpcError + '_ {
    move |source| IpcError::Image {
        stage: STAGE,
        file: file.to_string(),
        source,
    }
}

fn frame_err(source: ferry_images::FrameError) -> IpcError {
    IpcError::Frame {
        stage: STAGE,
        source,
    }
}

/// Opens an optional object image and hands a reader to `f`.
fn with_reader<T>(
    dir: &ImageDir,
    file: &str,
    f: impl FnOnce(&mut ImageReader<'_>) -> Result<T, IpcError>,
) -> Result<Option<T>, IpcError> {
    if !dir.has(file) && !dir.path().join(file).exists() {
        return Ok(None);
    }
    let kind = kind_for_name(file).expect("ipcns image names map to kinds");
    let data = dir.read(file).map_err(img_err(file))?;
    let mut r = ImageReader::expect(file, &data, kind).map_err(frame_err)?;
    f(&mut r).map(Some)
}

fn load(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<Loaded, IpcError> {
    let [var, shm, sem, msg] = image_names(ns_id);
    let mut l = Loaded {
        var: Some(dir.read_one(&var).map_err(img_err(&var))?),
        ..Default::default()
    };
    l.shm = with_reader(dir, &shm, |r| {
        let mut v = Vec::new();
        while let Some(e) = r.next_entry::<pb::IpcShmEntry>().map_err(frame_err)? {
            if e.in_pagemaps == Some(true) {
                // CRIU 4.x keeps the bytes in pagemap-shmem-ID.img + pages-N.img.
                let content = super::shm_pages::content_from_pagemaps(pid, dir, &e)?;
                v.push((e, content));
                continue;
            }
            let len = e.size as usize;
            let raw = r
                .raw(round_up(len, 4) as u64, "shm content")
                .map_err(frame_err)?;
            v.push((e, raw[..len].to_vec()));
        }
        Ok(v)
    })?
    .unwrap_or_default();
    l.sem = with_reader(dir, &sem, |r| {
        let mut v = Vec::new();
        while let Some(e) = r.next_entry::<pb::IpcSemEntry>().map_err(frame_err)? {
            let n = e.nsems as usize;
            let raw = r
                .raw(round_up(n.saturating_mul(2), 8) as u64, "semaphore values")
                .map_err(frame_err)?;
            let vals = raw[..n * 2]
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            v.push((e, vals));
        }
        Ok(v)
    })?
    .unwrap_or_default();
    l.msg = with_reader(dir, &msg, |r| {
        let mut v = Vec::new();
        while let Some(e) = r.next_entry::<pb::IpcMsgEntry>().map_err(frame_err)? {
            let mut msgs = Vec::new();
            for i in 0..e.qnum {
                let m = r
                    .next_entry::<pb::IpcMsg>()
                    .map_err(frame_err)?
                    .ok_or_else(|| IpcError::Invalid {
                        pid,
                        file: msg.clone(),
                        what: format!(
                            "queue {} claims {} messages, image ends at message {i}",
                            e.desc.id, e.qnum
                        ),
                    })?;
                let len = m.msize as usize;
                let raw = r
                    .raw(round_up(len, 8) as u64, "message text")
                    .map_err(frame_err)?;
                msgs.push((m.mtype, raw[..len].to_vec()));
            }
            v.push((e, msgs));
        }
        Ok(v)
    })?
    .unwrap_or_default();
    Ok(l)
}

fn write_sysctl(pid: i32, path: &str, value: &str) -> Result<(), IpcError> {
    std::fs::write(path, value).map_err(|source| IpcError::Sysctl {
        stage: STAGE,
        pid,
        path: path.to_string(),
        source,
    })
}

fn apply_vars(pid: i32, v: &pb::IpcVarEntry) -> Result<(), IpcError> {
    if !v.sem_ctls.is_empty() {
        let s: Vec<String> = v.sem_ctls.iter().map(|x| x.to_string()).collect();
        write_sysctl(pid, "/proc/sys/kernel/sem", &s.join(" "))?;
    }
    let k = "/proc/sys/kernel/";
    let q = "/proc/sys/fs/mqueue/";
    let mut pairs: Vec<(String, String)> = vec![
        (format!("{k}msgmax"), v.msg_ctlmax.to_string()),
        (format!("{k}msgmnb"), v.msg_ctlmnb.to_string()),
        (format!("{k}msgmni"), v.msg_ctlmni.to_string()),
        (format!("{k}shmmax"), v.shm_ctlmax.to_string()),
        (format!("{k}shmall"), v.shm_ctlall.to_string()),
        (format!("{k}shmmni"), v.shm_ctlmni.to_string()),
        (format!("{k}shm_rmid_forced"), v.shm_rmid_forced.to_string()),
        (format!("{q}queues_max"), v.mq_queues_max.to_string()),
        (format!("{q}msg_max"), v.mq_msg_max.to_string()),
        (format!("{q}msgsize_max"), v.mq_msgsize_max.to_string()),
    ];
    if let Some(x) = v.mq_msg_default {
        pairs.push((format!("{q}msg_default"), x.to_string()));
    }
    if let Some(x) = v.mq_msgsize_default {
        pairs.push((format!("{q}msgsize_default"), x.to_string()));
    }
    for (p, val) in pairs {
        write_sysctl(pid, &p, &val)?;
    }
    Ok(())
}

fn sys_err(
    pid: i32,
    object: String,
    call: &'static str,
) -> impl FnOnce(std::io::Error) -> IpcError {
    move |source| IpcError::Sys {
        stage: STAGE,
        pid,
        object,
        call,
        source,
    }
}

/// Arms `X_next_id`, runs the create call and checks the id.
fn create_with_id(
    pid: i32,
    kind: Kind,
    d: &pb::IpcDescEntry,
    create: impl FnOnce() -> std::io::Result<i32>,
) -> Result<i32, IpcError> {
    let obj = format!("{kind:?} id {}", d.id).to_lowercase();
    write_sysctl(pid, kind.next_id_path(), &d.id.to_string())?;
    let got = create().map_err(sys_err(pid, obj.clone(), "get(IPC_CREAT|IPC_EXCL)"))?;
    if got as u32 != d.id {
        return Err(IpcError::Invalid {
            pid,
            file: kind.next_id_path().to_string(),
            what: format!("{obj}: the kernel gave id {got}"),
        });
    }
    Ok(got)
}

/// Owner (host ids when the namespace is owned by a user namespace: see `userns`) and mode.
fn set_perm(p: &mut sys::Ipc64Perm, d: &pb::IpcDescEntry, owner: (u32, u32)) {
    (p.uid, p.gid) = owner;
    p.mode = d.mode & 0o777;
}

/// The owners of every object, as IPC_SET takes them from ferry (on the host).
fn owners(
    pid: i32,
    l: &Loaded,
    userns: Option<&crate::userns::UserNs>,
) -> Result<BTreeMap<u32, (u32, u32)>, IpcError> {
    let descs = l
        .shm
        .iter()
        .map(|(e, _)| &e.desc)
        .chain(l.sem.iter().map(|(e, _)| &e.desc))
        .chain(l.msg.iter().map(|(e, _)| &e.desc));
    let mut m = BTreeMap::new();
    for (k, d) in descs.enumerate() {
        let o = match userns {
            None => (d.uid, d.gid),
            Some(ns) => {
                crate::userns::restore::ipc_owner(d, ns).map_err(|e| IpcError::Invalid {
                    pid,
                    file: "ipcns".into(),
                    what: e.to_string(),
                })?
            }
        };
        m.insert(k as u32, o);
    }
    Ok(m)
}

/// The IPC objects' descriptors of `ipcns-*-NS_ID.img` (for checks before a restore).
pub fn descs(dir: &ImageDir, ns_id: u32) -> Result<Vec<pb::IpcDescEntry>, IpcError> {
    let l = load(0, dir, ns_id)?;
    Ok(l.shm
        .iter()
        .map(|(e, _)| e.desc)
        .chain(l.sem.iter().map(|(e, _)| e.desc))
        .chain(l.msg.iter().map(|(e, _)| e.desc))
        .collect())
}

fn recreate(
    pid: i32,
    l: &Loaded,
    owners: &BTreeMap<u32, (u32, u32)>,
) -> Result<IpcSummary, IpcError> {
    let mut k = 0u32;
    let mut owner = || {
        k += 1;
        owners[&(k - 1)]
    };
    let var = l.var.as_ref().expect("loaded");
    apply_vars(pid, var)?;
    let mut sum = IpcSummary::default();
    for (e, content) in &l.shm {
        let d = &e.desc;
        let size = usize::try_from(e.size).unwrap_or(usize::MAX);
        // hugetlb_flag carries SHM_HUGETLB and the page size bits, as shmget takes them.
        let flags = (d.mode & 0o777) as i32
            | e.hugetlb_flag.unwrap_or(0) as i32
            | libc::IPC_CREAT
            | libc::IPC_EXCL;
        let id = create_with_id(pid, Kind::Shm, d, || {
            // SAFETY: plain system call on integer arguments.
            let r = unsafe { libc::shmget(d.key as i32, size, flags) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r)
            }
        })?;
        let obj = format!("shm id {id}");
        let mut at = ShmAttach::new(id, size, false).map_err(sys_err(pid, obj.clone(), "shmat"))?;
        at.bytes_mut().copy_from_slice(content);
        drop(at);
        let mut ds = Shmid64Ds::default();
        sys::shmctl(id, sys::IPC_STAT, &mut ds).map_err(sys_err(pid, obj.clone(), "IPC_STAT"))?;
        set_perm(&mut ds.perm, d, owner());
        sys::shmctl(id, sys::IPC_SET, &mut ds).map_err(sys_err(pid, obj, "IPC_SET"))?;
        sum.shm_ids.push(id);
    }
    for (e, vals) in &l.sem {
        let d = &e.desc;
        let flags = (d.mode & 0o777) as i32 | libc::IPC_CREAT | libc::IPC_EXCL;
        let id = create_with_id(pid, Kind::Sem, d, || {
            // SAFETY: plain system call on integer arguments.
            let r = unsafe { libc::semget(d.key as i32, e.nsems as i32, flags) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r)
            }
        })?;
        let obj = format!("sem id {id}");
        sys::sem_setall(id, vals).map_err(sys_err(pid, obj.clone(), "SETALL"))?;
        let mut ds = Semid64Ds::default();
        sys::semctl_ds(id, sys::IPC_STAT, &mut ds).map_err(sys_err(
            pid,
            obj.clone(),
            "IPC_STAT",
        ))?;
        set_perm(&mut ds.perm, d, owner());
        sys::semctl_ds(id, sys::IPC_SET, &mut ds).map_err(sys_err(pid, obj, "IPC_SET"))?;
        sum.sem_ids.push(id);
    }
    for (e, msgs) in &l.msg {
        let d = &e.desc;
        let flags = (d.mode & 0o777) as i32 | libc::IPC_CREAT | libc::IPC_EXCL;
        let id = create_with_id(pid, Kind::Msg, d, || {
            // SAFETY: plain system call on integer arguments.
            let r = unsafe { libc::msgget(d.key as i32, flags) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r)
            }
        })?;
        let obj = format!("msg queue {id}");
        let mut ds = Msqid64Ds::default();
        sys::msgctl(id, sys::IPC_STAT, &mut ds).map_err(sys_err(pid, obj.clone(), "IPC_STAT"))?;
        // Raising qbytes past msgmnb needs CAP_SYS_RESOURCE: only touch it when it differs.
        ds.qbytes = u64::from(e.qbytes);
        set_perm(&mut ds.perm, d, owner());
        sys::msgctl(id, sys::IPC_SET, &mut ds).map_err(sys_err(pid, obj.clone(), "IPC_SET"))?;
        for (i, (mtype, text)) in msgs.iter().enumerate() {
            let mut buf = Vec::with_capacity(8 + text.len());
            buf.extend_from_slice(&mtype.to_ne_bytes());
            buf.extend_from_slice(text);
            // SAFETY: `buf` is a struct msgbuf (long mtype + text) of 8 + text.len() bytes.
            let r = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
            if r < 0 {
                return Err(sys_err(pid, format!("{obj} message {i}"), "msgsnd")(
                    std::io::Error::last_os_error(),
                ));
            }
        }
        sum.msg_ids.push(id);
    }
    // The dumped namespace's own armed next_ids go last, after our creations used them.
    for (kind, v) in [
        (Kind::Msg, var.msg_next_id),
        (Kind::Sem, var.sem_next_id),
        (Kind::Shm, var.shm_next_id),
    ] {
        if let Some(v) = v {
            write_sysctl(pid, kind.next_id_path(), &v.to_string())?;
        }
    }
    Ok(sum)
}

/// Restores `ipcns-*-NS_ID.img` into the (fresh, empty) IPC namespace of task `pid`.
///
/// Every image is read and checked first; then limits are set and every object is created
/// with its original id, content, values or messages, owner and mode.
pub fn restore_ipc(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<IpcSummary, IpcError> {
    restore_ipc_in(pid, dir, ns_id, None)
}

/// [`restore_ipc`] into a namespace owned by the container's user namespace `userns` (its
/// maps as the host sees them): owners go from inside ids to host ids.
pub fn restore_ipc_in(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
    userns: Option<&crate::userns::UserNs>,
) -> Result<IpcSummary, IpcError> {
    let l = load(pid, dir, ns_id)?;
    let owners = owners(pid, &l, userns)?;
    in_namespaces(pid, &[Ns::Ipc], || {
        // A namespace owned by the container's user namespace: its sysctl files belong to
        // the namespace's root, and objects get it as their creator.
        if let Some(ns) = userns {
            crate::userns::restore::act_as_inside_root(ns).map_err(sys_err(
                pid,
                "helper thread".into(),
                "act as the namespace's root",
            ))?;
        }
        recreate(pid, &l, &owners)
    })
    .map_err(|source| IpcError::Enter {
        stage: STAGE,
        source,
    })?
}

//! Dump half of the IPC namespace.

use ferry_images::{pb, ImageDir};

use super::sys::{self, Kind, Msqid64Ds, Semid64Ds, ShmAttach, Shmid64Ds};
use super::{image_names, round_up, IpcError, IpcSummary, Messages};
use crate::uts::enter::{in_namespaces, Ns};

const STAGE: &str = "dump";

/// One object's raw data gathered inside the namespace.
struct Gathered {
    var: pb::IpcVarEntry,
    shm: Vec<(pb::IpcShmEntry, Vec<u8>)>,
    sem: Vec<(pb::IpcSemEntry, Vec<u16>)>,
    msg: Vec<(pb::IpcMsgEntry, Messages)>,
}

fn read_sysctl(pid: i32, path: &str) -> Result<String, IpcError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| IpcError::Sysctl {
            stage: STAGE,
            pid,
            path: path.to_string(),
            source,
        })
}

fn num<T: std::str::FromStr>(pid: i32, path: &str) -> Result<T, IpcError> {
    let s = read_sysctl(pid, path)?;
    s.parse().map_err(|_| IpcError::Sysctl {
        stage: STAGE,
        pid,
        path: path.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a number: {s:?}"),
        ),
    })
}

fn opt_num<T: std::str::FromStr>(pid: i32, path: &str) -> Result<Option<T>, IpcError> {
    if std::path::Path::new(path).exists() {
        num(pid, path).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads the namespace's limits (run inside the namespace).
fn read_vars(pid: i32) -> Result<pb::IpcVarEntry, IpcError> {
    let sem = read_sysctl(pid, "/proc/sys/kernel/sem")?;
    let sem_ctls: Vec<u32> = sem
        .split_whitespace()
        .map(|w| w.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| IpcError::Sysctl {
            stage: STAGE,
            pid,
            path: "/proc/sys/kernel/sem".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{sem:?}")),
        })?;
    // next_id is -1 unless someone armed it; CRIU stores it only when set.
    let next = |p: &str| -> Result<Option<u32>, IpcError> {
        Ok(opt_num::<i64>(pid, p)?.and_then(|v| u32::try_from(v).ok()))
    };
    Ok(pb::IpcVarEntry {
        sem_ctls,
        msg_ctlmax: num(pid, "/proc/sys/kernel/msgmax")?,
        msg_ctlmnb: num(pid, "/proc/sys/kernel/msgmnb")?,
        msg_ctlmni: num(pid, "/proc/sys/kernel/msgmni")?,
        auto_msgmni: opt_num(pid, "/proc/sys/kernel/auto_msgmni")?.unwrap_or(0),
        shm_ctlmax: num(pid, "/proc/sys/kernel/shmmax")?,
        shm_ctlall: num(pid, "/proc/sys/kernel/shmall")?,
        shm_ctlmni: num(pid, "/proc/sys/kernel/shmmni")?,
        shm_rmid_forced: num(pid, "/proc/sys/kernel/shm_rmid_forced")?,
        mq_queues_max: num(pid, "/proc/sys/fs/mqueue/queues_max")?,
        mq_msg_max: num(pid, "/proc/sys/fs/mqueue/msg_max")?,
        mq_msgsize_max: num(pid, "/proc/sys/fs/mqueue/msgsize_max")?,
        mq_msg_default: opt_num(pid, "/proc/sys/fs/mqueue/msg_default")?,
        mq_msgsize_default: opt_num(pid, "/proc/sys/fs/mqueue/msgsize_default")?,
        msg_next_id: next("/proc/sys/kernel/msg_next_id")?,
        sem_next_id: next("/proc/sys/kernel/sem_next_id")?,
        shm_next_id: next("/proc/sys/kernel/shm_next_id")?,
    })
}

fn desc(p: &sys::Ipc64Perm, id: i32) -> pb::IpcDescEntry {
    pb::IpcDescEntry {
        key: p.key as u32,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: p.mode,
        id: id as u32,
    }
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

/// Ids of every live object of a kind, by walking indexes 0..=max with `*_STAT`.
fn walk(
    pid: i32,
    kind: Kind,
    mut stat: impl FnMut(i32) -> std::io::Result<i32>,
) -> Result<Vec<i32>, IpcError> {
    let max = sys::max_index(kind).map_err(sys_err(pid, format!("{kind:?} table"), "*_INFO"))?;
    let mut ids = Vec::new();
    for idx in 0..=max {
        match stat(idx) {
            Ok(id) => ids.push(id),
            // A free slot in the table.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(sys_err(pid, format!("{kind:?} index {idx}"), "*_STAT")(e)),
        }
    }
    Ok(ids)
}

fn gather(pid: i32) -> Result<Gathered, IpcError> {
    let var = read_vars(pid)?;
    let mut g = Gathered {
        shm: Vec::new(),
        sem: Vec::new(),
        msg: Vec::new(),
        var,
    };
    for id in walk(pid, Kind::Shm, |i| {
        sys::shmctl(i, sys::SHM_STAT, &mut Shmid64Ds::default())
    })? {
        let mut ds = Shmid64Ds::default();
        sys::shmctl(id, sys::IPC_STAT, &mut ds).map_err(sys_err(
            pid,
            format!("shm id {id}"),
            "IPC_STAT",
        ))?;
        let size = usize::try_from(ds.segsz).unwrap_or(usize::MAX);
        let at = ShmAttach::new(id, size, true).map_err(sys_err(
            pid,
            format!("shm id {id}"),
            "shmat",
        ))?;
        let content = at.bytes().to_vec();
        drop(at);
        g.shm.push((
            pb::IpcShmEntry {
                desc: desc(&ds.perm, id),
                size: ds.segsz,
                in_pagemaps: None,
                hugetlb_flag: None,
            },
            content,
        ));
    }
    for id in walk(pid, Kind::Sem, |i| {
        sys::semctl_ds(i, sys::SEM_STAT, &mut Semid64Ds::default())
    })? {
        let mut ds = Semid64Ds::default();
        sys::semctl_ds(id, sys::IPC_STAT, &mut ds).map_err(sys_err(
            pid,
            format!("sem id {id}"),
            "IPC_STAT",
        ))?;
        let vals = sys::sem_getall(id).map_err(sys_err(pid, format!("sem id {id}"), "GETALL"))?;
        g.sem.push((
            pb::IpcSemEntry {
                desc: desc(&ds.perm, id),
                nsems: ds.nsems as u32,
            },
            vals,
        ));
    }
    let msgmax = g.var.msg_ctlmax as usize;
    for id in walk(pid, Kind::Msg, |i| {
        sys::msgctl(i, sys::MSG_STAT, &mut Msqid64Ds::default())
    })? {
        let mut ds = Msqid64Ds::default();
        sys::msgctl(id, sys::IPC_STAT, &mut ds).map_err(sys_err(
            pid,
            format!("msg queue {id}"),
            "IPC_STAT",
        ))?;
        let mut msgs = Vec::with_capacity(ds.qnum as usize);
        // struct msgbuf: long mtype, then the text.
        let mut buf = vec![0u8; 8 + msgmax];
        for i in 0..ds.qnum as i64 {
            // SAFETY: `buf` holds 8 bytes of mtype plus `msgmax` bytes, the most a message
            // in this namespace can carry; MSG_COPY leaves the queue unchanged.
            let n = unsafe {
                libc::msgrcv(
                    id,
                    buf.as_mut_ptr().cast(),
                    msgmax,
                    i,
                    libc::IPC_NOWAIT | sys::MSG_COPY,
                )
            };
            if n < 0 {
                return Err(sys_err(
                    pid,
                    format!("msg queue {id} message {i}"),
                    "msgrcv(MSG_COPY)",
                )(std::io::Error::last_os_error()));
            }
            let mtype = u64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
            msgs.push((mtype, buf[8..8 + n as usize].to_vec()));
        }
        g.msg.push((
            pb::IpcMsgEntry {
                desc: desc(&ds.perm, id),
                qbytes: ds.qbytes as u32,
                qnum: msgs.len() as u32,
            },
            msgs,
        ));
    }
    Ok(g)
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

fn pad(w: &mut Vec<u8>, len: usize, align: usize) {
    w.resize(w.len() + round_up(len, align) - len, 0);
}

/// Dumps the IPC namespace of task `pid` as `ipcns-{var,shm,sem,msg}-NS_ID.img`.
///
/// The object images are written only when the namespace holds objects of that kind, as
/// CRIU does.
pub fn dump_ipc(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<IpcSummary, IpcError> {
    dump_ipc_in(pid, dir, ns_id, None)
}

/// [`dump_ipc`] of a namespace owned by the container's user namespace `userns`: IPC_STAT
/// reports owners as ferry (on the host) sees them; the images hold them as seen inside.
pub fn dump_ipc_in(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
    userns: Option<&crate::userns::UserNs>,
) -> Result<IpcSummary, IpcError> {
    let mut g =
        in_namespaces(pid, &[Ns::Ipc], || gather(pid)).map_err(|source| IpcError::Enter {
            stage: STAGE,
            source,
        })??;
    if let Some(ns) = userns {
        let t = |d: &mut pb::IpcDescEntry| crate::userns::dump::translate_ipc(d, ns);
        g.shm.iter_mut().for_each(|(e, _)| t(&mut e.desc));
        g.sem.iter_mut().for_each(|(e, _)| t(&mut e.desc));
        g.msg.iter_mut().for_each(|(e, _)| t(&mut e.desc));
    }
    let [var, shm, sem, msg] = image_names(ns_id);
    dir.write_entries(&var, std::slice::from_ref(&g.var))
        .map_err(img_err(&var))?;
    let mut sum = IpcSummary::default();
    if !g.shm.is_empty() {
        let mut w = dir.writer(&shm).map_err(img_err(&shm))?;
        for (e, content) in &g.shm {
            w.write_entry(e).map_err(frame_err)?;
            let mut b = content.clone();
            pad(&mut b, content.len(), 4);
            w.write_raw(&b).map_err(frame_err)?;
            sum.shm_ids.push(e.desc.id as i32);
        }
        finish(w, &shm)?;
    }
    if !g.sem.is_empty() {
        let mut w = dir.writer(&sem).map_err(img_err(&sem))?;
        for (e, vals) in &g.sem {
            w.write_entry(e).map_err(frame_err)?;
            let mut b: Vec<u8> = vals.iter().flat_map(|v| v.to_ne_bytes()).collect();
            pad(&mut b, vals.len() * 2, 8);
            w.write_raw(&b).map_err(frame_err)?;
            sum.sem_ids.push(e.desc.id as i32);
        }
        finish(w, &sem)?;
    }
    if !g.msg.is_empty() {
        let mut w = dir.writer(&msg).map_err(img_err(&msg))?;
        for (e, msgs) in &g.msg {
            w.write_entry(e).map_err(frame_err)?;
            for (mtype, text) in msgs {
                w.write_entry(&pb::IpcMsg {
                    mtype: *mtype,
                    msize: text.len() as u32,
                })
                .map_err(frame_err)?;
                let mut b = text.clone();
                pad(&mut b, text.len(), 8);
                w.write_raw(&b).map_err(frame_err)?;
            }
            sum.msg_ids.push(e.desc.id as i32);
        }
        finish(w, &msg)?;
    }
    Ok(sum)
}

fn finish(
    w: ferry_images::ImageWriter<std::io::BufWriter<std::fs::File>>,
    _file: &str,
) -> Result<(), IpcError> {
    // ImageWriter::finish flushes the BufWriter into the file.
    w.finish().map(drop).map_err(frame_err)
}

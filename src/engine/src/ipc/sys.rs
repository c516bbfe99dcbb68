//! Thin wrappers over the SysV IPC system calls with the kernel's x86_64 `*64_ds` layouts.
//!
//! The `*ctl` calls go through `syscall(2)` directly so the structures are the kernel's own
//! (on x86_64 the kernel always uses the IPC_64 layouts, no version flag needed).

use std::io;

/// `struct ipc64_perm`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Ipc64Perm {
    /// Key.
    pub key: i32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Creator uid.
    pub cuid: u32,
    /// Creator gid.
    pub cgid: u32,
    /// Mode (permissions and SHM_DEST/SHM_LOCKED flags).
    pub mode: u32,
    /// Sequence number.
    pub seq: u16,
    pad2: u16,
    unused1: u64,
    unused2: u64,
}

/// `struct shmid64_ds`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Shmid64Ds {
    /// Permissions.
    pub perm: Ipc64Perm,
    /// Segment size in bytes.
    pub segsz: u64,
    atime: i64,
    dtime: i64,
    ctime: i64,
    cpid: i32,
    lpid: i32,
    /// Attach count.
    pub nattch: u64,
    unused4: u64,
    unused5: u64,
}

/// `struct semid64_ds` (x86).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Semid64Ds {
    /// Permissions.
    pub perm: Ipc64Perm,
    otime: u64,
    unused1: u64,
    ctime: u64,
    unused2: u64,
    /// Number of semaphores.
    pub nsems: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct msqid64_ds`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Msqid64Ds {
    /// Permissions.
    pub perm: Ipc64Perm,
    stime: i64,
    rtime: i64,
    ctime: i64,
    /// Bytes queued.
    pub cbytes: u64,
    /// Messages queued.
    pub qnum: u64,
    /// Queue capacity in bytes.
    pub qbytes: u64,
    lspid: i32,
    lrpid: i32,
    unused4: u64,
    unused5: u64,
}

const _: () = assert!(std::mem::size_of::<Ipc64Perm>() == 48);
const _: () = assert!(std::mem::size_of::<Shmid64Ds>() == 112);
const _: () = assert!(std::mem::size_of::<Semid64Ds>() == 104);
const _: () = assert!(std::mem::size_of::<Msqid64Ds>() == 120);

/// `IPC_RMID`.
pub const IPC_RMID: i32 = 0;
/// `IPC_SET`.
pub const IPC_SET: i32 = 1;
/// `IPC_STAT`.
pub const IPC_STAT: i32 = 2;
/// `SHM_STAT` (index in, id out).
pub const SHM_STAT: i32 = 13;
/// `SHM_INFO` (returns the highest used index).
pub const SHM_INFO: i32 = 14;
/// `SEM_STAT`.
pub const SEM_STAT: i32 = 18;
/// `SEM_INFO`.
pub const SEM_INFO: i32 = 19;
/// `MSG_STAT`.
pub const MSG_STAT: i32 = 11;
/// `MSG_INFO`.
pub const MSG_INFO: i32 = 12;
/// `GETALL`.
pub const GETALL: i32 = 13;
/// `SETALL`.
pub const SETALL: i32 = 17;
/// `MSG_COPY`: read the message at an index without dequeuing it.
pub const MSG_COPY: i32 = 0o40000;

fn check(rc: libc::c_long) -> io::Result<i32> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Raw `*ctl(id, cmd, buf)` for shm and msg, whose buffers are plain structs.
fn ctl3<T>(nr: libc::c_long, id: i32, cmd: i32, buf: *mut T) -> io::Result<i32> {
    // SAFETY: `buf` points at a live, writable kernel-layout structure for this command
    // (or at a buffer at least as large as the INFO structures, see callers).
    check(unsafe { libc::syscall(nr, id, cmd, buf) })
}

/// `shmctl`.
pub fn shmctl(id: i32, cmd: i32, ds: &mut Shmid64Ds) -> io::Result<i32> {
    ctl3(libc::SYS_shmctl, id, cmd, ds as *mut Shmid64Ds)
}

/// `msgctl`.
pub fn msgctl(id: i32, cmd: i32, ds: &mut Msqid64Ds) -> io::Result<i32> {
    ctl3(libc::SYS_msgctl, id, cmd, ds as *mut Msqid64Ds)
}

/// Raw `semctl` with a pointer argument (`semun.buf` or `semun.array`).
fn semctl_raw<T>(id: i32, num: i32, cmd: i32, arg: *mut T) -> io::Result<i32> {
    // SAFETY: every caller in this file passes a live buffer of the size the command
    // requires (a semid64_ds, an INFO buffer, or nsems u16 values for GETALL/SETALL).
    check(unsafe { libc::syscall(libc::SYS_semctl, id, num, cmd, arg) })
}

/// `semctl` with a `semid64_ds` (IPC_STAT, IPC_SET, SEM_STAT).
pub fn semctl_ds(id: i32, cmd: i32, ds: &mut Semid64Ds) -> io::Result<i32> {
    semctl_raw(id, 0, cmd, ds as *mut Semid64Ds)
}

/// All values of semaphore set `id` (`GETALL`).
pub fn sem_getall(id: i32) -> io::Result<Vec<u16>> {
    let mut ds = Semid64Ds::default();
    semctl_ds(id, IPC_STAT, &mut ds)?;
    let mut v = vec![0u16; ds.nsems as usize];
    semctl_raw(id, 0, GETALL, v.as_mut_ptr())?;
    Ok(v)
}

/// Sets all values of semaphore set `id` (`SETALL`); `vals` must hold exactly nsems values.
pub fn sem_setall(id: i32, vals: &[u16]) -> io::Result<()> {
    let mut ds = Semid64Ds::default();
    semctl_ds(id, IPC_STAT, &mut ds)?;
    if ds.nsems as usize != vals.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "set has {} semaphores, {} values given",
                ds.nsems,
                vals.len()
            ),
        ));
    }
    let mut v = vals.to_vec();
    semctl_raw(id, 0, SETALL, v.as_mut_ptr()).map(drop)
}

/// Highest used index of a table (`SHM_INFO`/`SEM_INFO`/`MSG_INFO`), -1 when empty.
pub fn max_index(kind: Kind) -> io::Result<i32> {
    // The INFO structures are smaller than the 256 bytes given here.
    let mut buf = [0u64; 32];
    let p = buf.as_mut_ptr();
    match kind {
        Kind::Shm => ctl3(libc::SYS_shmctl, 0, SHM_INFO, p),
        Kind::Msg => ctl3(libc::SYS_msgctl, 0, MSG_INFO, p),
        Kind::Sem => semctl_raw(0, 0, SEM_INFO, p),
    }
}

/// The three SysV object kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shared memory.
    Shm,
    /// Semaphores.
    Sem,
    /// Message queues.
    Msg,
}

impl Kind {
    /// The `kernel.X_next_id` sysctl path.
    pub fn next_id_path(self) -> &'static str {
        match self {
            Kind::Shm => "/proc/sys/kernel/shm_next_id",
            Kind::Sem => "/proc/sys/kernel/sem_next_id",
            Kind::Msg => "/proc/sys/kernel/msg_next_id",
        }
    }
}

/// An attached shared memory segment, detached on drop.
pub struct ShmAttach {
    addr: *mut libc::c_void,
    len: usize,
}

impl ShmAttach {
    /// Attaches segment `id` (read-only or read-write).
    pub fn new(id: i32, len: usize, readonly: bool) -> io::Result<Self> {
        let flags = if readonly { libc::SHM_RDONLY } else { 0 };
        // SAFETY: a NULL address lets the kernel pick a free range; nothing is overlapped.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }

    /// The segment's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the kernel mapped at least `len` bytes (the segment size) at `addr`,
        // which stays mapped until drop.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }

    /// The segment's bytes, writable (only for a read-write attach).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the attach was read-write and this is the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }
}

impl Drop for ShmAttach {
    fn drop(&mut self) {
        // SAFETY: `addr` came from a successful shmat and is detached exactly once.
        unsafe { libc::shmdt(self.addr) };
    }
}

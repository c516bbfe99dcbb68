//! The magic table: which u32 identifies which image type, what header it carries, which protobuf
//! message its entries hold and which raw payload follows them.
//!
//! CRIU v1.1 images begin with IMG_COMMON_MAGIC (or IMG_SERVICE_MAGIC for service files such as
//! stats) followed by the per-type magic; `inventory.img` carries its own magic alone. Page data
//! (`pages-N.img`), tmpfs archives and ip-tool dumps are raw files with no header at all.

/// First u32 of every image except inventory and service files.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First u32 of service files (stats-dump, stats-restore, irmap-cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Page size CRIU images assume on x86_64.
pub const PAGE_SIZE: u64 = 4096;

/// How an image file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// IMG_COMMON_MAGIC + type magic.
    Common,
    /// IMG_SERVICE_MAGIC + type magic.
    Service,
    /// Type magic alone (inventory).
    Bare,
}

/// How entries are laid out after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every entry is the same message type.
    Plain,
    /// First entry `pagemap_head`, then `pagemap_entry`s.
    Pagemap,
    /// `ghost_file_entry`, then either the whole file content raw, or (`chunks`)
    /// `ghost_chunk_entry`s each followed by `len` raw bytes.
    GhostFile,
    /// Each entry is followed by as many raw bytes as one of its fields says.
    Extra(Extra),
}

/// Raw payload that follows each entry of some image types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// `bytes` field (pipes-data, fifo-data).
    PipeData,
    /// `length` field (sk-queues).
    SkQueue,
    /// `inq_len` then `outq_len` bytes (tcp-stream).
    TcpStream,
    /// `size` bytes padded to 4 (SysV shm).
    IpcShm,
    /// `nsems` u16 values padded to 8 (SysV semaphores).
    IpcSem,
    /// `qnum` x (`u32 len + ipc_msg` + `msize` bytes padded to 8) (SysV message queues).
    IpcMsg,
    /// `keys_bytes + values_bytes` (BPF map data).
    BpfmapData,
}

/// One known image type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKind {
    /// crit's name (the JSON `magic`).
    pub name: &'static str,
    /// Per-type magic.
    pub magic: u32,
    /// How the file starts.
    pub header: Header,
    /// Fully-qualified protobuf message of its entries (the first one for special layouts).
    pub message: &'static str,
    /// Entry layout.
    pub layout: Layout,
}

const fn k(name: &'static str, magic: u32, message: &'static str) -> ImageKind {
    ImageKind {
        name,
        magic,
        header: Header::Common,
        message,
        layout: Layout::Plain,
    }
}

const fn x(name: &'static str, magic: u32, message: &'static str, e: Extra) -> ImageKind {
    ImageKind {
        name,
        magic,
        header: Header::Common,
        message,
        layout: Layout::Extra(e),
    }
}

/// Every image type ferry reads and writes.
pub const KINDS: &[ImageKind] = &[
    ImageKind {
        name: "INVENTORY",
        magic: 0x5831_3116,
        header: Header::Bare,
        message: "inventory_entry",
        layout: Layout::Plain,
    },
    k("PSTREE", 0x5027_3030, "pstree_entry"),
    k("FDINFO", 0x5621_3732, "fdinfo_entry"),
    ImageKind {
        name: "PAGEMAP",
        magic: 0x5608_4025,
        header: Header::Common,
        message: "pagemap_head",
        layout: Layout::Pagemap,
    },
    k("CORE", 0x5505_3847, "core_entry"),
    k("IDS", 0x5443_2030, "task_kobj_ids_entry"),
    k("VMAS", 0x5412_3737, "vma_entry"),
    k("PIPES", 0x5651_3555, "pipe_entry"),
    x(
        "PIPES_DATA",
        0x5645_3709,
        "pipe_data_entry",
        Extra::PipeData,
    ),
    k("FIFO", 0x5836_4939, "fifo_entry"),
    x("FIFO_DATA", 0x5933_3054, "pipe_data_entry", Extra::PipeData),
    k("SIGACT", 0x5534_4201, "sa_entry"),
    k("UNIXSK", 0x5437_3943, "unix_sk_entry"),
    k("INETSK", 0x5644_3851, "inet_sk_entry"),
    k("PACKETSK", 0x6045_4618, "packet_sock_entry"),
    k("ITIMERS", 0x5746_4056, "itimer_entry"),
    k("POSIX_TIMERS", 0x5260_3957, "posix_timer_entry"),
    x("SK_QUEUES", 0x5626_4026, "sk_packet_entry", Extra::SkQueue),
    k("UTSNS", 0x5447_3203, "utsns_entry"),
    k("CREDS", 0x5402_3547, "creds_entry"),
    k("IPC_VAR", 0x5311_5007, "ipc_var_entry"),
    x("IPCNS_SHM", 0x4628_3044, "ipc_shm_entry", Extra::IpcShm),
    x("IPCNS_MSG", 0x5545_3737, "ipc_msg_entry", Extra::IpcMsg),
    x("IPCNS_SEM", 0x5957_3019, "ipc_sem_entry", Extra::IpcSem),
    k("REG_FILES", 0x5036_3636, "reg_file_entry"),
    k("EXT_FILES", 0x5925_5641, "ext_file_entry"),
    k("FS", 0x5140_3912, "fs_entry"),
    k("MM", 0x5749_2820, "mm_entry"),
    k("REMAP_FPATH", 0x5913_3954, "remap_file_path_entry"),
    ImageKind {
        name: "GHOST_FILE",
        magic: 0x5258_3605,
        header: Header::Common,
        message: "ghost_file_entry",
        layout: Layout::GhostFile,
    },
    x(
        "TCP_STREAM",
        0x5146_5506,
        "tcp_stream_entry",
        Extra::TcpStream,
    ),
    k("EVENTFD_FILE", 0x4452_3722, "eventfd_file_entry"),
    k("EVENTPOLL_FILE", 0x4502_3858, "eventpoll_file_entry"),
    k("EVENTPOLL_TFD", 0x4443_3746, "eventpoll_tfd_entry"),
    k("SIGNALFD", 0x5732_3820, "signalfd_entry"),
    k("INOTIFY_FILE", 0x4842_4431, "inotify_file_entry"),
    k("INOTIFY_WD", 0x5456_2009, "inotify_wd_entry"),
    k("MNTS", 0x5556_3928, "mnt_entry"),
    k("NETDEV", 0x5737_3951, "net_device_entry"),
    k("NETNS", 0x5593_3752, "netns_entry"),
    k("TTY_FILES", 0x5943_3025, "tty_file_entry"),
    k("TTY_INFO", 0x5945_3036, "tty_info_entry"),
    k("TTY_DATA", 0x5941_3026, "tty_data_entry"),
    k("FILE_LOCKS", 0x5432_3616, "file_lock_entry"),
    k("RLIMIT", 0x5711_3925, "rlimit_entry"),
    k("FANOTIFY_FILE", 0x5509_6122, "fanotify_file_entry"),
    k("FANOTIFY_MARK", 0x5650_6035, "fanotify_mark_entry"),
    k("SIGNAL", 0x5925_5647, "siginfo_entry"),
    k("NETLINK_SK", 0x5800_5614, "netlink_sk_entry"),
    k("NS_FILES", 0x6139_4011, "ns_file_entry"),
    k("TUNFILE", 0x5714_3751, "tunfile_entry"),
    k("CGROUP", 0x5938_3330, "cgroup_entry"),
    k("TIMERFD", 0x5049_3712, "timerfd_entry"),
    k("CPUINFO", 0x6140_4013, "cpuinfo_entry"),
    k("USERNS", 0x5547_4906, "userns_entry"),
    k("SECCOMP", 0x6441_3049, "seccomp_entry"),
    k("BINFMT_MISC", 0x6734_3323, "binfmt_misc_entry"),
    k("AUTOFS", 0x4935_3943, "autofs_entry"),
    k("FILES", 0x5630_3138, "file_entry"),
    k("MEMFD_INODE", 0x4845_3499, "memfd_inode_entry"),
    k("TIMENS", 0x4311_4433, "timens_entry"),
    k("PIDNS", 0x6115_7326, "pidns_entry"),
    k("BPFMAP_FILE", 0x5750_6142, "bpfmap_file_entry"),
    x(
        "BPFMAP_DATA",
        0x6432_4033,
        "bpfmap_data_entry",
        Extra::BpfmapData,
    ),
    k("APPARMOR", 0x5942_3047, "apparmor_entry"),
    ImageKind {
        name: "STATS",
        magic: 0x5709_3306,
        header: Header::Service,
        message: "stats_entry",
        layout: Layout::Plain,
    },
    ImageKind {
        name: "IRMAP_CACHE",
        magic: 0x5700_4059,
        header: Header::Service,
        message: "irmap_cache_entry",
        layout: Layout::Plain,
    },
];

impl ImageKind {
    /// Looks a type up by its per-type magic.
    pub fn by_magic(magic: u32) -> Option<&'static ImageKind> {
        KINDS.iter().find(|k| k.magic == magic)
    }

    /// Looks a type up by crit's name (`"CORE"`, `"PAGEMAP"`, ...).
    pub fn by_name(name: &str) -> Option<&'static ImageKind> {
        KINDS.iter().find(|k| k.name == name)
    }

    /// The known type of this name; panics on a name missing from the table (a programming error).
    pub fn named(name: &str) -> &'static ImageKind {
        Self::by_name(name).unwrap_or_else(|| panic!("image kind {name} missing from KINDS"))
    }

    /// The bytes a file of this type starts with.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8);
        match self.header {
            Header::Common => v.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes()),
            Header::Service => v.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes()),
            Header::Bare => {}
        }
        v.extend_from_slice(&self.magic.to_le_bytes());
        v
    }
}

/// Files in an image directory that carry no CRIU header: page data, archives, ip-tool dumps,
/// logs and runc's own JSON.
pub fn is_raw_file(name: &str) -> bool {
    const RAW_PREFIXES: &[&str] = &[
        "pages-",
        "tmpfs-",
        "ifaddr-",
        "route-",
        "route6-",
        "rule-",
        "iptables-",
        "ip6tables-",
        "nftables-",
        "netns-ct-",
        "netns-exp-",
        "iptables",
        "ip6tables",
    ];
    name.ends_with(".log")
        || name.ends_with(".json")
        || RAW_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_unique_and_names_resolve() {
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                assert_ne!(a.magic, b.magic, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
            assert_eq!(ImageKind::by_magic(a.magic).unwrap().name, a.name);
        }
        assert_eq!(
            ImageKind::named("INVENTORY").header_bytes(),
            [0x16, 0x31, 0x31, 0x58]
        );
        assert_eq!(
            ImageKind::named("CORE").header_bytes(),
            [0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55]
        );
        assert!(is_raw_file("pages-1.img") && is_raw_file("tmpfs-dev-41.tar.gz.img"));
        assert!(!is_raw_file("pagemap-1.img"));
    }
}

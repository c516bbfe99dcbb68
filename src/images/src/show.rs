//! `show`: a human summary of a whole checkpoint: the process tree with threads, memory per VMA
//! kind and dumped pages, each task's fd table, namespaces and mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::dir::{DirError, ImageDir};
use crate::magic::PAGE_SIZE;
use crate::pagemap::{Pagemap, PE_LAZY, PE_PARENT};
use crate::pb::{self, FdTypes};

fn state_name(s: u32) -> &'static str {
    match s {
        1 => "running",
        2 => "dead",
        3 => "stopped",
        6 => "zombie",
        _ => "?",
    }
}

fn kib(bytes: u64) -> String {
    if bytes >= 10 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// VMA kinds in the order `show` lists them, with the `status` bit that marks each.
const VMA_KINDS: &[(&str, u32)] = &[
    ("vdso", 1 << 3),
    ("vvar", 1 << 12),
    ("vsyscall", 1 << 2),
    ("stack", 1 << 1),
    ("heap", 1 << 5),
    ("sysv shm", 1 << 10),
    ("socket", 1 << 11),
    ("aio ring", 1 << 13),
    ("memfd", 1 << 14),
    ("file shared", 1 << 7),
    ("file private", 1 << 6),
    ("anon shared", 1 << 8),
    ("anon private", 1 << 9),
];

fn vma_kind(status: u32) -> &'static str {
    VMA_KINDS
        .iter()
        .find(|(_, b)| status & b != 0)
        .map(|(n, _)| *n)
        .unwrap_or("other")
}

fn ip(words: &[u32]) -> String {
    crate::pretty::format_ip(words).unwrap_or_else(|| "?".into())
}

fn sk(field: &str, v: u32) -> String {
    crate::pretty::dict_lookup("sk", field, v.into())
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn describe(f: &pb::FileEntry, memfd_names: &BTreeMap<u64, String>) -> String {
    let t = FdTypes::try_from(f.r#type)
        .map(|t| t.as_str_name())
        .unwrap_or("?");
    let d = if let Some(r) = &f.reg {
        format!(
            "{} (pos {}, flags {})",
            r.name,
            r.pos,
            crate::pretty::map_flags(
                r.flags.into(),
                crate::pretty::flag_table("rfile.flags").unwrap_or(&[])
            )
        )
    } else if let Some(p) = &f.pipe {
        format!("pipe:[{}]", p.pipe_id)
    } else if let Some(p) = &f.fifo {
        format!("fifo:[{}]", p.pipe_id)
    } else if let Some(u) = &f.usk {
        let name = String::from_utf8_lossy(&u.name).replace('\0', "@");
        format!(
            "unix {} {} peer {} {}",
            sk("type", u.r#type),
            sk("state", u.state),
            u.peer,
            name
        )
        .trim_end()
        .to_string()
    } else if let Some(s) = &f.isk {
        format!(
            "{} {} {}:{} -> {}:{} {}",
            sk("family", s.family),
            sk("proto", s.proto),
            ip(&s.src_addr),
            s.src_port,
            ip(&s.dst_addr),
            s.dst_port,
            sk("state", s.state)
        )
    } else if let Some(e) = &f.efd {
        format!("eventfd count {}", e.counter)
    } else if let Some(e) = &f.epfd {
        let fds: Vec<String> = e.tfd.iter().map(|t| t.tfd.to_string()).collect();
        format!("epoll watching fds [{}]", fds.join(", "))
    } else if let Some(s) = &f.sgfd {
        format!("signalfd mask {:#x}", s.sigmask)
    } else if let Some(t) = &f.tfd {
        format!("timerfd clock {} interval {}s", t.clockid, t.isec)
    } else if let Some(i) = &f.ify {
        format!("inotify, {} watches", i.wd.len())
    } else if let Some(i) = &f.ffy {
        format!("fanotify, {} marks", i.mark.len())
    } else if let Some(t) = &f.tty {
        format!("tty (tty-info id {})", t.tty_info_id)
    } else if let Some(m) = &f.memfd {
        let name = memfd_names
            .get(&m.inode_id.into())
            .cloned()
            .unwrap_or_default();
        format!("memfd:{name} (inode {})", m.inode_id)
    } else if let Some(n) = &f.nsf {
        format!(
            "namespace file, ns id {} (clone flag {:#x})",
            n.ns_id, n.ns_cflag
        )
    } else if let Some(p) = &f.psk {
        format!("packet socket protocol {}", p.protocol)
    } else if let Some(n) = &f.nlsk {
        format!("netlink socket protocol {}", n.protocol)
    } else if let Some(t) = &f.tunf {
        format!("tun {}", t.netdev.clone().unwrap_or_default())
    } else if f.ext.is_some() {
        "external file".to_string()
    } else if f.bpf.is_some() {
        "bpf map".to_string()
    } else if let Some(p) = &f.pidfd {
        format!("pidfd -> pid {}", p.nspid)
    } else {
        String::new()
    };
    format!("{t:<9} {d}")
}

/// Renders the summary of a checkpoint directory.
pub fn render(d: &ImageDir) -> Result<String, DirError> {
    let mut o = String::new();
    let inv: pb::InventoryEntry = d.read_one("inventory.img")?;
    let _ = writeln!(o, "Checkpoint {}", d.path().display());
    let _ = writeln!(
        o,
        "  CRIU image v1.1 (img_version {}){}",
        inv.img_version,
        inv.dump_criu_run_id
            .as_deref()
            .map(|r| format!(", dump run {r}"))
            .unwrap_or_default()
    );
    if d.has("stats-dump") {
        if let Some(dump) = d.read_one::<pb::StatsEntry>("stats-dump")?.dump {
            let _ = writeln!(
                o,
                "  dump: frozen {} us, {} pages scanned, {} written",
                dump.frozen_time, dump.pages_scanned, dump.pages_written
            );
        }
    }
    let tree: Vec<pb::PstreeEntry> = d.read_entries("pstree.img")?;
    let mut cores = BTreeMap::new();
    for p in &tree {
        cores.insert(
            p.pid,
            d.read_one::<pb::CoreEntry>(&format!("core-{}.img", p.pid))?,
        );
    }
    let comm = |pid: u32| {
        cores
            .get(&pid)
            .and_then(|c| c.tc.as_ref())
            .map(|t| t.comm.clone())
            .unwrap_or_default()
    };
    let state = |pid: u32| {
        cores
            .get(&pid)
            .and_then(|c| c.tc.as_ref())
            .map(|t| t.task_state)
            .unwrap_or(0)
    };

    let _ = writeln!(
        o,
        "\nProcess tree ({} tasks, {} threads)",
        tree.len(),
        tree.iter().map(|p| p.threads.len()).sum::<usize>()
    );
    let pids: BTreeSet<u32> = tree.iter().map(|p| p.pid).collect();
    fn walk(
        o: &mut String,
        tree: &[pb::PstreeEntry],
        p: &pb::PstreeEntry,
        depth: usize,
        label: &dyn Fn(&pb::PstreeEntry) -> String,
    ) {
        let _ = writeln!(o, "  {}{}", "  ".repeat(depth), label(p));
        for c in tree.iter().filter(|c| c.ppid == p.pid && c.pid != p.pid) {
            walk(o, tree, c, depth + 1, label);
        }
    }
    let label = |p: &pb::PstreeEntry| {
        let threads: Vec<String> = p.threads.iter().map(u32::to_string).collect();
        format!(
            "{} {} [{}] pgid {} sid {} threads {}",
            p.pid,
            comm(p.pid),
            state_name(state(p.pid)),
            p.pgid,
            p.sid,
            threads.join(",")
        )
    };
    for root in tree
        .iter()
        .filter(|p| p.ppid == 0 || !pids.contains(&p.ppid))
    {
        walk(&mut o, &tree, root, 0, &label);
    }

    let files: Vec<pb::FileEntry> = if d.has("files.img") {
        d.read_entries("files.img")?
    } else {
        Vec::new()
    };
    let by_id: BTreeMap<u32, &pb::FileEntry> = files.iter().map(|f| (f.id, f)).collect();
    let memfd_names: BTreeMap<u64, String> = if d.has("memfd.img") {
        d.read_entries::<pb::MemfdInodeEntry>("memfd.img")?
            .into_iter()
            .map(|m| (m.inode_id, m.name))
            .collect()
    } else {
        BTreeMap::new()
    };
    let name_of = |id: u32| {
        by_id
            .get(&id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("file id {id}"))
    };
    let mut ns: BTreeMap<&str, BTreeMap<u32, Vec<u32>>> = BTreeMap::new();

    for p in &tree {
        let _ = writeln!(o, "\nTask {} ({})", p.pid, comm(p.pid));
        if matches!(state(p.pid), 2 | 6) {
            let _ = writeln!(o, "  {} task: no memory or files", state_name(state(p.pid)));
            continue;
        }
        let mm: pb::MmEntry = d.read_one(&format!("mm-{}.img", p.pid))?;
        let _ = writeln!(o, "  exe {}", name_of(mm.exe_file_id));
        if let Ok(fs) = d.read_one::<pb::FsEntry>(&format!("fs-{}.img", p.pid)) {
            let _ = writeln!(
                o,
                "  cwd {}  root {}",
                name_of(fs.cwd_id),
                name_of(fs.root_id)
            );
        }
        let mut kinds: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        let mut total = 0;
        for v in &mm.vmas {
            let e = kinds.entry(vma_kind(v.status)).or_default();
            e.0 += 1;
            e.1 += v.end.saturating_sub(v.start);
            total += v.end.saturating_sub(v.start);
        }
        let _ = writeln!(o, "  memory: {} VMAs, {} mapped", mm.vmas.len(), kib(total));
        for (name, _) in VMA_KINDS.iter().chain(&[("other", 0)]) {
            if let Some((n, sz)) = kinds.get(name) {
                let _ = writeln!(o, "    {name:<13} {n:>3} VMAs {:>10}", kib(*sz));
            }
        }
        let pm = format!("pagemap-{}.img", p.pid);
        if d.has(&pm) {
            let Pagemap { head, items } = Pagemap::read(&pm, &d.read(&pm)?)?;
            let (mut present, mut lazy, mut parent) = (0u64, 0u64, 0u64);
            for it in &items {
                let f = it.entry.flags.unwrap_or(0);
                if f & PE_PARENT != 0 || it.entry.in_parent == Some(true) {
                    parent += it.pages();
                } else if f & PE_LAZY != 0 {
                    lazy += it.pages();
                } else {
                    present += it.pages();
                }
            }
            let _ = writeln!(
                o,
                "  pages: {} in pages-{}.img ({}), {} lazy, {} in parent, {} pagemap entries",
                present + lazy,
                head.pages_id,
                kib((present + lazy) * PAGE_SIZE),
                lazy,
                parent,
                items.len()
            );
        }
        if let Ok(ids) = d.read_one::<pb::TaskKobjIdsEntry>(&format!("ids-{}.img", p.pid)) {
            for (n, v) in [
                ("pid", ids.pid_ns_id),
                ("net", ids.net_ns_id),
                ("ipc", ids.ipc_ns_id),
                ("uts", ids.uts_ns_id),
                ("mnt", ids.mnt_ns_id),
                ("user", ids.user_ns_id),
                ("cgroup", ids.cgroup_ns_id),
                ("time", ids.time_ns_id),
            ] {
                if let Some(id) = v {
                    ns.entry(n).or_default().entry(id).or_default().push(p.pid);
                }
            }
            let fdn = format!("fdinfo-{}.img", ids.files_id);
            if d.has(&fdn) {
                let fds: Vec<pb::FdinfoEntry> = d.read_entries(&fdn)?;
                let _ = writeln!(o, "  fds ({fdn}):");
                for fd in fds {
                    let desc = by_id
                        .get(&fd.id)
                        .map(|f| describe(f, &memfd_names))
                        .unwrap_or_else(|| format!("file id {} missing from files.img", fd.id));
                    let cloexec = if fd.flags & 1 != 0 { " cloexec" } else { "" };
                    let _ = writeln!(o, "    {:>4}  {desc}{cloexec}", fd.fd);
                }
            }
        }
    }

    if !ns.is_empty() {
        let _ = writeln!(o, "\nNamespaces");
        for (kind, ids) in &ns {
            for (id, tasks) in ids {
                let mut extra = String::new();
                let file = match *kind {
                    "uts" => format!("utsns-{id}.img"),
                    "mnt" => format!("mountpoints-{id}.img"),
                    "ipc" => format!("ipcns-var-{id}.img"),
                    "net" => format!("netdev-{id}.img"),
                    "time" => format!("timens-{id}.img"),
                    _ => String::new(),
                };
                if *kind == "uts" && d.has(&file) {
                    let u: pb::UtsnsEntry = d.read_one(&file)?;
                    extra = format!(" hostname {:?} domain {:?}", u.nodename, u.domainname);
                } else if !file.is_empty() && d.has(&file) {
                    extra = format!(" ({file})");
                } else if !file.is_empty() {
                    extra = " (no image: the host's or an external namespace)".into();
                }
                let t: Vec<String> = tasks.iter().map(u32::to_string).collect();
                let _ = writeln!(o, "  {kind:<6} id {id:<3} tasks {}{extra}", t.join(","));
            }
        }
    }

    for f in d
        .files()?
        .iter()
        .filter(|f| f.name.starts_with("mountpoints-"))
    {
        let mut mnts: Vec<pb::MntEntry> = d.read_entries(&f.name)?;
        mnts.sort_by_key(|m| m.mnt_id);
        let _ = writeln!(o, "\nMounts ({}, {} entries)", f.name, mnts.len());
        for m in mnts {
            let fs = m.fsname.clone().unwrap_or_else(|| {
                i32::try_from(m.fstype)
                    .ok()
                    .and_then(|t| pb::Fstype::try_from(t).ok())
                    .map(|t| t.as_str_name().to_ascii_lowercase())
                    .unwrap_or_else(|| format!("fstype {}", m.fstype))
            });
            let ext = if m.ext_mount == Some(true) {
                " [external]"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "  {:>4} <- {:<4} {:<28} {:<10} {}{}",
                m.mnt_id,
                m.parent_mnt_id,
                m.mountpoint,
                fs,
                if m.source.is_empty() { "-" } else { &m.source },
                ext
            );
        }
    }
    let raw: Vec<String> = d
        .files()?
        .iter()
        .filter(|f| f.name.starts_with("tmpfs-"))
        .map(|f| format!("{} ({} bytes)", f.name, f.size))
        .collect();
    if !raw.is_empty() {
        let _ = writeln!(o, "\nArchives\n  {}", raw.join("\n  "));
    }
    Ok(o)
}

//! A real runc container (busybox, hostname, bind mount, pids limit, SysV shm) dumped with
//! ferry's container-resource modules: the mount image is checked field by field against
//! what runc+CRIU 4.2 wrote for the same kind of container (fixture `runc-busybox`), every
//! image decodes with crit, and everything is restored into fresh namespaces and cgroups
//! after the container is gone (the migration case). Runs as root; the container is killed
//! and deleted, cgroups and temporary directories removed, even when an assertion fails.

#[path = "container_res_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{crit_decodes_all, NsChild};
use ferry_engine::cgroups::{self, CgroupMode};
use ferry_engine::ipc::sys::ShmAttach;
use ferry_engine::mounts::{self, MountDumpOpts, MountRestoreOpts};
use ferry_engine::net::{self, NetRestoreOpts};
use ferry_engine::uts::enter::{in_namespaces, Ns};
use ferry_engine::{ipc, uts};
use ferry_images::{pb, ImageDir};

const CGROUPS: [&str; 9] = [
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
];

/// A runc container in its own state root; killed and deleted on drop.
struct Runc {
    state: PathBuf,
    id: String,
    bundle: tempfile::TempDir,
    pid: i32,
}

impl Runc {
    fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run runc")
    }

    fn start(id: &str) -> Runc {
        let bundle = tempfile::tempdir().unwrap();
        let b = bundle.path();
        let rootfs = b.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for c in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(c)).unwrap();
        }
        for d in ["proc", "sys", "dev", "tmp", "data"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::create_dir(b.join("datasrc")).unwrap();
        std::fs::write(b.join("datasrc/f"), b"bound from the host").unwrap();
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(b)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["sleep", "600"]);
        cfg["root"]["readonly"] = false.into();
        cfg["hostname"] = "ferryct".into();
        cfg["linux"]["resources"]["pids"] = serde_json::json!({ "limit": 42 });
        cfg["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": "/data", "type": "bind",
                "source": b.join("datasrc").to_str().unwrap(), "options": ["rbind", "rw"]
            }));
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&cfg).unwrap(),
        )
        .unwrap();
        let mut ct = Runc {
            state: b.join("state"),
            id: id.to_string(),
            bundle,
            pid: 0,
        };
        let pidfile = ct.bundle.path().join("pid");
        // runc -d hands its stdio to the container: give it files, never a pipe we wait on.
        let errlog = ct.bundle.path().join("runc-run.err");
        let status = Command::new("runc")
            .arg("--root")
            .arg(&ct.state)
            .args(["run", "-d", "--pid-file"])
            .arg(&pidfile)
            .arg(&ct.id)
            .current_dir(ct.bundle.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errlog).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "runc run: {}",
            std::fs::read_to_string(&errlog).unwrap_or_default()
        );
        ct.pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ct
    }

    fn stop(&self) {
        let _ = self.runc(&["kill", &self.id, "KILL"]);
        let _ = self.runc(&["delete", "-f", &self.id]);
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fixture_mounts() -> Vec<pb::MntEntry> {
    let base = std::env::var_os("FERRY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/criu-4.2")
        });
    ImageDir::open(base.join("runc-busybox/images"))
        .unwrap()
        .read_entries("mountpoints-13.img")
        .unwrap()
}

#[test]
fn runc_container_resources_dump_like_criu_and_restore_elsewhere() {
    let id = common::unique("runc");
    let ct = Runc::start(&id);
    let pid = ct.pid;
    let data_src = ct.bundle.path().join("datasrc");
    // SysV shared memory inside the container's IPC namespace.
    let shmid = in_namespaces(pid, &[Ns::Ipc], || {
        // SAFETY: plain SysV call on integers in the helper thread's namespace.
        let id = unsafe { libc::shmget(0x5151, 8192, 0o600 | libc::IPC_CREAT) };
        assert!(id >= 0);
        let mut at = ShmAttach::new(id, 8192, false).unwrap();
        at.bytes_mut()[..5].copy_from_slice(b"ferry");
        id
    })
    .unwrap();

    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::create(t.path()).unwrap();
    assert_eq!(uts::dump_uts(pid, &dir, 1).unwrap().nodename, "ferryct");
    assert_eq!(ipc::dump_ipc(pid, &dir, 2).unwrap().shm_ids, [shmid]);
    // What runc hands CRIU as external: the config's binds, masked files, cgroup binds.
    let mut ext: BTreeMap<String, String> = BTreeMap::from([
        ("/data".into(), "/data".into()),
        ("/proc/keys".into(), "/dev/null".into()),
        ("/proc/timer_list".into(), "/dev/null".into()),
    ]);
    for c in CGROUPS {
        ext.insert(format!("/sys/fs/cgroup/{c}"), format!("/sys/fs/cgroup/{c}"));
    }
    let mine = mounts::dump_mounts(
        pid,
        &dir,
        3,
        &MountDumpOpts {
            root: "/".into(),
            external: ext,
            ..Default::default()
        },
    )
    .unwrap();
    let cg = cgroups::dump_cgroups(&dir, &[pid], CgroupMode::Soft).unwrap();
    let links = net::dump_net(pid, &dir, 4).unwrap();
    assert_eq!(links.len(), 1, "runc's default netns holds lo only");
    let decoded = crit_decodes_all(t.path());
    for f in [
        "utsns-1.img",
        "ipcns-var-2.img",
        "ipcns-shm-2.img",
        "mountpoints-3.img",
        "cgroup.img",
        "netdev-4.img",
    ] {
        assert!(
            decoded.iter().any(|d| d == f),
            "{f} not decoded: {decoded:?}"
        );
    }

    // Five tmpfs archives, as CRIU wrote for runc-busybox: /dev, /dev/shm, /sys/fs/cgroup and
    // the masked /proc/acpi and /sys/firmware.
    let archives = std::fs::read_dir(t.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("tmpfs-dev-")
        })
        .count();
    assert_eq!(archives, 5);
    // Field by field against runc+CRIU 4.2's image of the same kind of container.
    let fixture = fixture_mounts();
    let by_mp: BTreeMap<&str, &pb::MntEntry> =
        mine.iter().map(|e| (e.mountpoint.as_str(), e)).collect();
    let mut want_mps: Vec<&str> = fixture.iter().map(|e| e.mountpoint.as_str()).collect();
    want_mps.push("/data");
    want_mps.sort();
    assert_eq!(by_mp.keys().copied().collect::<Vec<_>>(), want_mps);
    for f in &fixture {
        let m = by_mp[f.mountpoint.as_str()];
        let ctx = format!("mount {}: ferry {m:?}\ncriu {f:?}", f.mountpoint);
        assert_eq!(m.fstype, f.fstype, "{ctx}");
        assert_eq!(m.flags, f.flags, "{ctx}");
        assert_eq!(m.sb_flags.unwrap_or(0), f.sb_flags.unwrap_or(0), "{ctx}");
        assert_eq!(m.options, f.options, "{ctx}");
        assert_eq!(m.source, f.source, "{ctx}");
        assert_eq!(m.ext_key, f.ext_key, "{ctx}");
        if f.fstype != 12 && f.mountpoint != "/" {
            assert_eq!(m.root, f.root, "{ctx}");
        }
    }
    let pids_ctl = {
        let e: pb::CgroupEntry = dir.read_one("cgroup.img").unwrap();
        e.controllers
            .into_iter()
            .find(|c| c.cnames == ["pids"])
            .unwrap()
    };
    assert_eq!(pids_ctl.dirs[0].dir_name, id);
    assert!(pids_ctl.dirs[0]
        .properties
        .iter()
        .any(|p| p.name == "pids.max" && p.value == "42"));

    // The container goes away; its resources come back in fresh namespaces and cgroups.
    ct.stop();
    assert!(!Path::new("/sys/fs/cgroup/pids").join(&id).exists());
    let b = NsChild::spawn(&[
        "--uts",
        "--ipc",
        "--mount",
        "--net",
        "--propagation",
        "private",
    ]);
    uts::restore_uts(b.pid, &dir, 1).unwrap();
    assert_eq!(b.run(&["-u"], &["hostname"]).trim(), "ferryct");
    ipc::restore_ipc(b.pid, &dir, 2).unwrap();
    in_namespaces(b.pid, &[Ns::Ipc], || {
        let at = ShmAttach::new(shmid, 8192, true).unwrap();
        assert_eq!(&at.bytes()[..5], b"ferry");
    })
    .unwrap();
    net::restore_net(b.pid, &dir, 4, &NetRestoreOpts::default()).unwrap();
    assert!(b
        .run(&["-n"], &["ip", "-o", "link", "show", "lo"])
        .contains(",UP"));

    let new_root = ct.bundle.path().join("restored-root");
    let nr = new_root.clone();
    in_namespaces(b.pid, &[Ns::Mnt], move || {
        std::fs::create_dir_all(&nr).unwrap();
        nix::mount::mount(
            Some("rootfs"),
            &nr,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
    })
    .unwrap();
    let mut ext: BTreeMap<String, PathBuf> = BTreeMap::from([
        ("/data".into(), data_src.clone()),
        ("/dev/null".into(), "/dev/null".into()),
    ]);
    for c in CGROUPS {
        ext.insert(
            format!("/sys/fs/cgroup/{c}"),
            PathBuf::from(format!("/sys/fs/cgroup/{c}")),
        );
    }
    let done = mounts::restore_mounts(
        b.pid,
        &dir,
        3,
        &MountRestoreOpts {
            new_root: new_root.clone(),
            external: ext,
        },
    )
    .unwrap();
    assert_eq!(done.mounted.len(), mine.len() - 1);
    let r = new_root.clone();
    in_namespaces(b.pid, &[Ns::Mnt], move || {
        assert_eq!(
            std::fs::read(r.join("data/f")).unwrap(),
            b"bound from the host"
        );
        assert_eq!(
            std::fs::symlink_metadata(r.join("dev/null"))
                .unwrap()
                .rdev(),
            libc::makedev(1, 3)
        );
        assert!(std::fs::symlink_metadata(r.join("proc/keys"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(
            std::fs::read_link(r.join("dev/ptmx")).unwrap(),
            Path::new("pts/ptmx")
        );
        let e = std::fs::write(r.join("proc/sys/kernel/hostname"), "x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "/proc/sys is read-only"
        );
    })
    .unwrap();
    done.undo().unwrap();

    let set = cg.sets[&pid];
    let st = cgroups::restore_cgroups(&dir, CgroupMode::Soft, &[(b.pid, set)]).unwrap();
    let pids_dir = Path::new("/sys/fs/cgroup/pids").join(&id);
    let max = std::fs::read_to_string(pids_dir.join("pids.max")).unwrap();
    let procs = std::fs::read_to_string(pids_dir.join("cgroup.procs")).unwrap();
    // Leave nothing behind before asserting: the task first, then its cgroups.
    drop(b);
    let mut undo = st.undo();
    for _ in 0..50 {
        if undo.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        undo = cgroups::restore::CgroupRestore {
            created: leftover(&id),
            written: vec![],
        }
        .undo();
    }
    assert_eq!(max.trim(), "42");
    assert!(!procs.trim().is_empty());
    undo.unwrap();
    assert!(!pids_dir.exists());
}

/// Cgroup directories named `id` still present (parents before children).
fn leftover(id: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for h in [
        "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "pids", "systemd", "unified",
    ] {
        let p = Path::new("/sys/fs/cgroup").join(h).join(id);
        if p.exists() {
            v.push(p);
        }
    }
    let mem: Vec<PathBuf> = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("4:memory:"))
        .map(|p| {
            Path::new("/sys/fs/cgroup/memory")
                .join(p.trim_start_matches('/'))
                .join(id)
        })
        .filter(|p| p.exists())
        .collect();
    v.extend(mem);
    v
}

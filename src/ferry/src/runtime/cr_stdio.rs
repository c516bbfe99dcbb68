//! The container init's stdio across a checkpoint: `descriptors.json`, as runc writes it.
//!
//! runc records where fds 0, 1 and 2 of the init pointed (`readlink /proc/PID/fd/N`: a path,
//! `pipe:[INO]`, `socket:[INO]`, `anon_inode:...`) as a JSON array of three strings beside the
//! images. On restore, a pipe is reconnected to the restoring caller's own fd of the same number
//! (CRIU's inherit-fd keyed by `pipe:[INO]`: the engine's `restore::Options::inherit_fds`, in
//! the container's init, whose fds 0..2 are ferry's), and a path is reopened by the engine
//! inside the container's mount namespace. A terminal container's pty slave (its master is
//! outside, with the console socket's receiver) is dumped as an external terminal; the restore
//! builds the init with a new console (master sent to `--console-socket`, as `ferry run` does)
//! and inherits its slave for the images' `tty[RDEV:DEV]`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_engine::files::inherit::InheritFd;

use super::cr_error::CrError;

/// The file runc writes beside the images.
pub const DESCRIPTORS: &str = "descriptors.json";

/// How one stdio fd comes back on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdioKind {
    /// A path inside the container (`/dev/null`, a file of the rootfs): reopened by the engine.
    Path(String),
    /// A pipe from outside: the restoring caller passes its own fd.
    Pipe(String),
    /// The container's terminal.
    Terminal(String),
    /// Anything else (sockets, anonymous inodes).
    Other(String),
}

/// Classifies one descriptors.json entry.
pub fn classify(target: &str) -> StdioKind {
    if target.starts_with("pipe:") {
        StdioKind::Pipe(target.into())
    } else if target.starts_with("/dev/pts/") || target == "/dev/console" || target == "/dev/ptmx" {
        StdioKind::Terminal(target.into())
    } else if target.starts_with('/') {
        StdioKind::Path(target.into())
    } else {
        StdioKind::Other(target.into())
    }
}

/// The init's fds 0..2 as /proc shows them.
pub fn read_init_stdio(pid: i32) -> Result<Vec<String>, CrError> {
    (0..3)
        .map(|fd| {
            let link = format!("/proc/{pid}/fd/{fd}");
            std::fs::read_link(&link)
                .map(|t| t.to_string_lossy().into_owned())
                .map_err(CrError::io("read the container init's stdio", link))
        })
        .collect()
}

/// Refuses, before anything is frozen, stdio the restore could not bring back: a path that is
/// not the same file inside the container's mount namespace (a host file passed as stdout:
/// only pipes are reconnected to the restoring caller's fds, as runc does). Pipes come back
/// through the caller's fds, the terminal on a new console; sockets and the like are left to
/// the engine's own checks.
pub fn check_checkpointable(pid: i32, id: &str, descs: &[String]) -> Result<(), CrError> {
    for (fd, d) in descs.iter().enumerate() {
        match classify(d) {
            StdioKind::Path(p) => {
                let fd_md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"));
                let inside = std::fs::metadata(format!("/proc/{pid}/root{p}"));
                let same = match (fd_md, inside) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                };
                if !same {
                    return Err(CrError::unsupported(
                        format!("checkpoint of container {id}"),
                        format!(
                            "stdio fd {fd} of the container init is {p}, a file outside the \
                             container's mount namespace (a restore reconnects only pipes to \
                             the caller's fds, as runc does)"
                        ),
                    ));
                }
            }
            StdioKind::Pipe(_) | StdioKind::Terminal(_) | StdioKind::Other(_) => {}
        }
    }
    Ok(())
}

/// Whether the init's stdio is the container's terminal: the pty slave whose master the
/// console socket's receiver holds, outside the tree (dumped as an external terminal, which
/// is the engine's `shell_job` handling of ttys).
pub fn has_terminal(descs: &[String]) -> bool {
    descs
        .iter()
        .any(|d| matches!(classify(d), StdioKind::Terminal(_)))
}

/// The init's stdio as it was when the container was made (or restored), kept in ferry's state
/// directory of the container, as runc keeps `external_descriptors` in its state: read at
/// checkpoint time instead, the init could be caught mid-redirection (a shell's `>&2` saves fd
/// 1 on a high fd for a moment) and descriptors.json would name the wrong pipes.
pub const RECORDED: &str = "ferry-stdio.json";

/// Keeps `descs` beside the container's state (best effort: a checkpoint falls back to /proc).
pub fn record(container_dir: &Path, descs: &[String]) {
    if let Err(e) = write_as(&container_dir.join(RECORDED), descs) {
        tracing::warn!(error = %e, "the init's stdio is not recorded; checkpoint reads /proc");
    }
}

/// What [`record`] kept, if anything.
pub fn recorded(container_dir: &Path) -> Option<Vec<String>> {
    let text = std::fs::read(container_dir.join(RECORDED)).ok()?;
    serde_json::from_slice::<Vec<String>>(&text)
        .ok()
        .filter(|d| d.len() == 3)
}

/// The stdio a restored init has: for each fd that was a pipe in `old` (descriptors.json), the
/// caller's pipe ferry passed on (ferry's own fd N); the init's own fd otherwise (a path, the
/// new console).
pub fn restored_stdio(init: i32, old: &[String]) -> Vec<String> {
    let link = |p: String| {
        std::fs::read_link(p)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    (0..3)
        .map(|fd| match old.get(fd).map(|d| classify(d)) {
            Some(StdioKind::Pipe(_)) => link(format!("/proc/self/fd/{fd}")),
            _ => link(format!("/proc/{init}/fd/{fd}")),
        })
        .collect()
}

/// Writes descriptors.json into `dir`.
pub fn write(dir: &Path, descs: &[String]) -> Result<(), CrError> {
    write_as(&dir.join(DESCRIPTORS), descs)
}

fn write_as(path: &Path, descs: &[String]) -> Result<(), CrError> {
    let path = path.to_path_buf();
    let text = serde_json::to_vec(descs).map_err(|source| CrError::Json {
        stage: format!("encode {}", path.display()),
        source,
    })?;
    std::fs::write(&path, text).map_err(CrError::io("write", path))
}

/// Reads descriptors.json from `dir`.
pub fn read(dir: &Path) -> Result<Vec<String>, CrError> {
    let path = dir.join(DESCRIPTORS);
    let text = std::fs::read(&path).map_err(CrError::io("read", &path))?;
    serde_json::from_slice(&text).map_err(|source| CrError::Json {
        stage: format!("parse {}", path.display()),
        source,
    })
}

/// How each stdio entry comes back on restore: the inherited fds for the pipes (runc's rule:
/// the restoring caller's own fd N replaces the init's pipe on fd N, CRIU's
/// `--inherit-fd fd[N]:pipe:[INO]`), nothing for paths (reopened by the engine). `offered` are
/// the inherit keys the images hold ([`ferry_engine::files::inherit::keys_in`]); `fd_open`
/// says whether ferry's own fd N is open. Checked before anything is created:
/// - a pipe the images do not hold would be a new pipe nobody reads: refused (bad images);
/// - a pipe with ferry's fd N closed has nothing to be reconnected to: refused, naming N;
/// - a terminal is restored onto the new console libcontainer makes for the init (its master
///   sent to `--console-socket`, its slave on the init's fds 0..2): the images' `tty[RDEV:DEV]`
///   of that terminal is inherited from the init's fd N; without `--console-socket`, refused;
/// - anything else (a socket, an anonymous inode) cannot be reconnected.
pub fn inherit_list(
    descs: &[String],
    offered: &BTreeSet<String>,
    console_socket: bool,
    fd_open: impl Fn(i32) -> bool,
) -> Result<Vec<InheritFd>, CrError> {
    let mut out = Vec::new();
    for (fd, d) in descs.iter().enumerate() {
        let fd = fd as i32;
        match classify(d) {
            StdioKind::Path(_) => {}
            StdioKind::Pipe(key) => {
                if !offered.contains(&key) {
                    return Err(CrError::Refused {
                        stage: "restore".into(),
                        message: format!(
                            "{DESCRIPTORS} says stdio fd {fd} was {key}, but the images hold \
                             no such pipe: its output would go nowhere"
                        ),
                    });
                }
                if !fd_open(fd) {
                    return Err(CrError::Refused {
                        stage: "restore".into(),
                        message: format!(
                            "stdio fd {fd} of the container was {key}: it is reconnected to \
                             ferry's own fd {fd} (as runc does), which is closed"
                        ),
                    });
                }
                out.push(InheritFd { fd, key });
            }
            StdioKind::Terminal(t) => {
                if !console_socket {
                    return Err(CrError::Refused {
                        stage: "restore".into(),
                        message: format!(
                            "stdio fd {fd} was the container's terminal {t}: a terminal \
                             container is restored onto a new console, which needs \
                             --console-socket"
                        ),
                    });
                }
                out.push(InheritFd {
                    fd,
                    key: tty_key(&t, offered).ok_or_else(|| CrError::Refused {
                        stage: "restore".into(),
                        message: format!(
                            "{DESCRIPTORS} says stdio fd {fd} was the terminal {t}, but the \
                             images hold no such terminal"
                        ),
                    })?,
                });
            }
            StdioKind::Other(o) => {
                return Err(CrError::unsupported(
                    "restore",
                    format!("stdio fd {fd} was {o}: only pipes and paths are reconnected"),
                ));
            }
        }
    }
    Ok(out)
}

/// The inherit key (`tty[RDEV:DEV]`) of terminal `path` among the images' keys: the one of
/// the same pty index, or the only terminal the images hold.
fn tty_key(path: &str, offered: &BTreeSet<String>) -> Option<String> {
    let ttys: Vec<&String> = offered.iter().filter(|k| k.starts_with("tty[")).collect();
    let by_index = path
        .strip_prefix("/dev/pts/")
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(|n| {
            let rdev = libc::makedev(136 + n / 256, n % 256) as u32;
            let prefix = format!("tty[{rdev:x}:");
            ttys.iter().find(|k| k.starts_with(&prefix))
        });
    match (by_index, &ttys[..]) {
        (Some(k), _) => Some(k.to_string()),
        (None, [only]) => Some(only.to_string()),
        _ => None,
    }
}

/// Whether fd `fd` of this process is open.
pub fn own_fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD on a number only reads the fd table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_runc_entries() {
        assert_eq!(classify("/dev/null"), StdioKind::Path("/dev/null".into()));
        assert_eq!(classify("pipe:[123]"), StdioKind::Pipe("pipe:[123]".into()));
        assert_eq!(
            classify("/dev/pts/0"),
            StdioKind::Terminal("/dev/pts/0".into())
        );
        assert_eq!(
            classify("socket:[9]"),
            StdioKind::Other("socket:[9]".into())
        );
    }

    fn offered(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn pipes_become_inherited_fds_of_the_same_number() {
        let descs: Vec<String> = ["pipe:[5]", "pipe:[6]", "/dev/null"]
            .map(String::from)
            .to_vec();
        let l = inherit_list(&descs, &offered(&["pipe:[5]", "pipe:[6]"]), false, |_| true).unwrap();
        assert_eq!(
            l,
            vec![
                InheritFd {
                    fd: 0,
                    key: "pipe:[5]".into()
                },
                InheritFd {
                    fd: 1,
                    key: "pipe:[6]".into()
                }
            ]
        );
        // The same pipe on fds 1 and 2 (2>&1) is inherited twice, once per fd.
        let descs: Vec<String> = ["/dev/null", "pipe:[6]", "pipe:[6]"]
            .map(String::from)
            .to_vec();
        let l = inherit_list(&descs, &offered(&["pipe:[6]"]), false, |_| true).unwrap();
        assert_eq!(l.iter().map(|i| i.fd).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_pipe_that_would_lose_output_is_refused_by_name() {
        let descs: Vec<String> = ["/dev/null", "pipe:[6]", "/dev/null"]
            .map(String::from)
            .to_vec();
        let e = inherit_list(&descs, &offered(&["pipe:[7]"]), false, |_| true).unwrap_err();
        assert!(e.to_string().contains("pipe:[6]"), "{e}");
        assert!(e.to_string().contains("no such pipe"), "{e}");
        let e = inherit_list(&descs, &offered(&["pipe:[6]"]), false, |fd| fd != 1).unwrap_err();
        assert!(e.to_string().contains("ferry's own fd 1"), "{e}");
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[test]
    fn round_trips_the_fixture_shape() {
        let d = tempfile::tempdir().unwrap();
        let descs = vec!["/dev/null".to_string(); 3];
        write(d.path(), &descs).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join(DESCRIPTORS)).unwrap(),
            r#"["/dev/null","/dev/null","/dev/null"]"#
        );
        assert_eq!(read(d.path()).unwrap(), descs);
        assert!(inherit_list(&descs, &BTreeSet::new(), false, |_| true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_terminal_is_inherited_from_the_new_console_by_its_key() {
        let descs: Vec<String> = ["/dev/pts/1"; 3].map(String::from).to_vec();
        let keys = offered(&["pipe:[3]", "tty[8800:18]", "tty[8801:18]"]);
        let l = inherit_list(&descs, &keys, true, |_| true).unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|i| i.key == "tty[8801:18]"), "{l:?}");
        // Without --console-socket there is nowhere to put the console: refused by name.
        let e = inherit_list(&descs, &keys, false, |_| true).unwrap_err();
        assert!(
            e.to_string()
                .contains("fd 0 was the container's terminal /dev/pts/1"),
            "{e}"
        );
        assert!(e.to_string().contains("--console-socket"), "{e}");
        // One terminal in the images is that terminal, whatever its index was.
        let l = inherit_list(&descs, &offered(&["tty[8800:5]"]), true, |_| true).unwrap();
        assert_eq!(l[0].key, "tty[8800:5]");
        let e = inherit_list(&descs, &offered(&["pipe:[3]"]), true, |_| true).unwrap_err();
        assert!(e.to_string().contains("no such terminal"), "{e}");
    }

    #[test]
    fn sockets_are_refused_by_name() {
        let e =
            inherit_list(&["socket:[9]".into()], &BTreeSet::new(), false, |_| true).unwrap_err();
        assert!(e.to_string().contains("fd 0 was socket:[9]"), "{e}");
        assert!(e.to_string().contains("not supported yet"), "{e}");
    }
}

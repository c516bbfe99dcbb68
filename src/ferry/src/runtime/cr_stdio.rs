//! The container init's stdio across a checkpoint: `descriptors.json`, as runc writes it.
//!
//! runc records where fds 0, 1 and 2 of the init pointed (`readlink /proc/PID/fd/N`: a path,
//! `pipe:[INO]`, `socket:[INO]`, `anon_inode:...`) as a JSON array of three strings beside the
//! images. On restore, a pipe is reconnected to the restoring caller's own fd of the same number
//! (CRIU's inherit-fd keyed by `pipe:[INO]`: the engine's `restore::Options::inherit_fds`, in
//! the container's init, whose fds 0..2 are ferry's), and a path is reopened by the engine
//! inside the container's mount namespace. A terminal would come through `--console-socket`
//! (not supported yet: refused at checkpoint, before anything is frozen, and at restore).

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
/// only pipes are reconnected to the restoring caller's fds, as runc does), and the
/// container's terminal (restore onto a new console is not supported yet). Pipes come back
/// through the caller's fds; sockets and the like are left to the engine's own checks.
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
            StdioKind::Terminal(t) => {
                return Err(CrError::unsupported(
                    format!("checkpoint of container {id}"),
                    format!(
                        "stdio fd {fd} of the container init is its terminal {t}: restoring a \
                         terminal container onto a new console from --console-socket"
                    ),
                ));
            }
            StdioKind::Pipe(_) | StdioKind::Other(_) => {}
        }
    }
    Ok(())
}

/// Writes descriptors.json into `dir`.
pub fn write(dir: &Path, descs: &[String]) -> Result<(), CrError> {
    let path = dir.join(DESCRIPTORS);
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
/// - a terminal needs a new console from `--console-socket`, not supported yet;
/// - anything else (a socket, an anonymous inode) cannot be reconnected.
pub fn inherit_list(
    descs: &[String],
    offered: &BTreeSet<String>,
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
                return Err(CrError::unsupported(
                    "restore",
                    format!(
                        "stdio fd {fd} was the container's terminal {t}: restoring a terminal \
                         container onto a new console from --console-socket"
                    ),
                ));
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
        let l = inherit_list(&descs, &offered(&["pipe:[5]", "pipe:[6]"]), |_| true).unwrap();
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
        let l = inherit_list(&descs, &offered(&["pipe:[6]"]), |_| true).unwrap();
        assert_eq!(l.iter().map(|i| i.fd).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_pipe_that_would_lose_output_is_refused_by_name() {
        let descs: Vec<String> = ["/dev/null", "pipe:[6]", "/dev/null"]
            .map(String::from)
            .to_vec();
        let e = inherit_list(&descs, &offered(&["pipe:[7]"]), |_| true).unwrap_err();
        assert!(e.to_string().contains("pipe:[6]"), "{e}");
        assert!(e.to_string().contains("no such pipe"), "{e}");
        let e = inherit_list(&descs, &offered(&["pipe:[6]"]), |fd| fd != 1).unwrap_err();
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
        assert!(inherit_list(&descs, &BTreeSet::new(), |_| true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn terminals_and_sockets_are_refused_by_name() {
        let e = inherit_list(
            &["/dev/null".into(), "/dev/pts/3".into()],
            &BTreeSet::new(),
            |_| true,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("fd 1 was the container's terminal /dev/pts/3"),
            "{e}"
        );
        assert!(e.to_string().contains("--console-socket"), "{e}");
        assert!(e.to_string().contains("not supported yet"), "{e}");
        let e = inherit_list(&["socket:[9]".into()], &BTreeSet::new(), |_| true).unwrap_err();
        assert!(e.to_string().contains("fd 0 was socket:[9]"), "{e}");
    }
}

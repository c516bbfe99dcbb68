//! The container init's stdio across a checkpoint: `descriptors.json`, as runc writes it.
//!
//! runc records where fds 0, 1 and 2 of the init pointed (`readlink /proc/PID/fd/N`: a path,
//! `pipe:[INO]`, `socket:[INO]`, `anon_inode:...`) as a JSON array of three strings beside the
//! images. On restore, a pipe is reconnected to the restoring caller's own fd of the same number
//! (CRIU's inherit-fd keyed by `pipe:[INO]`), a terminal comes through `--console-socket`, and a
//! path is reopened by the engine inside the container's mount namespace.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
/// not the same file inside the container's mount namespace (a host file passed as stdout).
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
                             container's mount namespace (needs the engine's inherit-fd)"
                        ),
                    ));
                }
            }
            StdioKind::Pipe(_) | StdioKind::Terminal(_) | StdioKind::Other(_) => {}
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

/// Checks, before anything is created, that every stdio entry can be reconnected by this build.
pub fn check_restorable(descs: &[String], console_socket: bool) -> Result<(), CrError> {
    for (fd, d) in descs.iter().enumerate() {
        match classify(d) {
            StdioKind::Path(_) => {}
            StdioKind::Pipe(p) => {
                return Err(inherit_fd_missing(fd, &p));
            }
            StdioKind::Terminal(t) => {
                let how = if console_socket {
                    "the terminal through --console-socket"
                } else {
                    "a terminal without --console-socket"
                };
                return Err(CrError::unsupported(
                    "restore",
                    format!(
                        "stdio fd {fd} was {t}: {how} (needs the engine's tty restore onto a \
                         new console)"
                    ),
                ));
            }
            StdioKind::Other(o) => {
                return Err(CrError::unsupported(
                    "restore",
                    format!("stdio fd {fd} was {o}"),
                ));
            }
        }
    }
    Ok(())
}

/// runc passes its own fd N for a `pipe:[INO]` entry (CRIU's `--inherit-fd fd[N]:pipe:[INO]`).
/// The engine has no inherit-fd input yet (`ferry_engine::restore::Options::inherit_fds`).
fn inherit_fd_missing(fd: usize, key: &str) -> CrError {
    CrError::unsupported(
        "restore",
        format!(
            "stdio fd {fd} was {key}: reconnecting it to the caller's fd {fd} needs the \
             engine's inherit-fd (restore::Options::inherit_fds)"
        ),
    )
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
        check_restorable(&descs, false).unwrap();
    }

    #[test]
    fn pipes_and_terminals_are_refused_by_name() {
        let e = check_restorable(&["pipe:[7]".into()], false).unwrap_err();
        assert!(e.to_string().contains("pipe:[7]"), "{e}");
        assert!(e.to_string().contains("not supported yet"), "{e}");
        let e = check_restorable(&["/dev/null".into(), "/dev/pts/3".into()], true).unwrap_err();
        assert!(e.to_string().contains("fd 1 was /dev/pts/3"), "{e}");
    }
}

//! `criu swrk FD`: CRIU's RPC service worker, the way go-criu (podman, runc) talks to CRIU.
//!
//! The caller makes a `SOCK_SEQPACKET` socketpair, execs `criu swrk N` with one end inherited
//! as fd N, and sends one `criu_req` (CRIU's rpc.proto) per packet; the worker answers each
//! with one `criu_resp` packet, and exits after a request unless it set `keep_open`. Packet
//! boundaries frame the messages (no length prefix): the size of the next request is read with
//! `recv(MSG_PEEK | MSG_TRUNC)`.
//!
//! ferry answers what its callers ask before they run the runtime: `VERSION` (podman's
//! "checkpoint/restore requires at least CRIU N" gate), `FEATURE_CHECK` (memory tracking, lazy
//! pages, pidfd store — none of which ferry's engine implements, so each asked feature is
//! reported absent) and `CHECK` (the kernel features the engine needs). Dump, restore and the
//! other RPC verbs are refused with a `criu_resp` that says so: containers are checkpointed by
//! `ferry checkpoint`/`restore` (the runtime), which run the engine in-process.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, MsgFlags, SockType};
use prost::Message;

/// The CRIU release whose behaviour and image format ferry's engine follows (images are CRIU's
/// v1.1 format, checked against CRIU 4.2's). Callers compare it with the minimum they need
/// (podman 4.3: 3.11 for containers, 3.16 for pods); go-criu computes major*10000 +
/// minor*100 + sublevel, so no `gitid` is sent (it would round the minor up).
pub const CRIU_COMPAT_VERSION: (i32, i32, i32) = (4, 2, 0);

/// Largest request accepted; real requests are a few hundred bytes (the option block).
const MAX_REQUEST: usize = 1 << 20;

/// Arguments of `criu swrk`.
#[derive(Debug, clap::Args)]
pub struct SwrkArgs {
    /// Inherited fd of a connected SOCK_SEQPACKET socket to serve requests on.
    #[arg(value_name = "FD")]
    pub fd: RawFd,
}

/// Errors of the service worker itself (a bad request is answered, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SwrkError {
    /// The fd given on the command line is unusable.
    #[error("criu swrk: fd {fd} is not a usable SOCK_SEQPACKET socket: {problem}")]
    BadFd {
        /// The fd number.
        fd: RawFd,
        /// What is wrong with it.
        problem: String,
    },
    /// The peer closed the socket before sending a request.
    #[error("criu swrk: fd {fd} was closed before a request arrived")]
    NoRequest {
        /// The fd number.
        fd: RawFd,
    },
    /// A request is larger than [`MAX_REQUEST`].
    #[error("criu swrk: fd {fd}: request of {len} bytes exceeds the {MAX_REQUEST}-byte limit")]
    TooLarge {
        /// The fd number.
        fd: RawFd,
        /// Its size.
        len: usize,
    },
    /// recv/send failed.
    #[error("criu swrk: fd {fd}: {stage}: {source}")]
    Io {
        /// The fd number.
        fd: RawFd,
        /// recv or send.
        stage: &'static str,
        /// The errno.
        source: nix::Error,
    },
}

/// CRIU's `criu_req_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ReqType {
    /// No request (CRIU's type of an error reply).
    Empty = 0,
    /// Dump a tree.
    Dump = 1,
    /// Restore a tree.
    Restore = 2,
    /// `criu check`.
    Check = 3,
    /// Pre-dump memory.
    PreDump = 4,
    /// Start a page server.
    PageServer = 5,
    /// Notification (CRIU to caller).
    Notify = 6,
    /// Dump cpuinfo.
    CpuinfoDump = 7,
    /// Check cpuinfo.
    CpuinfoCheck = 8,
    /// Which optional features are present.
    FeatureCheck = 9,
    /// CRIU's version.
    Version = 10,
    /// Wait for a pid.
    WaitPid = 11,
    /// Page server as a child.
    PageServerChld = 12,
    /// Pre-dump without the freeze loop.
    SinglePreDump = 13,
}

/// CRIU's `criu_features` (optional features a caller asks about).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuFeatures {
    /// Soft-dirty memory tracking (pre-dump).
    #[prost(bool, optional, tag = "1")]
    pub mem_track: Option<bool>,
    /// userfaultfd lazy pages.
    #[prost(bool, optional, tag = "2")]
    pub lazy_pages: Option<bool>,
    /// pidfd store for pid reuse detection.
    #[prost(bool, optional, tag = "3")]
    pub pidfd_store: Option<bool>,
}

/// CRIU's `criu_req`, the fields the worker reads (`opts`, tag 2, is skipped as unknown).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuReq {
    /// What is asked.
    #[prost(enumeration = "ReqType", required, tag = "1")]
    pub r#type: i32,
    /// Ask for a notification on success.
    #[prost(bool, optional, tag = "3")]
    pub notify_success: Option<bool>,
    /// Serve further requests after this one.
    #[prost(bool, optional, tag = "4")]
    pub keep_open: Option<bool>,
    /// Features asked about (FEATURE_CHECK).
    #[prost(message, optional, tag = "5")]
    pub features: Option<CriuFeatures>,
    /// Pid (WAIT_PID).
    #[prost(uint32, optional, tag = "6")]
    pub pid: Option<u32>,
}

/// CRIU's `criu_version`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuVersion {
    /// Major.
    #[prost(int32, required, tag = "1")]
    pub major_number: i32,
    /// Minor.
    #[prost(int32, required, tag = "2")]
    pub minor_number: i32,
    /// Git id of a development build.
    #[prost(string, optional, tag = "3")]
    pub gitid: Option<String>,
    /// Sublevel.
    #[prost(int32, optional, tag = "4")]
    pub sublevel: Option<i32>,
    /// Extra.
    #[prost(int32, optional, tag = "5")]
    pub extra: Option<i32>,
    /// Name of the implementation/release.
    #[prost(string, optional, tag = "6")]
    pub name: Option<String>,
}

/// CRIU's `criu_resp`, the fields the worker sets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CriuResp {
    /// The request's type (EMPTY when the request could not be read).
    #[prost(enumeration = "ReqType", required, tag = "1")]
    pub r#type: i32,
    /// Whether the request was carried out.
    #[prost(bool, required, tag = "2")]
    pub success: bool,
    /// errno-style code of a failure.
    #[prost(int32, optional, tag = "7")]
    pub cr_errno: Option<i32>,
    /// FEATURE_CHECK's answer.
    #[prost(message, optional, tag = "8")]
    pub features: Option<CriuFeatures>,
    /// Human-readable error.
    #[prost(string, optional, tag = "9")]
    pub cr_errmsg: Option<String>,
    /// VERSION's answer.
    #[prost(message, optional, tag = "10")]
    pub version: Option<CriuVersion>,
}

impl CriuResp {
    fn failure(r#type: i32, errno: i32, msg: String) -> Self {
        CriuResp {
            r#type,
            success: false,
            cr_errno: Some(errno),
            features: None,
            cr_errmsg: Some(msg),
            version: None,
        }
    }

    fn ok(r#type: ReqType) -> Self {
        CriuResp {
            r#type: r#type as i32,
            success: true,
            cr_errno: None,
            features: None,
            cr_errmsg: None,
            version: None,
        }
    }
}

/// The answer to one request's bytes; `check` probes the kernel (injected for unit tests).
pub fn answer(bytes: &[u8], check: impl FnOnce() -> Vec<super::check::Feature>) -> CriuResp {
    let req = match CriuReq::decode(bytes) {
        Ok(r) => r,
        Err(e) => {
            return CriuResp::failure(
                ReqType::Empty as i32,
                libc::EINVAL,
                format!(
                    "ferry criu swrk: cannot decode criu_req ({} bytes): {e}",
                    bytes.len()
                ),
            )
        }
    };
    match ReqType::try_from(req.r#type) {
        Ok(ReqType::Version) => CriuResp {
            version: Some(CriuVersion {
                major_number: CRIU_COMPAT_VERSION.0,
                minor_number: CRIU_COMPAT_VERSION.1,
                gitid: None,
                sublevel: Some(CRIU_COMPAT_VERSION.2),
                extra: None,
                name: Some(format!("ferry {}", env!("CARGO_PKG_VERSION"))),
            }),
            ..CriuResp::ok(ReqType::Version)
        },
        Ok(ReqType::FeatureCheck) => {
            // Answer exactly the features asked about: none is implemented by the engine.
            let asked = req.features.unwrap_or_default();
            CriuResp {
                features: Some(CriuFeatures {
                    mem_track: asked.mem_track.map(|_| false),
                    lazy_pages: asked.lazy_pages.map(|_| false),
                    pidfd_store: asked.pidfd_store.map(|_| false),
                }),
                ..CriuResp::ok(ReqType::FeatureCheck)
            }
        }
        Ok(ReqType::Check) => {
            let missing: Vec<String> = check()
                .into_iter()
                .filter(|f| f.required)
                .filter_map(|f| f.result.err().map(|e| format!("{}: {e}", f.name)))
                .collect();
            if missing.is_empty() {
                CriuResp::ok(ReqType::Check)
            } else {
                CriuResp::failure(
                    ReqType::Check as i32,
                    libc::ENOSYS,
                    format!("ferry criu check: missing {}", missing.join("; ")),
                )
            }
        }
        Ok(other) => CriuResp::failure(
            req.r#type,
            libc::EOPNOTSUPP,
            format!(
                "ferry criu swrk: {other:?} requests are not supported over RPC (only VERSION, \
                 FEATURE_CHECK and CHECK); checkpoint and restore containers with `ferry \
                 checkpoint`/`ferry restore`, process trees with `ferry criu dump`/`restore`"
            ),
        ),
        Err(_) => CriuResp::failure(
            req.r#type,
            libc::EINVAL,
            format!("ferry criu swrk: unknown criu_req type {}", req.r#type),
        ),
    }
}

/// Reads one packet; `None` when the peer closed the socket.
fn recv_packet(sk: BorrowedFd<'_>) -> Result<Option<Vec<u8>>, SwrkError> {
    let fd = sk.as_raw_fd();
    let io = |stage| move |source| SwrkError::Io { fd, stage, source };
    // MSG_TRUNC with MSG_PEEK returns the packet's real length without consuming it.
    let len = loop {
        match socket::recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Err(nix::Error::EINTR) => continue,
            r => break r.map_err(io("peek at the next request"))?,
        }
    };
    if len > MAX_REQUEST {
        return Err(SwrkError::TooLarge { fd, len });
    }
    let mut buf = vec![0u8; len.max(1)];
    let n = loop {
        match socket::recv(fd, &mut buf, MsgFlags::empty()) {
            Err(nix::Error::EINTR) => continue,
            r => break r.map_err(io("receive the request"))?,
        }
    };
    if n == 0 && len == 0 {
        // A zero-length read on SEQPACKET is the peer's close (an empty packet cannot be told
        // apart, and an empty criu_req lacks its required type anyway).
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some(buf))
}

fn send_packet(sk: BorrowedFd<'_>, resp: &CriuResp) -> Result<(), SwrkError> {
    let fd = sk.as_raw_fd();
    let bytes = resp.encode_to_vec();
    loop {
        match socket::send(fd, &bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(nix::Error::EINTR) => continue,
            r => {
                r.map_err(|source| SwrkError::Io {
                    fd,
                    stage: "send the response",
                    source,
                })?;
                return Ok(());
            }
        }
    }
}

/// Serves requests on `sk` until one without `keep_open` was answered or the peer closed.
pub fn serve(
    sk: BorrowedFd<'_>,
    mut check: impl FnMut() -> Vec<super::check::Feature>,
) -> Result<(), SwrkError> {
    let mut served = 0usize;
    loop {
        let Some(bytes) = recv_packet(sk)? else {
            return if served == 0 {
                Err(SwrkError::NoRequest { fd: sk.as_raw_fd() })
            } else {
                Ok(())
            };
        };
        let keep_open = CriuReq::decode(bytes.as_slice())
            .ok()
            .and_then(|r| r.keep_open)
            .unwrap_or(false);
        send_packet(sk, &answer(&bytes, &mut check))?;
        served += 1;
        if !keep_open {
            return Ok(());
        }
    }
}

/// Takes the inherited fd after checking it is a SEQPACKET socket.
fn take_socket(fd: RawFd) -> Result<OwnedFd, SwrkError> {
    let bad = |problem: String| SwrkError::BadFd { fd, problem };
    if fd < 0 {
        return Err(bad("negative fd".into()));
    }
    // SAFETY: F_GETFD only queries the fd table; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: the fd is open (checked above) and named on our command line for us to serve:
    // nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match socket::getsockopt(&owned, socket::sockopt::SockType) {
        Ok(SockType::SeqPacket) => Ok(owned),
        Ok(other) => Err(bad(format!("socket type {other:?}"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Runs `criu swrk FD`; returns the exit code.
pub fn run(args: &SwrkArgs) -> anyhow::Result<i32> {
    let sk = take_socket(args.fd)?;
    serve(sk.as_fd(), super::check::probe)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::check::Feature;

    fn no_check() -> Vec<Feature> {
        panic!("CHECK not expected")
    }

    fn req(t: ReqType) -> CriuReq {
        CriuReq {
            r#type: t as i32,
            notify_success: None,
            keep_open: None,
            features: None,
            pid: None,
        }
    }

    #[test]
    fn version_is_criu_4_2_named_ferry_without_gitid() {
        let r = answer(&req(ReqType::Version).encode_to_vec(), no_check);
        assert!(r.success);
        assert_eq!(r.r#type, ReqType::Version as i32);
        let v = r.version.unwrap();
        assert_eq!(
            (v.major_number, v.minor_number, v.sublevel),
            (4, 2, Some(0))
        );
        assert_eq!(v.gitid, None);
        assert!(v.name.unwrap().starts_with("ferry "));
    }

    #[test]
    fn feature_check_answers_only_what_was_asked_and_all_absent() {
        let mut q = req(ReqType::FeatureCheck);
        q.features = Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: None,
            pidfd_store: Some(true),
        });
        let r = answer(&q.encode_to_vec(), no_check);
        assert!(r.success);
        let f = r.features.unwrap();
        assert_eq!(f.mem_track, Some(false));
        assert_eq!(f.lazy_pages, None);
        assert_eq!(f.pidfd_store, Some(false));
    }

    #[test]
    fn check_fails_naming_a_missing_required_feature() {
        let probe = || {
            vec![
                Feature {
                    name: "ptrace seize/interrupt",
                    required: true,
                    result: Ok(()),
                },
                Feature {
                    name: "clone3 set_tid",
                    required: true,
                    result: Err("ENOSYS".into()),
                },
                Feature {
                    name: "time namespaces",
                    required: false,
                    result: Err("ENOENT".into()),
                },
            ]
        };
        let r = answer(&req(ReqType::Check).encode_to_vec(), probe);
        assert!(!r.success);
        let msg = r.cr_errmsg.unwrap();
        assert!(msg.contains("clone3 set_tid: ENOSYS"), "{msg}");
        assert!(!msg.contains("time namespaces"), "{msg}");
    }

    #[test]
    fn dump_over_rpc_is_refused_by_name_with_eopnotsupp() {
        // A DUMP request with an option block (tag 2) the worker skips.
        let mut bytes = req(ReqType::Dump).encode_to_vec();
        bytes.extend_from_slice(&[0x12, 0x02, 0x10, 0x07]); // opts { pid: 7 }
        let r = answer(&bytes, no_check);
        assert!(!r.success);
        assert_eq!(r.r#type, ReqType::Dump as i32);
        assert_eq!(r.cr_errno, Some(libc::EOPNOTSUPP));
        let msg = r.cr_errmsg.unwrap();
        assert!(msg.contains("Dump requests are not supported"), "{msg}");
        assert!(msg.contains("ferry checkpoint"), "{msg}");
    }

    #[test]
    fn garbage_and_unknown_types_get_an_error_reply_not_a_panic() {
        let r = answer(&[0xff, 0xff, 0xff], no_check);
        assert!(!r.success);
        assert_eq!(r.r#type, ReqType::Empty as i32);
        assert!(r.cr_errmsg.unwrap().contains("cannot decode criu_req"));
        let r = answer(&[0x08, 0x63], no_check); // type = 99
        assert!(!r.success);
        assert!(r.cr_errmsg.unwrap().contains("unknown criu_req type 99"));
        // A message without its required type.
        let r = answer(&[], no_check);
        assert!(!r.success);
    }

    fn seqpacket() -> (OwnedFd, OwnedFd) {
        socket::socketpair(
            socket::AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn serve_answers_keep_open_requests_then_stops_after_one_without() {
        let (cln, srv) = seqpacket();
        let t = std::thread::spawn(move || serve(srv.as_fd(), Vec::new));
        let mut q = req(ReqType::Version);
        q.keep_open = Some(true);
        for q in [q, req(ReqType::Check)] {
            socket::send(cln.as_raw_fd(), &q.encode_to_vec(), MsgFlags::empty()).unwrap();
            let mut buf = [0u8; 8192];
            let n = socket::recv(cln.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
            let r = CriuResp::decode(&buf[..n]).unwrap();
            assert!(r.success, "{r:?}");
            assert_eq!(r.r#type, q.r#type);
        }
        t.join().unwrap().unwrap();
    }

    #[test]
    fn serve_reports_a_peer_that_closed_without_asking() {
        let (cln, srv) = seqpacket();
        drop(cln);
        let e = serve(srv.as_fd(), Vec::new).unwrap_err();
        assert!(e.to_string().contains("closed before a request"), "{e}");
    }

    #[test]
    fn take_socket_refuses_a_non_seqpacket_fd() {
        let (a, _b) = socket::socketpair(
            socket::AddressFamily::Unix,
            SockType::Stream,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        // take_socket owns (and closes) the fd it is given: hand it a dup.
        let raw = nix::unistd::dup(a.as_raw_fd()).unwrap();
        let e = take_socket(raw).unwrap_err().to_string();
        assert!(e.contains("not a usable SOCK_SEQPACKET socket"), "{e}");
        assert!(e.contains("Stream"), "{e}");
    }
}

//! A minimal nftables client over nfnetlink: the network lock's table made and removed in one
//! transaction each, without running `nft`.
//!
//! nf_tables takes changes as a batch: `NFNL_MSG_BATCH_BEGIN`, the messages (type
//! `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`, an `nfgenmsg` header, then attributes), then
//! `NFNL_MSG_BATCH_END`; the kernel applies all of it or none. Every message asks for an ACK,
//! so a failure comes back as the errno of the message that failed. Integer attributes are
//! big-endian; the compared mark is in host order, as the register holds it. Like rtnetlink, a
//! `NETLINK_NETFILTER` socket works on the network namespace it was created in (and keeps it
//! alive while open). Removing a table is applied at its ACK; closing the socket afterwards
//! waits for the kernel to free the table after an RCU grace period.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::netlink::{messages, open_socket, put_attr, put_nested};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NFPROTO_INET: u8 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_MARK: u32 = 3;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;

/// One base chain of the lock table: name and netfilter hook.
const LOCK_CHAINS: [(&str, u32); 2] = [("input", NF_INET_LOCAL_IN), ("output", NF_INET_LOCAL_OUT)];

/// An nfnetlink socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Nft {
    fd: OwnedFd,
    seq: u32,
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One expression of a rule: its name and its attributes.
fn put_expr(b: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    put_nested(b, NFTA_LIST_ELEM, |b| {
        put_attr(b, NFTA_EXPR_NAME, &cstr(name));
        put_nested(b, NFTA_EXPR_DATA, data);
    });
}

impl Nft {
    /// Opens a socket in the current thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let fd = open_socket(libc::NETLINK_NETFILTER)?;
        Ok(Self { fd, seq: 0 })
    }

    /// Creates table `inet NAME` (refused if it exists) whose input and output chains, at the
    /// first priority, drop every packet except those carrying `mark`: the ruleset of
    /// `hooks/network-lock.nft`, in one transaction.
    pub fn lock_table(&mut self, name: &str, mark: u32) -> io::Result<()> {
        let create = NLM_F_CREATE | NLM_F_EXCL;
        let mut msgs = Vec::with_capacity(1 + 2 * LOCK_CHAINS.len());
        let mut t = Vec::new();
        put_attr(&mut t, NFTA_TABLE_NAME, &cstr(name));
        msgs.push((NFT_MSG_NEWTABLE, create, t));
        for (chain, hook) in LOCK_CHAINS {
            let mut c = Vec::new();
            put_attr(&mut c, NFTA_CHAIN_TABLE, &cstr(name));
            put_attr(&mut c, NFTA_CHAIN_NAME, &cstr(chain));
            put_nested(&mut c, NFTA_CHAIN_HOOK, |h| {
                put_attr(h, NFTA_HOOK_HOOKNUM, &be32(hook));
                put_attr(h, NFTA_HOOK_PRIORITY, &be32(i32::MIN as u32));
            });
            put_attr(&mut c, NFTA_CHAIN_POLICY, &be32(NF_DROP));
            put_attr(&mut c, NFTA_CHAIN_TYPE, &cstr("filter"));
            msgs.push((NFT_MSG_NEWCHAIN, create, c));
        }
        for (chain, _) in LOCK_CHAINS {
            // meta mark == MARK accept
            let mut r = Vec::new();
            put_attr(&mut r, NFTA_RULE_TABLE, &cstr(name));
            put_attr(&mut r, NFTA_RULE_CHAIN, &cstr(chain));
            put_nested(&mut r, NFTA_RULE_EXPRESSIONS, |e| {
                put_expr(e, "meta", |d| {
                    put_attr(d, NFTA_META_KEY, &be32(NFT_META_MARK));
                    put_attr(d, NFTA_META_DREG, &be32(NFT_REG_1));
                });
                put_expr(e, "cmp", |d| {
                    put_attr(d, NFTA_CMP_SREG, &be32(NFT_REG_1));
                    put_attr(d, NFTA_CMP_OP, &be32(NFT_CMP_EQ));
                    put_nested(d, NFTA_CMP_DATA, |v| {
                        put_attr(v, NFTA_DATA_VALUE, &mark.to_ne_bytes())
                    });
                });
                put_expr(e, "immediate", |d| {
                    put_attr(d, NFTA_IMMEDIATE_DREG, &be32(NFT_REG_VERDICT));
                    put_nested(d, NFTA_IMMEDIATE_DATA, |v| {
                        put_nested(v, NFTA_DATA_VERDICT, |v| {
                            put_attr(v, NFTA_VERDICT_CODE, &be32(NF_ACCEPT))
                        });
                    });
                });
            });
            msgs.push((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, r));
        }
        self.batch(&msgs)
    }

    /// Deletes table `inet NAME` with everything in it.
    pub fn delete_table(&mut self, name: &str) -> io::Result<()> {
        let mut t = Vec::new();
        put_attr(&mut t, NFTA_TABLE_NAME, &cstr(name));
        self.batch(&[(NFT_MSG_DELTABLE, 0, t)])
    }

    fn push_msg(
        &mut self,
        out: &mut Vec<u8>,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: &[u8],
    ) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (big-endian).
        out.push(family);
        out.push(0);
        out.extend_from_slice(&res_id.to_be_bytes());
        out.extend_from_slice(attrs);
        self.seq
    }

    /// Sends `msgs` (type, flags, attributes) as one transaction and waits for every ACK;
    /// the first error the kernel reports is returned.
    fn batch(&mut self, msgs: &[(u16, u16, Vec<u8>)]) -> io::Result<()> {
        let mut b = Vec::new();
        self.push_msg(
            &mut b,
            NFNL_MSG_BATCH_BEGIN,
            0,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let first = self.seq.wrapping_add(1);
        let mut last = first;
        for (ty, flags, attrs) in msgs {
            let ty = (NFNL_SUBSYS_NFTABLES << 8) | ty;
            last = self.push_msg(&mut b, ty, flags | NLM_F_ACK, NFPROTO_INET, 0, attrs);
        }
        self.push_msg(&mut b, NFNL_MSG_BATCH_END, 0, 0, NFNL_SUBSYS_NFTABLES, &[]);
        // SAFETY: sending `b.len()` initialised bytes to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut acked = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        let mut failed: Option<io::Error> = None;
        while acked < msgs.len() {
            // After an error the rest of the answers are already queued: drain without waiting.
            let flags = if failed.is_some() {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            // SAFETY: receiving into a live buffer of `buf.len()` bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return Err(failed.unwrap_or(e));
            }
            for m in messages(&buf[..n as usize]) {
                let (ty, seq, payload) = match m {
                    Ok(m) => m,
                    Err(e) => return Err(failed.unwrap_or(e)),
                };
                if ty == NLMSG_ERROR && (first..=last).contains(&seq) {
                    acked += 1;
                    let errno = payload
                        .get(..4)
                        .map_or(0, |e| i32::from_ne_bytes(e.try_into().expect("4 bytes")));
                    if errno != 0 && failed.is_none() {
                        failed = Some(io::Error::from_raw_os_error(-errno));
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

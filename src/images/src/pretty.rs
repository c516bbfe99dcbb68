//! The value conversions crit applies when printing (`--pretty`) and parsing image JSON: flag
//! names, device numbers, IP addresses, value tables, base64 and quoted-printable bytes.

use base64::Engine;

type FlagTable = &'static [(&'static str, u64)];

const MMAP_PROT: FlagTable = &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];
const MMAP_FLAGS: FlagTable = &[
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_DROPPABLE", 0x08),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x0100),
];
const MMAP_STATUS: FlagTable = &[
    ("VMA_AREA_NONE", 0),
    ("VMA_AREA_REGULAR", 1 << 0),
    ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3),
    ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7),
    ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10),
    ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13),
    ("VMA_AREA_MEMFD", 1 << 14),
    ("VMA_AREA_SHSTK", 1 << 15),
    ("VMA_AREA_UPROBES", 1 << 17),
    ("VMA_UNSUPP", 1 << 31),
];
const RFILE_FLAGS: FlagTable = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
];
const SEALS: FlagTable = &[
    ("F_SEAL_SEAL", 0x1),
    ("F_SEAL_SHRINK", 0x2),
    ("F_SEAL_GROW", 0x4),
    ("F_SEAL_WRITE", 0x8),
    ("F_SEAL_FUTURE_WRITE", 0x10),
];
const PMAP: FlagTable = &[
    ("PE_PARENT", 1 << 0),
    ("PE_LAZY", 1 << 1),
    ("PE_PRESENT", 1 << 2),
];

/// The flag table named by a field's `(criu).flags` option.
pub fn flag_table(name: &str) -> Option<FlagTable> {
    Some(match name {
        "mmap.prot" => MMAP_PROT,
        "mmap.flags" => MMAP_FLAGS,
        "mmap.status" => MMAP_STATUS,
        "rfile.flags" => RFILE_FLAGS,
        "pmap.flags" => PMAP,
        "seals.flags" => SEALS,
        _ => return None,
    })
}

/// `A | B | 0x40`: known bits by name in table order, the rest in hex; 0 is `""`.
pub fn map_flags(value: u64, table: FlagTable) -> String {
    let mut parts: Vec<String> = table
        .iter()
        .filter(|(_, b)| value & b != 0)
        .map(|(n, _)| n.to_string())
        .collect();
    let rest = value & !table.iter().fold(0, |a, (_, b)| a | b);
    if rest != 0 {
        parts.push(format!("0x{rest:x}"));
    }
    parts.join(" | ")
}

/// Inverse of [`map_flags`]; unknown parts are read as integers.
pub fn unmap_flags(s: &str, table: FlagTable) -> Option<u64> {
    if s.is_empty() {
        return Some(0);
    }
    let mut v = 0u64;
    for p in s.split('|').map(str::trim) {
        v = v.wrapping_add(match table.iter().find(|(n, _)| *n == p) {
            Some((_, b)) => *b,
            None => u64::try_from(parse_int(p)?).ok()?,
        });
    }
    Some(v)
}

/// crit's value tables (`(criu).dict`): field name -> value -> name.
pub fn dict_lookup(dict: &str, field: &str, value: i128) -> Option<&'static str> {
    dict_table(dict, field)?
        .iter()
        .find(|(v, _)| i128::from(*v) == value)
        .map(|(_, n)| *n)
}

/// Reverse of [`dict_lookup`].
pub fn dict_reverse(dict: &str, field: &str, name: &str) -> Option<u32> {
    dict_table(dict, field)?
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(v, _)| *v)
}

fn dict_table(dict: &str, field: &str) -> Option<&'static [(u32, &'static str)]> {
    Some(match (dict, field) {
        ("gen", "task_state") => &[(1, "Alive"), (2, "Dead"), (3, "Stopped"), (6, "Zombie")],
        ("sk", "family") => &[
            (1, "UNIX"),
            (2, "INET"),
            (10, "INET6"),
            (16, "NETLINK"),
            (17, "PACKET"),
        ],
        ("sk", "type") => &[
            (1, "STREAM"),
            (2, "DGRAM"),
            (3, "RAW"),
            (5, "SEQPACKET"),
            (10, "PACKET"),
        ],
        ("sk", "state") => &[
            (1, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (3, "SYN_RECV"),
            (4, "FIN_WAIT1"),
            (5, "FIN_WAIT2"),
            (6, "TIME_WAIT"),
            (7, "CLOSE"),
            (8, "CLOSE_WAIT"),
            (9, "LAST_ACK"),
            (10, "LISTEN"),
        ],
        ("sk", "proto") => &[(0, "IP"), (6, "TCP"), (17, "UDP"), (136, "UDPLITE")],
        _ => return None,
    })
}

const MINORBITS: u32 = 20;

/// `major:minor` of a device number; `old` selects glibc's user-space encoding.
pub fn format_dev(v: u64, old: bool) -> String {
    if old {
        let major = ((v >> 8) & 0xfff) | ((v >> 32) & !0xfff);
        let minor = (v & 0xff) | ((v >> 12) & !0xff);
        format!("{major}:{minor}")
    } else {
        format!("{}:{}", v >> MINORBITS, v & ((1 << MINORBITS) - 1))
    }
}

/// Inverse of [`format_dev`].
pub fn parse_dev(s: &str, old: bool) -> Option<u64> {
    let (a, b) = s.split_once(':')?;
    let major: u64 = a.trim().parse().ok()?;
    let minor: u64 = b.trim().parse().ok()?;
    Some(if old {
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    } else {
        (major << MINORBITS) | minor
    })
}

/// An address held as network-order u32 words (1 word IPv4, 4 words IPv6), printed the way
/// Python's `ipaddress` `.compressed` does.
pub fn format_ip(words: &[u32]) -> Option<String> {
    if words.len() == 1 {
        return Some(std::net::Ipv4Addr::from(words[0].swap_bytes()).to_string());
    }
    if words.len() < 4 {
        return None;
    }
    let mut h = [0u16; 8];
    for (i, w) in words[..4].iter().enumerate() {
        let v = w.swap_bytes();
        h[2 * i] = (v >> 16) as u16;
        h[2 * i + 1] = v as u16;
    }
    // Longest run (first wins) of zero groups, compressed only when longer than one group.
    let (mut best, mut best_len, mut i) = (0, 0, 0);
    while i < 8 {
        if h[i] == 0 {
            let s = i;
            while i < 8 && h[i] == 0 {
                i += 1;
            }
            if i - s > best_len {
                best = s;
                best_len = i - s;
            }
        } else {
            i += 1;
        }
    }
    let hex = |s: &[u16]| {
        s.iter()
            .map(|x| format!("{x:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best_len > 1 {
        Some(format!(
            "{}::{}",
            hex(&h[..best]),
            hex(&h[best + best_len..])
        ))
    } else {
        Some(hex(&h))
    }
}

/// Inverse of [`format_ip`]: the network-order words of an address.
pub fn parse_ip(s: &str) -> Option<Vec<u32>> {
    match s.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => Some(vec![u32::from(a).swap_bytes()]),
        std::net::IpAddr::V6(a) => {
            let v = u128::from(a);
            Some(
                (0..4)
                    .map(|i| ((v >> (96 - 32 * i)) as u32).swap_bytes())
                    .collect(),
            )
        }
    }
}

/// Python's `int(s, 0)`: optional sign, `0x`/`0o`/`0b` prefixes, underscores, no leading zeros.
pub fn parse_int(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = t.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else {
        if lower.len() > 1
            && lower.starts_with('0')
            && lower.bytes().any(|b| b != b'0' && b != b'_')
        {
            return None;
        }
        (10, lower.as_str())
    };
    let digits = digits.strip_prefix('_').unwrap_or(digits);
    if digits.is_empty() || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let v = i128::from_str_radix(&digits.replace('_', ""), radix).ok()?;
    Some(if neg { -v } else { v })
}

/// Python's `base64.encodebytes`: 76-character lines, each ending in `\n`.
pub fn b64_encode(b: &[u8]) -> String {
    let s = base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = String::with_capacity(s.len() + s.len() / 76 + 1);
    for chunk in s.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Python's `base64.decodebytes`: whitespace and newlines are ignored.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).ok()
}

/// Python's `quopri.encodestring` (binascii.b2a_qp with quotetabs=False, istext=True,
/// header=False): `=XX` for `=`, bytes above 126 and controls other than tab/CR/LF, trailing
/// blanks protected, soft line breaks keeping lines under 76 characters.
pub fn qp_encode(data: &[u8]) -> String {
    const MAXLINE: usize = 76;
    let mut out: Vec<u8> = Vec::with_capacity(data.len());
    let mut linelen = 0usize;
    let n = data.len();
    let push_hex = |out: &mut Vec<u8>, c: u8| out.extend_from_slice(format!("={c:02X}").as_bytes());
    let mut i = 0;
    while i < n {
        let c = data[i];
        let line_end_next = i + 1 == n
            || data[i + 1] == b'\n'
            || (data[i + 1] == b'\r' && data.get(i + 2) == Some(&b'\n'));
        let encode = c > 126
            || c == b'='
            || (c == b'.' && linelen == 0 && line_end_next)
            || ((c == b'\t' || c == b' ') && i + 1 == n)
            || (c < 33 && c != b'\r' && c != b'\n' && c != b'\t' && c != b' ');
        if encode {
            if linelen + 3 >= MAXLINE {
                out.extend_from_slice(b"=\n");
                linelen = 0;
            }
            push_hex(&mut out, c);
            linelen += 3;
            i += 1;
        } else if c == b'\n' || (c == b'\r' && data.get(i + 1) == Some(&b'\n')) {
            // A blank right before a line break would be lost in transit: quote it.
            if let Some(&last) = out.last() {
                if last == b' ' || last == b'\t' {
                    out.pop();
                    push_hex(&mut out, last);
                }
            }
            if c == b'\r' {
                out.extend_from_slice(b"\r\n");
                i += 2;
            } else {
                out.push(b'\n');
                i += 1;
            }
            linelen = 0;
        } else {
            if i + 1 != n && data[i + 1] != b'\n' && linelen + 1 >= MAXLINE {
                out.extend_from_slice(b"=\n");
                linelen = 0;
            }
            out.push(c);
            linelen += 1;
            i += 1;
        }
    }
    // Only ASCII is emitted above.
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `quopri.decodestring`.
pub fn qp_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hexv = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        if b[i] == b'=' {
            if b.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hexv(*c)),
                b.get(i + 2).and_then(|c| hexv(*c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        assert_eq!(map_flags(0x5, MMAP_PROT), "PROT_READ | PROT_EXEC");
        assert_eq!(
            map_flags(0x222, MMAP_FLAGS),
            "MAP_PRIVATE | MAP_ANON | 0x200"
        );
        assert_eq!(map_flags(0, PMAP), "");
        assert_eq!(
            unmap_flags("MAP_PRIVATE | MAP_ANON | 0x200", MMAP_FLAGS),
            Some(0x222)
        );
        assert_eq!(unmap_flags("", MMAP_FLAGS), Some(0));
        assert_eq!(unmap_flags("NOPE", MMAP_FLAGS), None);
    }

    #[test]
    fn dev_ip_int() {
        assert_eq!(format_dev((8 << 20) | 3, false), "8:3");
        assert_eq!(parse_dev("8:3", false), Some((8 << 20) | 3));
        assert_eq!(format_dev(0x0803, true), "8:3");
        assert_eq!(
            parse_dev("259:65536", true)
                .map(|v| format_dev(v, true))
                .as_deref(),
            Some("259:65536")
        );
        assert_eq!(format_ip(&[0x0100_007f]).as_deref(), Some("127.0.0.1"));
        assert_eq!(format_ip(&[0, 0, 0, 0x0100_0000]).as_deref(), Some("::1"));
        assert_eq!(
            format_ip(&[0x0000_80fe, 0, 0, 0x0100_0000]).as_deref(),
            Some("fe80::1")
        );
        assert_eq!(
            parse_ip("fe80::1"),
            Some(vec![0x0000_80fe, 0, 0, 0x0100_0000])
        );
        assert_eq!(parse_int("0x1f"), Some(31));
        assert_eq!(parse_int("-12"), Some(-12));
        assert_eq!(parse_int("010"), None);
        assert_eq!(parse_int("0"), Some(0));
    }

    #[test]
    fn base64_and_qp_like_python() {
        assert_eq!(b64_encode(b"ferry\n"), "ZmVycnkK\n");
        assert_eq!(b64_encode(b""), "");
        let long = vec![0u8; 60];
        let e = b64_encode(&long);
        assert_eq!(e.lines().next().unwrap().len(), 76);
        assert_eq!(b64_decode(&e).unwrap(), long);
        assert_eq!(qp_encode(b"\0abc=d"), "=00abc=3Dd");
        assert_eq!(qp_decode("=00abc=3Dd"), b"\0abc=d");
        assert_eq!(qp_encode(b"/tmp/sock"), "/tmp/sock");
        assert_eq!(qp_encode(b"a \nb "), "a=20\nb=20");
        assert_eq!(qp_decode(&qp_encode(&[0xffu8; 100])), vec![0xffu8; 100]);
        // Reference outputs of Python 3.11's quopri.encodestring.
        let ff = "=FF".repeat(25);
        assert_eq!(
            qp_encode(&[0xff; 100]),
            format!("{ff}=\n{ff}=\n{ff}=\n{ff}")
        );
        let x = "x".repeat(75);
        assert_eq!(
            qp_encode(&[b'x'; 200]),
            format!("{x}=\n{x}=\n{}", "x".repeat(50))
        );
        assert_eq!(qp_encode(b".\n"), "=2E\n");
        assert_eq!(qp_encode(b"\0/tmp/ferry.sock"), "=00/tmp/ferry.sock");
    }
}

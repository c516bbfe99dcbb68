//! Parsing `/proc/PID/mountinfo` and mapping mount options to `MS_*` flags.

use super::MountError;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount id.
    pub mnt_id: u32,
    /// Parent mount id.
    pub parent_id: u32,
    /// Device, kernel encoding (major << 20 | minor).
    pub kdev: u32,
    /// Root of the mount inside its filesystem.
    pub root: String,
    /// Mountpoint, as the task sees it.
    pub mountpoint: String,
    /// Per-mount options (`rw,nosuid,...`).
    pub mnt_opts: String,
    /// Peer group this mount belongs to (0 = none).
    pub shared: u32,
    /// Peer group this mount receives from (0 = none).
    pub master: u32,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Superblock options.
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text of task `pid`.
pub fn parse(pid: i32, text: &str) -> Result<Vec<MountInfo>, MountError> {
    let mut v = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |what: &str| MountError::Parse {
            pid,
            line: n + 1,
            what: format!("{what}: {line:?}"),
        };
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f
            .iter()
            .position(|x| *x == "-")
            .ok_or_else(|| bad("no ' - ' separator"))?;
        if sep < 6 || f.len() < sep + 4 {
            return Err(bad("too few fields"));
        }
        let (maj, min) = f[2].split_once(':').ok_or_else(|| bad("bad major:minor"))?;
        let maj: u32 = maj.parse().map_err(|_| bad("bad major"))?;
        let min: u32 = min.parse().map_err(|_| bad("bad minor"))?;
        let mut shared = 0;
        let mut master = 0;
        for tag in &f[6..sep] {
            if let Some(x) = tag.strip_prefix("shared:") {
                shared = x.parse().map_err(|_| bad("bad shared tag"))?;
            } else if let Some(x) = tag.strip_prefix("master:") {
                master = x.parse().map_err(|_| bad("bad master tag"))?;
            }
        }
        v.push(MountInfo {
            mnt_id: f[0].parse().map_err(|_| bad("bad mount id"))?,
            parent_id: f[1].parse().map_err(|_| bad("bad parent id"))?,
            kdev: (maj << 20) | min,
            root: unescape(f[3]),
            mountpoint: unescape(f[4]),
            mnt_opts: f[5].to_string(),
            shared,
            master,
            fstype: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
            super_opts: f[sep + 3].to_string(),
        });
    }
    Ok(v)
}

/// Per-mount flags from mountinfo's field 6.
pub fn mnt_flags(opts: &str) -> u32 {
    let mut fl = 0u64;
    for o in opts.split(',') {
        fl |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            _ => 0,
        };
    }
    // The kernel prints no atime word for strictatime; CRIU then records MS_STRICTATIME.
    if fl & (libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME) == 0 {
        fl |= libc::MS_STRICTATIME;
    }
    fl as u32
}

/// Superblock flags and the remaining filesystem options (CRIU's `sb_flags` and `options`).
pub fn sb_flags_and_options(opts: &str) -> (u32, String) {
    let mut fl = 0u64;
    let mut rest = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => fl |= libc::MS_RDONLY,
            "rw" => {}
            "sync" => fl |= libc::MS_SYNCHRONOUS,
            "dirsync" => fl |= libc::MS_DIRSYNC,
            "mand" => fl |= libc::MS_MANDLOCK,
            "lazytime" => fl |= libc::MS_LAZYTIME,
            o => rest.push(o),
        }
    }
    (fl as u32, rest.join(","))
}

/// `major:minor` of a kernel-encoded device.
pub fn kdev_str(kdev: u32) -> String {
    format!("{}:{}", kdev >> 20, kdev & 0xfffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_flags() {
        let t = "67 43 254:1 / / rw,relatime master:1 - ext4 /dev/vda rw\n\
                 69 67 0:41 / /dev rw,nosuid shared:5 - tmpfs tmpfs rw,size=65536k,mode=755\n\
                 70 69 0:41 /null /a\\040b ro,nosuid,nodev - tmpfs tmpfs ro,size=65536k";
        let v = parse(1, t).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].master, 1);
        assert_eq!(v[1].kdev, 41);
        assert_eq!(v[1].shared, 5);
        assert_eq!(v[2].mountpoint, "/a b");
        assert_eq!(v[2].root, "/null");
        assert_eq!(
            mnt_flags(&v[2].mnt_opts),
            (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME) as u32
        );
        assert_eq!(mnt_flags("rw,relatime"), libc::MS_RELATIME as u32);
        assert_eq!(
            sb_flags_and_options(&v[2].super_opts),
            (1, "size=65536k".to_string())
        );
        assert_eq!(kdev_str(254 << 20 | 1), "254:1");
        assert!(parse(1, "garbage").is_err());
    }
}

//! tmpfs contents as a gzip'd tar, the payload of CRIU's `tmpfs-dev-DEV.tar.gz.img`.
//!
//! CRIU runs `tar --create --gzip --one-file-system --numeric-owner --preserve-permissions`
//! in the mount's root; this writes the same kind of archive with the `tar` and `flate2`
//! crates: paths relative to the mount (`./x`), numeric owners, modes, mtimes, symlinks,
//! device nodes and fifos, and nothing from another filesystem mounted below.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{Archive, Builder, EntryType, Header, HeaderMode};

/// Archives the tree at `root`, staying on `root`'s filesystem.
pub fn archive(root: &Path) -> std::io::Result<Vec<u8>> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut b = Builder::new(gz);
    b.follow_symlinks(false);
    b.mode(HeaderMode::Complete);
    // The root entry carries the mount root's own mode and owner (`./` in CRIU's archives).
    b.append_dir(".", root)?;
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let p = root.join(&r);
            let md = std::fs::symlink_metadata(&p)?;
            if md.dev() != dev {
                // Another filesystem mounted here: it is dumped as its own mount.
                continue;
            }
            if md.file_type().is_socket() {
                // tar cannot hold sockets; CRIU's tar skips them with a warning too.
                tracing::warn!(path = %p.display(), "tmpfs archive: skipping a socket");
                continue;
            }
            let name = Path::new(".").join(&r);
            let ft = md.file_type();
            if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                // tar's append_path_with_name names special files by their real (absolute)
                // path; build their header here instead.
                let mut h = Header::new_gnu();
                h.set_metadata_in_mode(&md, HeaderMode::Complete);
                h.set_size(0);
                h.set_entry_type(if ft.is_char_device() {
                    EntryType::Char
                } else if ft.is_block_device() {
                    EntryType::Block
                } else {
                    EntryType::Fifo
                });
                let rdev = md.rdev();
                h.set_device_major(libc::major(rdev))?;
                h.set_device_minor(libc::minor(rdev))?;
                b.append_data(&mut h, &name, std::io::empty())?;
            } else {
                b.append_path_with_name(&p, &name)?;
            }
            if md.is_dir() {
                stack.push(r);
            }
        }
    }
    b.into_inner()?.finish()
}

/// Rewrites the numeric owner of every entry of a gzip'd archive through `f` (a user
/// namespace's translation, `userns`), leaving names, modes and contents as they are: the
/// 512-byte headers are patched in place (uid, gid, checksum) and the stream compressed again.
/// GNU long-name and pax blocks are passed through.
pub fn map_owners(
    data: &[u8],
    f: &mut dyn FnMut(u64, u64) -> std::io::Result<(u64, u64)>,
) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    GzDecoder::new(data).read_to_end(&mut raw)?;
    let mut off = 0;
    while off + 512 <= raw.len() {
        let block = &mut raw[off..off + 512];
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let h = Header::from_byte_slice(block);
        let size = h.entry_size()?;
        let ty = h.entry_type();
        if !matches!(
            ty,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        ) {
            let (uid, gid) = f(h.uid()?, h.gid()?)?;
            let mut nh = h.clone();
            nh.set_uid(uid);
            nh.set_gid(gid);
            nh.set_cksum();
            block.copy_from_slice(nh.as_bytes());
        }
        let data_len = usize::try_from(size.next_multiple_of(512))
            .map_err(|_| std::io::Error::other("tar entry size overflows"))?;
        off += 512 + data_len;
    }
    if off > raw.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "tar archive ends inside an entry",
        ));
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &raw)?;
    gz.finish()
}

/// The numeric owners (uid, gid) of every entry of a gzip'd archive.
pub fn owners(data: &[u8]) -> std::io::Result<Vec<(u64, u64)>> {
    let mut v = Vec::new();
    map_owners(data, &mut |u, g| {
        v.push((u, g));
        Ok((u, g))
    })?;
    Ok(v)
}

/// Extracts an archive made by [`archive`] (or CRIU's tar) into `dest`.
pub fn extract(data: &[u8], dest: &Path) -> std::io::Result<usize> {
    let mut a = Archive::new(GzDecoder::new(data));
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    let mut n = 0;
    for e in a.entries()? {
        let mut e = e?;
        let ty = e.header().entry_type();
        let is_root = e
            .path()?
            .components()
            .all(|c| matches!(c, std::path::Component::CurDir));
        if is_root && ty == EntryType::Directory {
            // `./`: the tar crate skips the destination itself; give the mount root the
            // archived mode and owner here.
            let h = e.header();
            let (mode, uid, gid) = (h.mode()? & 0o7777, h.uid()? as u32, h.gid()? as u32);
            std::os::unix::fs::chown(dest, Some(uid), Some(gid))?;
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))?;
            n += 1;
            continue;
        }
        if matches!(ty, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            // The tar crate leaves special files out; make them as tar(1) would.
            let rel = e.path()?.into_owned();
            let target = safe_join(dest, &rel)?;
            let h = e.header();
            let mode = h.mode()? & 0o7777;
            let kind = match ty {
                EntryType::Char => libc::S_IFCHR,
                EntryType::Block => libc::S_IFBLK,
                _ => libc::S_IFIFO,
            };
            let major = h.device_major()?.unwrap_or(0);
            let minor = h.device_minor()?.unwrap_or(0);
            let _ = std::fs::remove_file(&target);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::from_bits_truncate(kind),
                nix::sys::stat::Mode::from_bits_truncate(mode),
                libc::makedev(major, minor),
            )
            .map_err(std::io::Error::from)?;
            let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
            // mknod honours the umask; set the exact mode.
            nix::sys::stat::fchmodat(
                None,
                &target,
                nix::sys::stat::Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(std::io::Error::from)?;
        } else {
            e.unpack_in(dest)?;
        }
        n += 1;
    }
    // Drain the gzip trailer so a truncated archive is an error, not a silent success.
    let mut rest = Vec::new();
    a.into_inner().read_to_end(&mut rest)?;
    Ok(n)
}

fn safe_join(dest: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut p = dest.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(x) => p.push(x),
            Component::CurDir => {}
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("archive entry {} leaves the mount", rel.display()),
                ))
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_files_dirs_links() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("d")).unwrap();
        std::fs::write(a.path().join("d/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("d/f", a.path().join("l")).unwrap();
        let data = archive(a.path()).unwrap();
        assert_eq!(&data[..2], &[0x1f, 0x8b]);
        let b = tempfile::tempdir().unwrap();
        assert_eq!(extract(&data, b.path()).unwrap(), 4);
        assert_eq!(std::fs::read(b.path().join("d/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(b.path().join("l")).unwrap(),
            Path::new("d/f")
        );
        assert!(extract(&data[..data.len() / 2], tempfile::tempdir().unwrap().path()).is_err());
    }

    #[test]
    fn owners_are_rewritten_and_contents_kept() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("d")).unwrap();
        let long = "n".repeat(150);
        std::fs::write(a.path().join("d").join(&long), b"hello").unwrap();
        std::os::unix::fs::lchown(a.path().join("d"), Some(100_007), Some(100_008)).unwrap();
        let data = archive(a.path()).unwrap();
        assert!(owners(&data).unwrap().contains(&(100_007, 100_008)));
        let shifted = map_owners(&data, &mut |u, g| Ok((u + 1, g + 2))).unwrap();
        let got = owners(&shifted).unwrap();
        assert_eq!(got.len(), 3, "root, d and the long-named file: {got:?}");
        assert!(got.contains(&(100_008, 100_010)), "{got:?}");
        // The unmapped marker (u32::MAX) fits a GNU header and reads back.
        let none = map_owners(&data, &mut |_, _| Ok((u64::from(u32::MAX), 5))).unwrap();
        assert!(owners(&none)
            .unwrap()
            .iter()
            .all(|o| *o == (u64::from(u32::MAX), 5)));
        let b = tempfile::tempdir().unwrap();
        extract(&shifted, b.path()).unwrap();
        assert_eq!(
            std::fs::read(b.path().join("d").join(&long)).unwrap(),
            b"hello"
        );
        let md = std::fs::metadata(b.path().join("d")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&md),
                std::os::unix::fs::MetadataExt::gid(&md)
            ),
            (100_008, 100_010)
        );
        let e = map_owners(&data, &mut |_, _| Err(std::io::Error::other("no place"))).unwrap_err();
        assert_eq!(e.to_string(), "no place");
    }
}

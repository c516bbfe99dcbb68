//! Build-time check of a blob's ELF (shared by build.rs through `#[path]` and by unit tests).
//!
//! A blob is only loadable by ferry-inject if it is a flat image linked at 0 whose entry is at
//! offset 0 and whose only dynamic relocations are R_X86_64_RELATIVE (base + addend, applied by
//! the host). Anything else — another relocation type, an undefined symbol, a TLS or INTERP
//! segment, a NOBITS tail that `objcopy -O binary` would drop — fails the build here, naming it.

/// What the loader needs from a checked blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// (offset in the flat image, addend): the loader stores `base + addend` at `base + offset`.
    pub relocs: Vec<(u64, u64)>,
    /// End of the loadable image: the length `objcopy -O binary` must produce.
    pub image_end: u64,
}

const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHT_REL: u32 = 9;
const SHT_DYNSYM: u32 = 11;
const SHF_ALLOC: u64 = 0x2;
const SHF_TLS: u64 = 0x400;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
const R_X86_64_RELATIVE: u32 = 8;
const STT_TLS: u8 = 6;

/// Sections `objcopy` strips from the flat image (they only serve the build-time check).
pub const STRIPPED: &[&str] = &[
    ".dynamic",
    ".dynsym",
    ".dynstr",
    ".hash",
    ".gnu.hash",
    ".rela.dyn",
];

fn rd<const N: usize>(b: &[u8], off: u64) -> Result<[u8; N], String> {
    let off = usize::try_from(off).map_err(|_| format!("offset {off:#x} out of range"))?;
    b.get(off..off.checked_add(N).ok_or("offset overflow")?)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("ELF truncated at {off:#x}+{N}"))
}
fn u16_at(b: &[u8], off: u64) -> Result<u16, String> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: u64) -> Result<u32, String> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: u64) -> Result<u64, String> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

struct Section {
    name: String,
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

fn cstr(b: &[u8], off: u64) -> String {
    let start = usize::try_from(off).unwrap_or(usize::MAX).min(b.len());
    let end = b[start..]
        .iter()
        .position(|&c| c == 0)
        .map_or(b.len(), |p| start + p);
    String::from_utf8_lossy(&b[start..end]).into_owned()
}

/// Checks `elf` and returns its relocation table and image length, or why it is not a blob.
pub fn check(elf: &[u8]) -> Result<Checked, String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    if u16_at(elf, 16)? != 3 {
        return Err("not a position-independent (ET_DYN) image".into());
    }
    if u16_at(elf, 18)? != 62 {
        return Err("not an x86_64 image".into());
    }
    let entry = u64_at(elf, 24)?;
    if entry != 0 {
        return Err(format!("entry point is {entry:#x}, must be 0"));
    }
    let (phoff, shoff) = (u64_at(elf, 32)?, u64_at(elf, 40)?);
    let (phentsize, phnum) = (u16_at(elf, 54)? as u64, u16_at(elf, 56)? as u64);
    let (shentsize, shnum, shstrndx) = (
        u16_at(elf, 58)? as u64,
        u16_at(elf, 60)? as u64,
        u16_at(elf, 62)? as u64,
    );

    let mut min_vaddr = u64::MAX;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(elf, ph)?;
        let (vaddr, filesz, memsz) = (
            u64_at(elf, ph + 16)?,
            u64_at(elf, ph + 32)?,
            u64_at(elf, ph + 40)?,
        );
        match kind {
            PT_INTERP => return Err("image has an INTERP segment".into()),
            PT_TLS => return Err("image has a TLS segment".into()),
            PT_LOAD => {
                if memsz != filesz {
                    return Err(format!(
                        "LOAD segment at {vaddr:#x} has memsz {memsz:#x} != filesz {filesz:#x}: \
                         .bss must be folded into .data (objcopy drops NOBITS)"
                    ));
                }
                min_vaddr = min_vaddr.min(vaddr);
            }
            _ => {}
        }
    }
    if min_vaddr != 0 {
        return Err(format!(
            "image is linked at {min_vaddr:#x}, must be linked at 0"
        ));
    }

    let mut sections = Vec::new();
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        sections.push(Section {
            name: String::new(),
            kind: u32_at(elf, sh + 4)?,
            flags: u64_at(elf, sh + 8)?,
            addr: u64_at(elf, sh + 16)?,
            offset: u64_at(elf, sh + 24)?,
            size: u64_at(elf, sh + 32)?,
            link: u32_at(elf, sh + 40)?,
            entsize: u64_at(elf, sh + 56)?,
        });
        let name_off = u32_at(elf, sh)? as u64;
        let strtab = shoff + shstrndx * shentsize;
        let str_off = u64_at(elf, strtab + 24)?;
        sections[i as usize].name = cstr(elf, str_off + name_off);
    }

    let mut image_end = 0;
    for s in &sections {
        if s.flags & SHF_TLS != 0 {
            return Err(format!("section {} is thread-local", s.name));
        }
        if s.flags & SHF_ALLOC != 0 && !STRIPPED.contains(&s.name.as_str()) {
            if s.kind == SHT_NOBITS && s.size != 0 {
                return Err(format!("section {} is NOBITS; fold it into .data", s.name));
            }
            image_end = image_end.max(s.addr + s.size);
        }
    }

    let mut relocs = Vec::new();
    for s in &sections {
        match s.kind {
            SHT_REL => return Err(format!("section {} holds REL relocations", s.name)),
            SHT_RELA => {
                let ent = if s.entsize == 0 { 24 } else { s.entsize };
                for j in 0..s.size / ent {
                    let r = s.offset + j * ent;
                    let (off, info, addend) =
                        (u64_at(elf, r)?, u64_at(elf, r + 8)?, u64_at(elf, r + 16)?);
                    let (kind, sym) = (info as u32, (info >> 32) as u32);
                    if kind != R_X86_64_RELATIVE || sym != 0 {
                        return Err(format!(
                            "relocation type {kind} (symbol {sym}) at {off:#x} in {}: only \
                             R_X86_64_RELATIVE is allowed",
                            s.name
                        ));
                    }
                    if off + 8 > image_end || addend >= image_end {
                        return Err(format!(
                            "RELATIVE relocation at {off:#x} (addend {addend:#x}) outside the image"
                        ));
                    }
                    relocs.push((off, addend));
                }
            }
            SHT_SYMTAB | SHT_DYNSYM => {
                let strtab = sections
                    .get(s.link as usize)
                    .ok_or_else(|| format!("{} links to a missing string table", s.name))?;
                let ent = if s.entsize == 0 { 24 } else { s.entsize };
                for j in 1..s.size / ent {
                    let sym = s.offset + j * ent;
                    let name = cstr(elf, strtab.offset + u32_at(elf, sym)? as u64);
                    let info = rd::<1>(elf, sym + 4)?[0];
                    let shndx = u16_at(elf, sym + 6)?;
                    if info & 0xf == STT_TLS {
                        return Err(format!("symbol {name} is thread-local"));
                    }
                    if shndx == 0 && !name.is_empty() {
                        return Err(format!("undefined symbol {name} in {}", s.name));
                    }
                }
            }
            _ => {}
        }
    }
    relocs.sort_unstable();
    Ok(Checked { relocs, image_end })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real parasite ELF that build.rs linked and checked.
    const ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/parasite.elf"));

    fn u16_le(b: &[u8], off: usize) -> usize {
        u16::from_le_bytes([b[off], b[off + 1]]) as usize
    }
    fn u64_le(b: &[u8], off: usize) -> usize {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) as usize
    }

    /// File offset of the section header named `name`.
    fn section(elf: &[u8], name: &str) -> usize {
        let (shoff, shentsize, shnum, shstrndx) = (
            u64_le(elf, 40),
            u16_le(elf, 58),
            u16_le(elf, 60),
            u16_le(elf, 62),
        );
        let strtab = u64_le(elf, shoff + shstrndx * shentsize + 24);
        (0..shnum)
            .map(|i| shoff + i * shentsize)
            .find(|&sh| {
                let n = u32::from_le_bytes(elf[sh..sh + 4].try_into().unwrap()) as u64;
                cstr(elf, strtab as u64 + n) == name
            })
            .unwrap_or_else(|| panic!("no section {name}"))
    }

    #[test]
    fn real_blob_passes_and_matches_the_embedded_table() {
        let c = check(ELF).unwrap();
        assert_eq!(c.image_end as usize, crate::blob::PARASITE_BLOB.len());
        assert_eq!(c.relocs.as_slice(), crate::blob::PARASITE_RELOCS);
    }

    #[test]
    fn rejects_other_relocation_types() {
        let mut elf = ELF.to_vec();
        let rela = u64_le(&elf, section(&elf, ".rela.dyn") + 24);
        elf[rela + 8] = 6; // R_X86_64_GLOB_DAT
        let e = check(&elf).unwrap_err();
        assert!(e.contains("relocation type 6"), "{e}");
    }

    #[test]
    fn rejects_undefined_symbols() {
        let mut elf = ELF.to_vec();
        let symtab = section(&elf, ".symtab");
        let (off, size) = (u64_le(&elf, symtab + 24), u64_le(&elf, symtab + 32));
        // Make the first named symbol undefined.
        let named = (1..size / 24)
            .map(|i| off + i * 24)
            .find(|&s| u32::from_le_bytes(elf[s..s + 4].try_into().unwrap()) != 0)
            .unwrap();
        elf[named + 6] = 0;
        elf[named + 7] = 0;
        let e = check(&elf).unwrap_err();
        assert!(e.contains("undefined symbol"), "{e}");
    }

    #[test]
    fn rejects_interp_tls_entry_and_bss() {
        let phoff = u64_le(ELF, 32);
        let mut interp = ELF.to_vec();
        interp[phoff] = 3;
        assert!(check(&interp).unwrap_err().contains("INTERP"));
        let mut tls = ELF.to_vec();
        tls[phoff] = 7;
        assert!(check(&tls).unwrap_err().contains("TLS"));
        let mut entry = ELF.to_vec();
        entry[24] = 0x10;
        assert!(check(&entry).unwrap_err().contains("entry point"));
        let mut bss = ELF.to_vec();
        // First LOAD's memsz grows past filesz: a NOBITS tail objcopy would drop.
        bss[phoff + 40] = bss[phoff + 40].wrapping_add(1);
        assert!(check(&bss).unwrap_err().contains("memsz"));
        assert!(check(b"not an elf").is_err());
        assert!(check(&ELF[..100]).is_err());
    }
}

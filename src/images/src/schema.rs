//! The CRIU schemas as a reflection pool, and the `(criu)` field options crit's pretty
//! printer follows (hex, flags, dev, odev, ipadd, dict, conv).

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor, Value};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/criu_descriptors.bin"));

/// The descriptor pool of every message in `proto/`.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptor set is produced by our own build script from our own schemas; failing to
        // parse it is a build defect, not an input error.
        DescriptorPool::decode(DESCRIPTORS).expect("embedded CRIU descriptor set is valid")
    })
}

/// Descriptor of a top-level message by its CRIU name (e.g. `core_entry`).
pub fn message(name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(name)
}

/// The `(criu)` options of one field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CriuOpts {
    /// Print integers as `0x..` (inherited by nested messages).
    pub hex: bool,
    /// Repeated u32 holding an IPv4 (1 word) or IPv6 (4 words) address in network order.
    pub ipadd: bool,
    /// Name of a flag table (`mmap.prot`, `rfile.flags`, ...).
    pub flags: Option<String>,
    /// A `dev_t` in the kernel's internal (MINORBITS = 20) encoding.
    pub dev: bool,
    /// A `dev_t` in the old user-space (glibc `makedev`) encoding.
    pub odev: bool,
    /// Name of a value-to-name table (`gen`, `sk`).
    pub dict: Option<String>,
    /// Custom bytes conversion (`unix_name` = quoted-printable).
    pub conv: Option<String>,
}

/// Reads the `(criu)` extension from a field's options.
pub fn criu_opts(field: &FieldDescriptor) -> CriuOpts {
    let mut out = CriuOpts::default();
    let Some(ext) = pool().get_extension_by_name("criu") else {
        return out;
    };
    let opts = field.options();
    if !opts.has_extension(&ext) {
        return out;
    }
    let v = opts.get_extension(&ext);
    let Some(m) = v.as_message() else {
        return out;
    };
    let b = |n: &str| matches!(m.get_field_by_name(n).as_deref(), Some(Value::Bool(true)));
    let s = |n: &str| {
        if !m.has_field_by_name(n) {
            return None;
        }
        match m.get_field_by_name(n).as_deref() {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    out.hex = b("hex");
    out.ipadd = b("ipadd");
    out.dev = b("dev");
    out.odev = b("odev");
    out.flags = s("flags");
    out.dict = s("dict");
    out.conv = s("conv");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_message_and_options_are_visible() {
        for k in crate::magic::KINDS {
            assert!(message(k.message).is_some(), "{} -> {}", k.name, k.message);
        }
        let vma = message("vma_entry").unwrap();
        let start = vma.get_field_by_name("start").unwrap();
        assert!(criu_opts(&start).hex);
        let prot = vma.get_field_by_name("prot").unwrap();
        assert_eq!(criu_opts(&prot).flags.as_deref(), Some("mmap.prot"));
        let pgoff = vma.get_field_by_name("pgoff").unwrap();
        assert_eq!(criu_opts(&pgoff), CriuOpts::default());
    }
}

//! The restorer blob on the coordinator's side: embedding, loading into a task's restore range,
//! and a bump allocator for the argument block.
//!
//! The blob (blobs/restorer, built by build.rs) is copied into private RWX memory at its final
//! address inside the task's restore range and its RELATIVE relocations are applied for that
//! address. Arguments are laid out by [`Arena`] at their final addresses too, so the pointers the
//! coordinator writes are the pointers the blob reads: nothing needs relocating at jump time.

use thiserror::Error;

include!(concat!(env!("OUT_DIR"), "/restorer_blob.rs"));

pub use ferry_blob_abi::restorer::RESTORER_SYSCALL_OFFSET;

/// Errors of loading the restorer and laying out its arguments.
#[derive(Debug, Error)]
pub enum RestorerError {
    /// The argument arena is too small for what the plan needs.
    #[error("restorer argument area full: {what} needs {need} bytes, {left} left")]
    ArenaFull {
        /// What was being placed.
        what: &'static str,
        /// Bytes wanted.
        need: usize,
        /// Bytes left.
        left: usize,
    },
    /// The blob does not fit the space reserved for it.
    #[error("restorer blob of {0} bytes does not fit its {1}-byte slot")]
    BlobTooBig(usize, usize),
}

/// Bytes the blob needs at its base, rounded up to pages.
pub fn blob_len() -> usize {
    RESTORER_BLOB.len().div_ceil(4096) * 4096
}

/// Copies the blob to `dst` (which will run at `dst`) and applies its relocations.
///
/// # Safety
/// `dst` must be writable for `slot` bytes.
pub unsafe fn install(dst: *mut u8, slot: usize) -> Result<(), RestorerError> {
    if RESTORER_BLOB.len() > slot {
        return Err(RestorerError::BlobTooBig(RESTORER_BLOB.len(), slot));
    }
    // SAFETY: the caller guarantees `slot` writable bytes at dst; the blob fits (checked).
    unsafe { std::ptr::copy_nonoverlapping(RESTORER_BLOB.as_ptr(), dst, RESTORER_BLOB.len()) };
    let base = dst as u64;
    for &(off, addend) in RESTORER_RELOCS {
        // build.rs checked every RELATIVE offset lies inside the image, so off + 8 <= len.
        // SAFETY: inside the copied image (see above); unaligned write of a u64.
        unsafe { (dst.add(off as usize) as *mut u64).write_unaligned(base + addend) };
    }
    Ok(())
}

/// A bump allocator over memory mapped at its final address.
#[derive(Debug)]
pub struct Arena {
    base: u64,
    len: usize,
    used: usize,
}

impl Arena {
    /// An arena over `len` writable bytes at `base`.
    ///
    /// # Safety
    /// `base..base+len` must be mapped writable for as long as the arena is used.
    pub unsafe fn new(base: u64, len: usize) -> Self {
        Self { base, len, used: 0 }
    }

    /// Reserves `size` bytes aligned to `align`; returns the address (zeroed memory is the
    /// caller's to fill).
    pub fn alloc(
        &mut self,
        size: usize,
        align: usize,
        what: &'static str,
    ) -> Result<u64, RestorerError> {
        let start = (self.base as usize + self.used).next_multiple_of(align) - self.base as usize;
        if start + size > self.len {
            return Err(RestorerError::ArenaFull {
                what,
                need: size,
                left: self.len.saturating_sub(self.used),
            });
        }
        self.used = start + size;
        Ok(self.base + start as u64)
    }

    /// Copies `items` into the arena; returns their address.
    pub fn push<T: Copy>(&mut self, items: &[T], what: &'static str) -> Result<u64, RestorerError> {
        let size = std::mem::size_of_val(items);
        let at = self.alloc(size.max(1), std::mem::align_of::<T>().max(8), what)?;
        // SAFETY: `at` has `size` bytes reserved inside the mapped arena (new's contract), and
        // T: Copy has no drop glue.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), at as *mut T, items.len()) };
        Ok(at)
    }

    /// Copies raw bytes with the given alignment; returns their address.
    pub fn push_bytes(
        &mut self,
        bytes: &[u8],
        align: usize,
        what: &'static str,
    ) -> Result<u64, RestorerError> {
        let at = self.alloc(bytes.len().max(1), align, what)?;
        // SAFETY: reserved inside the mapped arena (new's contract).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_has_syscall_pair_and_relocs_inside() {
        assert_eq!(
            &RESTORER_BLOB[RESTORER_SYSCALL_OFFSET..RESTORER_SYSCALL_OFFSET + 3],
            &[0x0f, 0x05, 0xcc]
        );
        for &(off, _) in RESTORER_RELOCS {
            assert!(off as usize + 8 <= RESTORER_BLOB.len());
        }
    }

    #[test]
    fn arena_aligns_and_fills() {
        let mut buf = vec![0u64; 64];
        // SAFETY: buf is 512 writable bytes alive for the test.
        let mut a = unsafe { Arena::new(buf.as_mut_ptr() as u64, 512) };
        let x = a.push(&[1u32, 2, 3], "x").unwrap();
        let y = a.push_bytes(&[9; 10], 64, "y").unwrap();
        assert_eq!(y % 64, 0);
        assert!(y > x);
        assert!(a.alloc(1000, 8, "z").is_err());
    }
}

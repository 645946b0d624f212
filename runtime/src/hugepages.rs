//! Large simulator buffers backed by transparent huge pages where the host
//! offers them (Linux with THP in `madvise` or `always` mode).
//!
//! A functional run touches every byte of SRAM, of the HBM it writes and of its
//! outputs for the first time: with 4 KiB pages that is one kernel page fault
//! per 4 KiB, which took more of a large run's time than its instructions did.
//! Asking for 2 MiB pages makes those faults 512 times fewer. The advice only
//! changes how memory is mapped, never its contents; elsewhere it is a no-op.

/// A vector of `len` copies of `byte`, whose 2 MiB-aligned interior is advised
/// to be huge pages before it is first touched.
pub fn filled(len: usize, byte: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    advise(v.as_mut_ptr(), len);
    v.resize(len, byte);
    v
}

/// A vector of `len` zero bytes whose pages are not touched until written
/// (fresh pages from the host), advised to be huge pages as [`filled`].
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    advise(v.as_mut_ptr(), len);
    v
}

/// Bytes of a huge page (x86_64 and aarch64 with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// One huge page of bytes, aligned to one.
#[repr(C, align(2097152))]
pub struct Block(pub [u8; HUGE_PAGE]);

/// A [`Block`] of `byte`, advised to be one huge page before it is touched.
pub fn block(byte: u8) -> Box<Block> {
    let mut b = Box::<Block>::new_uninit();
    advise(b.as_mut_ptr().cast(), HUGE_PAGE);
    // SAFETY: every byte of the block is written before it is assumed
    // initialised (a byte array has no other validity requirement).
    unsafe {
        b.as_mut_ptr().cast::<u8>().write_bytes(byte, HUGE_PAGE);
        b.assume_init()
    }
}

#[cfg(target_os = "linux")]
fn advise(ptr: *mut u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + len) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: the range lies inside the vector's allocation (rounded
        // inwards to whole huge pages); MADV_HUGEPAGE changes no contents,
        // and a host that refuses the advice just keeps small pages.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_ptr: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    #[test]
    fn filled_holds_the_byte_everywhere() {
        for len in [0, 1, 4095, (2 << 20) + 3, 5 << 20] {
            let v = super::filled(len, 0xa5);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&b| b == 0xa5));
        }
    }

    #[test]
    fn zeroed_is_zero() {
        let v = super::zeroed((2 << 20) + 5);
        assert!(v.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_block_is_aligned_and_filled() {
        let b = super::block(0x5a);
        assert_eq!(&raw const *b as usize % super::HUGE_PAGE, 0);
        assert!(b.0.iter().all(|&x| x == 0x5a));
    }
}

//! Per-thread scratch memory shared by the integer GEMM variants.

use std::cell::Cell;

/// Runs `f` on three scratch buffers of the given lengths, kept between calls
/// on this thread: allocating and zeroing them on every call cost as much as
/// the products of a small GEMM. They hold whatever the last call left.
#[allow(dead_code)] // unused on targets without a SIMD variant
pub(crate) fn with_scratch<T>(lens: [usize; 3], f: impl FnOnce([&mut [u8]; 3]) -> T) -> T {
    thread_local! {
        static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let mut buf = cell.take();
        let total = lens.iter().sum();
        if buf.len() < total {
            buf.resize(total, 0);
        }
        let (x, rest) = buf.split_at_mut(lens[0]);
        let (y, rest) = rest.split_at_mut(lens[1]);
        let out = f([x, y, &mut rest[..lens[2]]]);
        cell.set(buf);
        out
    })
}

/// The same bytes, as i8.
#[allow(dead_code)]
pub(crate) fn as_i8(b: &mut [u8]) -> &mut [i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len()) }
}

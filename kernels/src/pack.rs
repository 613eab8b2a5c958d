//! The packed low-bit layout shared by every kernel (CPU and GPU) and the model file.
//!
//! * A matrix is stored row-major; a row holds the codes along the reduction
//!   dimension `k` (weights: one row per output channel; activations: one row per
//!   output pixel after im2col).
//! * 4-bit codes are packed two per byte. **Nibble order:** byte `b` of a row holds
//!   element `2b` in bits 0..=3 (low nibble) and element `2b + 1` in bits 4..=7
//!   (high nibble). Signed codes (-8..=7) are two's-complement nibbles; unsigned
//!   codes (0..=15) are plain nibbles.
//! * Every row is padded with zero codes to a multiple of [`ROW_ALIGN_CODES`]
//!   elements ([`ROW_ALIGN_BYTES`] bytes for 4-bit codes): one 128-bit load of
//!   packed codes widens to one 256-bit register of bytes, so SIMD kernels never
//!   need a tail loop, and a zero code contributes nothing to a dot product.
//! * 8-bit codes use one byte per element and pad rows to [`ROW_ALIGN_BYTES`] bytes.

use crate::ShapeError;

/// Row padding of packed 4-bit rows, in codes.
pub const ROW_ALIGN_CODES: usize = 32;
/// Row padding in bytes (packed 4-bit rows and 8-bit rows alike).
pub const ROW_ALIGN_BYTES: usize = 16;

const _: () = assert!(ROW_ALIGN_CODES == 2 * ROW_ALIGN_BYTES);

/// Bytes of one packed 4-bit row holding `k` codes (padded).
pub const fn row_bytes_4bit(k: usize) -> usize {
    k.div_ceil(ROW_ALIGN_CODES) * ROW_ALIGN_BYTES
}

/// Bytes of one 8-bit row holding `k` codes (padded).
pub const fn row_bytes_8bit(k: usize) -> usize {
    k.div_ceil(ROW_ALIGN_BYTES) * ROW_ALIGN_BYTES
}

/// Signed code `j` of a packed row.
#[inline(always)]
pub fn get_s4(row: &[u8], j: usize) -> i8 {
    let byte = row[j / 2];
    let nib = if j.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    };
    ((nib << 4) as i8) >> 4
}

/// Unsigned code `j` of a packed row.
#[inline(always)]
pub fn get_u4(row: &[u8], j: usize) -> u8 {
    let byte = row[j / 2];
    if j.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// Writes nibble `code & 0xf` at position `j` of a packed row.
#[inline(always)]
pub fn set_nibble(row: &mut [u8], j: usize, code: u8) {
    let b = &mut row[j / 2];
    if j.is_multiple_of(2) {
        *b = (*b & 0xf0) | (code & 0x0f);
    } else {
        *b = (*b & 0x0f) | ((code & 0x0f) << 4);
    }
}

/// `codes` must hold exactly `rows x k` values.
fn check_len(what: &str, len: usize, rows: usize, k: usize) -> Result<(), ShapeError> {
    if rows.checked_mul(k) != Some(len) {
        return Err(ShapeError(format!(
            "{what}: {len} values for {rows} rows of {k}"
        )));
    }
    Ok(())
}

/// Packs `rows x k` signed codes (-8..=7, row-major) into padded packed rows.
pub fn pack_s4(codes: &[i8], rows: usize, k: usize) -> Result<Vec<u8>, ShapeError> {
    check_len("pack_s4", codes.len(), rows, k)?;
    let rb = row_bytes_4bit(k);
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        let dst = &mut out[r * rb..(r + 1) * rb];
        for (j, &c) in codes[r * k..(r + 1) * k].iter().enumerate() {
            debug_assert!((-8..=7).contains(&c));
            set_nibble(dst, j, c as u8);
        }
    }
    Ok(out)
}

/// Packs `rows x k` unsigned codes (0..=15, row-major) into padded packed rows.
pub fn pack_u4(codes: &[u8], rows: usize, k: usize) -> Result<Vec<u8>, ShapeError> {
    check_len("pack_u4", codes.len(), rows, k)?;
    let rb = row_bytes_4bit(k);
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        let dst = &mut out[r * rb..(r + 1) * rb];
        for (j, &c) in codes[r * k..(r + 1) * k].iter().enumerate() {
            debug_assert!(c <= 15);
            set_nibble(dst, j, c);
        }
    }
    Ok(out)
}

/// Unpacks padded packed signed rows back to `rows x k` codes.
pub fn unpack_s4(packed: &[u8], rows: usize, k: usize) -> Result<Vec<i8>, ShapeError> {
    let rb = row_bytes_4bit(k);
    check_len("unpack_s4", packed.len(), rows, rb)?;
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &packed[r * rb..(r + 1) * rb];
        out.extend((0..k).map(|j| get_s4(row, j)));
    }
    Ok(out)
}

/// Unpacks padded packed unsigned rows back to `rows x k` codes.
pub fn unpack_u4(packed: &[u8], rows: usize, k: usize) -> Result<Vec<u8>, ShapeError> {
    let rb = row_bytes_4bit(k);
    check_len("unpack_u4", packed.len(), rows, rb)?;
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &packed[r * rb..(r + 1) * rb];
        out.extend((0..k).map(|j| get_u4(row, j)));
    }
    Ok(out)
}

/// Copies `rows x k` 8-bit codes into rows padded to [`row_bytes_8bit`].
pub fn pad_rows_8bit<T: Copy + Default>(
    codes: &[T],
    rows: usize,
    k: usize,
) -> Result<Vec<T>, ShapeError> {
    check_len("pad_rows_8bit", codes.len(), rows, k)?;
    let rb = row_bytes_8bit(k);
    let mut out = vec![T::default(); rows * rb];
    for r in 0..rows {
        out[r * rb..r * rb + k].copy_from_slice(&codes[r * k..(r + 1) * k]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_order_is_low_first() {
        let p = pack_s4(&[1, -2, 7], 1, 3).unwrap();
        assert_eq!(p.len(), ROW_ALIGN_BYTES);
        assert_eq!(p[0], 0x01 | (0x0e << 4));
        assert_eq!(p[1], 0x07);
        assert!(p[2..].iter().all(|&b| b == 0));
    }

    #[test]
    fn round_trip_all_codes() {
        let s: Vec<i8> = (0..70).map(|i| (i % 16) as i8 - 8).collect();
        assert_eq!(unpack_s4(&pack_s4(&s, 2, 35).unwrap(), 2, 35).unwrap(), s);
        let u: Vec<u8> = (0..66).map(|i| (i * 7 % 16) as u8).collect();
        assert_eq!(unpack_u4(&pack_u4(&u, 3, 22).unwrap(), 3, 22).unwrap(), u);
    }
}

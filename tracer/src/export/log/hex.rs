//! Lowercase hexadecimal without `core::fmt`, for the hand-built lines (cookies, escapes) and
//! IPv6 groups.

pub(super) const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `value`, at least `min_digits` (at most 16) with leading zeros.
pub(super) fn push_hex(buf: &mut Vec<u8>, value: u64, min_digits: usize) {
    let significant = (67 - (value | 1).leading_zeros() as usize) / 4;
    let digits = significant.max(min_digits).min(16);
    let mut all = [0u8; 16];
    for (i, digit) in all.iter_mut().enumerate() {
        *digit = HEX_DIGITS[((value >> (60 - 4 * i)) & 15) as usize];
    }
    buf.extend_from_slice(&all[16 - digits..]);
}

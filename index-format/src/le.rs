//! Little-endian field access on untrusted byte slices, without panics.

/// Reads a little-endian `u16` at `off`, or `None` past the end.
pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Reads a little-endian `u32` at `off`, or `None` past the end.
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads a little-endian `u64` at `off`, or `None` past the end.
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Reads a 16-byte GUID at `off`, or `None` past the end.
pub(crate) fn guid_at(b: &[u8], off: usize) -> Option<[u8; 16]> {
    let s = b.get(off..off.checked_add(16)?)?;
    let mut a = [0u8; 16];
    a.copy_from_slice(s);
    Some(a)
}

/// Little-endian `u32` of the first four bytes of a slice known to be at least that long.
/// Callers pass `chunks_exact` chunks, so the fallback never triggers.
pub(crate) fn le32(s: &[u8]) -> u32 {
    u32_at(s, 0).unwrap_or(0)
}

/// Rounds up to a multiple of 4, saturating.
pub(crate) fn align4(x: usize) -> usize {
    x.saturating_add(3) & !3
}

/// Rounds up to a multiple of 8, saturating.
pub(crate) fn align8(x: usize) -> usize {
    x.saturating_add(7) & !7
}

/// Lowercase hex of a byte slice.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Decodes the "packed offset" form (spec 1.2); 0 means not written / invalid.
pub fn unpack_offset(raw: [u8; 4]) -> u32 {
    let b = u32::from_be_bytes(raw);
    if b & 0x8080_8080 != 0x8080_8080 {
        return 0;
    }
    let n =
        (b & 0x7f) | ((b >> 8) & 0x7f) << 7 | ((b >> 16) & 0x7f) << 14 | ((b >> 24) & 0x7f) << 21;
    n << 2
}

/// Encodes a value (multiple of 4, below 2^30) in the packed-offset form.
pub fn pack_offset(v: u32) -> [u8; 4] {
    let n = v >> 2;
    let b = 0x8080_8080
        | (n & 0x7f)
        | ((n >> 7) & 0x7f) << 8
        | ((n >> 14) & 0x7f) << 16
        | ((n >> 21) & 0x7f) << 24;
    b.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_offsets_match_the_spec_examples() {
        assert_eq!(pack_offset(20), [0x80, 0x80, 0x80, 0x85]);
        assert_eq!(pack_offset(12), [0x80, 0x80, 0x80, 0x83]);
        assert_eq!(pack_offset(1248), [0x80, 0x80, 0x82, 0xb8]);
        assert_eq!(unpack_offset([0x80, 0x80, 0x82, 0xb8]), 1248);
        assert_eq!(unpack_offset([0, 0, 0, 0]), 0);
        for v in [4u32, 128, 4096, 1 << 20, (1 << 30) - 4] {
            assert_eq!(unpack_offset(pack_offset(v)), v);
        }
    }
}

//! Reading the fields of a block: ggml writes them little-endian and packed, with no alignment,
//! so every multi-byte field is read from bytes rather than through a cast.

/// The f16 at the start of `bytes`, widened to f32 (exact: every f16 is an f32).
#[inline]
pub(super) fn f16_at(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

//! Blocks back to f32, for every type, exactly as ggml's `dequantize_row_*` and gguf-py's
//! `gguf.quants.dequantize` compute them (same products in the same order, so the same bits).

use super::{GgmlType, floats, q4_0, q4_k, q5_0, q5_k, q6_k, q8_0};

/// Writes the values that the whole blocks in `bytes` hold into `out`.
///
/// `bytes` may be one row or many; `out.len()` values take exactly
/// `ty.row_bytes(out.len())` bytes. The float types are read little-endian; NaNs keep their
/// payload except that an F16 signalling NaN may come back quiet (as the CPU's F16C converts it).
///
/// Panics if `out.len()` is not a whole number of blocks or `bytes` is not exactly that many
/// blocks long: both are caller bugs (a tensor's shape and its byte size disagree).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let expected = ty.row_bytes(out.len()).unwrap_or_else(|| {
        panic!(
            "{} holds values in blocks of {}, but {} values were asked for",
            ty.name(),
            ty.block_len(),
            out.len()
        )
    });
    assert_eq!(
        bytes.len(),
        expected,
        "{} values of {} take {expected} bytes",
        out.len(),
        ty.name()
    );
    match ty {
        GgmlType::F32 => floats::f32_from_le(bytes, out),
        GgmlType::F16 => floats::f16_to_f32(bytes, out),
        GgmlType::BF16 => floats::bf16_to_f32(bytes, out),
        GgmlType::Q4_0 => q4_0::dequantize(bytes, out),
        GgmlType::Q5_0 => q5_0::dequantize(bytes, out),
        GgmlType::Q8_0 => q8_0::dequantize(bytes, out),
        GgmlType::Q4K => q4_k::dequantize(bytes, out),
        GgmlType::Q5K => q5_k::dequantize(bytes, out),
        GgmlType::Q6K => q6_k::dequantize(bytes, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "blocks of 32")]
    fn a_partial_block_is_refused() {
        dequantize(GgmlType::Q8_0, &[0; 34], &mut [0.0; 31]);
    }

    #[test]
    #[should_panic(expected = "take 34 bytes")]
    fn a_byte_count_that_disagrees_is_refused() {
        dequantize(GgmlType::Q8_0, &[0; 35], &mut [0.0; 32]);
    }

    #[test]
    fn nothing_in_nothing_out() {
        for ty in GgmlType::ALL {
            dequantize(ty, &[], &mut []);
        }
    }
}

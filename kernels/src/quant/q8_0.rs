//! Q8_0 (ggml's `block_q8_0`): blocks of 32 values `d * q`, q signed.
//!
//! Bytes of a block: f16 `d`, then 32 `i8` quants.

use super::activations::{BlockQ8_0, QK8_0};
use super::fields::f16_at;
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

const BLOCK_BYTES: usize = 34;

/// The signed quants of one block, in value order.
fn unpack(block: &[u8]) -> [i8; QK8_0] {
    std::array::from_fn(|i| block[2 + i] as i8)
}

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, out) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK8_0))
    {
        let d = f16_at(block);
        for (y, q) in out.iter_mut().zip(unpack(block)) {
            *y = q as f32 * d;
        }
    }
}

/// One Q8_0 weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q8_0_q8_0(weights: &[u8], x: &[BlockQ8_0]) -> f32 {
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q8_0's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8_0;

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8_0]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q8_0");
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_avx2(rows, inputs) };
            }
        }
        tile_by_pairs(rows, inputs, dot_portable)
    }

    fn tile_rows(inputs: usize) -> usize {
        if inputs == 1 { 4 } else { 2 }
    }
}

/// `values` as Q8_0 weight blocks, laid out as in a GGUF file: per 32 values the f16 scale
/// max|x| / 127 and the 32 rounded quotients, ggml's `quantize_row_q8_0_ref` rule (the quants
/// are rounded against the f32 scale, before it is stored as f16). For weights the engine
/// derives from others (MLA's per-head W_UK^T and W_UV), so they can be multiplied as the file's
/// own quantized weights are.
///
/// Panics unless `values.len()` is a multiple of 32.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut blocks = vec![BlockQ8_0::ZERO; values.len() / QK8_0];
    super::activations::quantize_row_q8_0(values, &mut blocks);
    let mut bytes = Vec::with_capacity(blocks.len() * BLOCK_BYTES);
    for block in &blocks {
        bytes.extend_from_slice(&half::f16::from_f32(block.scale).to_le_bytes());
        bytes.extend(block.quants.iter().map(|&q| q as u8));
    }
    bytes
}

fn dot_portable(weights: &[u8], x: &[BlockQ8_0]) -> f32 {
    let mut total = 0f32;
    for (block, act) in weights.chunks_exact(BLOCK_BYTES).zip(x) {
        let sum: i32 = unpack(block)
            .iter()
            .zip(&act.quants)
            .map(|(&w, &a)| w as i32 * a as i32)
            .sum();
        total += f16_at(block) * act.scale * sum as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&[BlockQ8_0]; N],
) -> [[f32; N]; R] {
    super::x86::q8_0_tile::<Kernel, R, N>(rows, BLOCK_BYTES, inputs)
}

#[cfg(target_arch = "x86_64")]
impl super::x86::SignedQuants for Kernel {
    /// The weight bytes are the signed quants already; they may be -128, the activations never
    /// are (see `dot_magnitudes_signs`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_quants(block: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the block's 32 quants follow its scale (the caller's promise).
        unsafe { std::arch::x86_64::_mm256_loadu_si256(block.add(2).cast()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q8_0);

    #[test]
    fn quantized_weights_dequantize_to_within_half_a_step() {
        // One block of mixed magnitudes, one all zero, one with a single large value.
        let mut values: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        values.extend([0.0; 32]);
        values.extend((0..32).map(|i| if i == 5 { -1000.0 } else { i as f32 * 1e-3 }));
        let bytes = quantize_q8_0(&values);
        assert_eq!(bytes.len(), 3 * BLOCK_BYTES);
        let mut back = vec![0f32; values.len()];
        crate::quant::dequantize(GgmlType::Q8_0, &bytes, &mut back);
        for (block, (values, back)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Half a step of the f32 scale, plus the f16 rounding of the scale times |q| <= 127.
            let bound = max / 127.0 * (0.5 + 127.0 * 2f32.powi(-11)) + 1e-6;
            for (v, b) in values.iter().zip(back) {
                assert!(
                    (v - b).abs() <= bound,
                    "block {block}: {v} came back as {b}"
                );
            }
        }
        assert!(back[32..64].iter().all(|&b| b == 0.0));
        // The largest value is -127 steps of the f16 scale (1000 / 127 rounds to 7.875).
        assert_eq!(back[64 + 5], -127.0 * 7.875);
    }

    #[test]
    fn a_q8_0_block_requantizes_to_its_own_bytes() {
        // A block whose largest quant is 127 (as ggml writes them) comes back unchanged.
        let mut block = vec![0u8; BLOCK_BYTES];
        block[..2].copy_from_slice(&half::f16::from_f32(0.013671875).to_le_bytes());
        for (i, q) in block[2..].iter_mut().enumerate() {
            *q = ((i as i32 * 37 % 255) - 127).clamp(-127, 127) as i8 as u8;
        }
        block[2 + 9] = 127;
        let mut values = vec![0f32; 32];
        crate::quant::dequantize(GgmlType::Q8_0, &block, &mut values);
        assert_eq!(quantize_q8_0(&values), block);
    }
}

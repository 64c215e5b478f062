//! Q6_K (ggml's `block_q6_K`): blocks of 256 values in 16 sub-blocks of 16, value
//! `d * scale[g] * (q - 32)` with q in 0..=63 and a signed 8-bit `scale` per sub-block.
//!
//! Bytes of a block: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 `i8` scales, f16
//! `d`. Each half h of the block (values 128h..128h + 128) takes 64 nibble bytes L and 32 bit-pair
//! bytes H; for l in 0..32 its values l, l + 32, l + 64, l + 96 are the low nibble of L[l], the low
//! nibble of L[l + 32], the high nibble of L[l], the high nibble of L[l + 32], with bits 0-1, 2-3,
//! 4-5, 6-7 of H[l] as their top two bits.

use super::activations::{BlockQ8K, QK_K};
use super::fields::f16_at;
use super::row_dot::RowDot;

const BLOCK_BYTES: usize = 210;
const SCALES: usize = 192;
const D: usize = 208;

/// The signed quants (q - 32) of one block, in value order.
fn unpack(block: &[u8]) -> [i8; QK_K] {
    std::array::from_fn(|i| {
        let (half, quarter, l) = (i / 128, i / 32 % 4, i % 32);
        let nibbles = &block[64 * half..64 * half + 64];
        let bit_pairs = &block[128 + 32 * half..128 + 32 * half + 32];
        let low = (nibbles[l + 32 * (quarter % 2)] >> (4 * (quarter / 2))) & 0x0F;
        let high = (bit_pairs[l] >> (2 * quarter)) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

fn scales(block: &[u8]) -> [i8; 16] {
    std::array::from_fn(|g| block[SCALES + g] as i8)
}

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, out) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = f16_at(&block[D..]);
        let quants = unpack(block);
        for ((out, quants), scale) in out
            .chunks_exact_mut(16)
            .zip(quants.chunks_exact(16))
            .zip(scales(block))
        {
            // As ggml: d * scale first, then times the quant.
            let factor = d * scale as f32;
            for (y, &q) in out.iter_mut().zip(quants) {
                *y = factor * q as f32;
            }
        }
    }
}

/// One Q6_K weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q6_k_q8_k(weights: &[u8], x: &[BlockQ8K]) -> f32 {
    Kernel::dot_rows(weights, [x])[0]
}

/// Q6_K's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8K;

    fn dot_rows<const N: usize>(weights: &[u8], inputs: [&[BlockQ8K]; N]) -> [f32; N] {
        for x in inputs {
            assert_eq!(
                weights.len(),
                x.len() * BLOCK_BYTES,
                "a Q6_K row must hold one block per activation block"
            );
        }
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_avx2(weights, inputs) };
            }
        }
        inputs.map(|x| dot_portable(weights, x))
    }
}

fn dot_portable(weights: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (block, act) in weights.chunks_exact(BLOCK_BYTES).zip(x) {
        let quants = unpack(block);
        let scaled_sum: i32 = quants
            .chunks_exact(16)
            .zip(act.quants.chunks_exact(16))
            .zip(scales(block))
            .map(|((w, a), scale)| {
                let sum: i32 = w.iter().zip(a).map(|(&w, &a)| w as i32 * a as i32).sum();
                scale as i32 * sum
            })
            .sum();
        total += f16_at(&block[D..]) * act.scale * scaled_sum as f32;
    }
    total
}

/// Per 32 values: the unsigned 6-bit quants (unpacked once for all inputs) times the activation
/// quants with `maddubs` (pair sums at most 2 * 63 * 127), minus 32 times the activation quants
/// (the same instruction, 2 * 32 * 127) for the offset, then each 16-value half times its scale
/// with `madd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const N: usize>(weights: &[u8], inputs: [&[BlockQ8K]; N]) -> [f32; N] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let thirty_two = _mm256_set1_epi8(32);
    let two_bits = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, block) in weights.chunks_exact(BLOCK_BYTES).enumerate() {
        let scales = scales(block);
        let mut sums = [_mm256_setzero_si256(); N];
        for half in 0..2 {
            let (first_low, first_high) = split_nibbles(load_u8x32(&block[64 * half..]));
            let (second_low, second_high) = split_nibbles(load_u8x32(&block[64 * half + 32..]));
            let bit_pairs = load_u8x32(&block[128 + 32 * half..]);
            let low_nibbles = [first_low, second_low, first_high, second_high];
            for (quarter, low) in low_nibbles.into_iter().enumerate() {
                // The shifts are 16-bit wide: the mask drops what moves in from the next byte,
                // and the shift left by 4 of a value below 4 stays inside its byte.
                let high = match quarter {
                    0 => _mm256_and_si256(bit_pairs, two_bits),
                    1 => _mm256_and_si256(_mm256_srli_epi16(bit_pairs, 2), two_bits),
                    2 => _mm256_and_si256(_mm256_srli_epi16(bit_pairs, 4), two_bits),
                    _ => _mm256_and_si256(_mm256_srli_epi16(bit_pairs, 6), two_bits),
                };
                let quants = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                let offset = 128 * half + 32 * quarter;
                let group = offset / 16;
                let group_scales = _mm256_set_m128i(
                    _mm_set1_epi16(scales[group + 1] as i16),
                    _mm_set1_epi16(scales[group] as i16),
                );
                for (sums, x) in sums.iter_mut().zip(inputs) {
                    let activations = load_i8x32(&x[b].quants[offset..]);
                    let products = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(quants, activations),
                        _mm256_maddubs_epi16(thirty_two, activations),
                    );
                    *sums = _mm256_add_epi32(*sums, _mm256_madd_epi16(products, group_scales));
                }
            }
        }
        let d = f16_at(&block[D..]);
        for k in 0..N {
            let scale = _mm256_set1_ps(d * inputs[k][b].scale);
            acc[k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[k]), acc[k]);
        }
    }
    let mut totals = [0f32; N];
    for k in 0..N {
        totals[k] = sum_f32x8(acc[k]);
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q6K);
}

//! Q5_K (ggml's `block_q5_K`): blocks of 256 values in 8 sub-blocks of 32, value
//! `d * scale[s] * q - dmin * min[s]` with q in 0..=31 and 6-bit `scale`, `min` per sub-block.
//!
//! Bytes of a block: f16 `d`, f16 `dmin`, 12 bytes of scales and minimums packed as Q4_K's, 32
//! bytes of fifth bits (bit s of byte l is the fifth bit of value l of sub-block s), then 128
//! bytes of low nibbles laid out as Q4_K's.

use super::activations::{BlockQ8K, QK_K};
use super::fields::f16_at;
use super::q4_k::{minimums_times_sums, scales_and_mins};
use super::row_dot::RowDot;

const BLOCK_BYTES: usize = 176;

/// The quants of one block, in value order.
fn unpack(block: &[u8]) -> [u8; QK_K] {
    let (fifth_bits, nibbles) = (&block[16..48], &block[48..176]);
    std::array::from_fn(|i| {
        let (sub, l) = (i / 32, i % 32);
        let low = (nibbles[32 * (sub / 2) + l] >> (4 * (sub % 2))) & 0x0F;
        low | (((fifth_bits[l] >> sub) & 1) << 4)
    })
}

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, out) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (d, dmin) = (f16_at(block), f16_at(&block[2..]));
        let (scales, mins) = scales_and_mins(&block[4..]);
        let quants = unpack(block);
        for (s, (out, quants)) in out
            .chunks_exact_mut(32)
            .zip(quants.chunks_exact(32))
            .enumerate()
        {
            // As ggml: the sub-block's factors first, then one multiply and one subtraction.
            let (scale, min) = (d * scales[s] as f32, dmin * mins[s] as f32);
            for (y, &q) in out.iter_mut().zip(quants) {
                *y = scale * q as f32 - min;
            }
        }
    }
}

/// One Q5_K weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q5_k_q8_k(weights: &[u8], x: &[BlockQ8K]) -> f32 {
    Kernel::dot_rows(weights, [x])[0]
}

/// Q5_K's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8K;

    fn dot_rows<const N: usize>(weights: &[u8], inputs: [&[BlockQ8K]; N]) -> [f32; N] {
        for x in inputs {
            assert_eq!(
                weights.len(),
                x.len() * BLOCK_BYTES,
                "a Q5_K row must hold one block per activation block"
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
        let (scales, mins) = scales_and_mins(&block[4..]);
        let quants = unpack(block);
        let scaled_sum: i32 = quants
            .chunks_exact(32)
            .zip(act.quants.chunks_exact(32))
            .zip(scales)
            .map(|((w, a), scale)| {
                let sum: i32 = w.iter().zip(a).map(|(&w, &a)| w as i32 * a as i32).sum();
                scale as i32 * sum
            })
            .sum();
        let d = f16_at(block) * act.scale;
        let dmin = f16_at(&block[2..]) * act.scale;
        total += d * scaled_sum as f32 - dmin * minimums_times_sums(&mins, act) as f32;
    }
    total
}

/// As Q4_K's kernel, with each sub-block's fifth bits added as 16 before the `maddubs` (pair sums
/// at most 2 * 31 * 127).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const N: usize>(weights: &[u8], inputs: [&[BlockQ8K]; N]) -> [f32; N] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    let mut minimums = [0f32; N];
    for (b, block) in weights.chunks_exact(BLOCK_BYTES).enumerate() {
        let (scales, mins) = scales_and_mins(&block[4..]);
        // Bit 0 of every byte is the fifth bit of the next sub-block: shifted right once per
        // sub-block (bits moving in from the neighbouring byte only reach bits 1..=7).
        let mut fifth_bits = load_u8x32(&block[16..]);
        let mut sums = [_mm256_setzero_si256(); N];
        for pair in 0..4 {
            let (low, high) = split_nibbles(load_u8x32(&block[48 + 32 * pair..]));
            let low = _mm256_or_si256(low, bit_zero_as_sixteen(fifth_bits));
            fifth_bits = _mm256_srli_epi16(fifth_bits, 1);
            let high = _mm256_or_si256(high, bit_zero_as_sixteen(fifth_bits));
            fifth_bits = _mm256_srli_epi16(fifth_bits, 1);
            let low_scale = _mm256_set1_epi16(scales[2 * pair] as i16);
            let high_scale = _mm256_set1_epi16(scales[2 * pair + 1] as i16);
            for (sums, x) in sums.iter_mut().zip(inputs) {
                let quants = &x[b].quants[64 * pair..];
                let low_products = _mm256_maddubs_epi16(low, load_i8x32(quants));
                let high_products = _mm256_maddubs_epi16(high, load_i8x32(&quants[32..]));
                *sums = _mm256_add_epi32(*sums, _mm256_madd_epi16(low_products, low_scale));
                *sums = _mm256_add_epi32(*sums, _mm256_madd_epi16(high_products, high_scale));
            }
        }
        let (d, dmin) = (f16_at(block), f16_at(&block[2..]));
        for k in 0..N {
            let act = &inputs[k][b];
            let scale = _mm256_set1_ps(d * act.scale);
            acc[k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[k]), acc[k]);
            minimums[k] += dmin * act.scale * minimums_times_sums(&mins, act) as f32;
        }
    }
    let mut totals = [0f32; N];
    for k in 0..N {
        totals[k] = sum_f32x8(acc[k]) - minimums[k];
    }
    totals
}

/// 16 in every byte of `bits` whose bit 0 is set, 0 elsewhere: bit 0 moved to bit 4 (the 16-bit
/// shift carries the byte's bits 4..=7 into the next byte's bits 0..=3, which the mask drops).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_zero_as_sixteen(bits: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_and_si256(_mm256_slli_epi16(bits, 4), _mm256_set1_epi8(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q5K);
}

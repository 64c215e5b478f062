//! Q4_K (ggml's `block_q4_K`): blocks of 256 values in 8 sub-blocks of 32, value
//! `d * scale[s] * q - dmin * min[s]` with q in 0..=15 and 6-bit `scale`, `min` per sub-block.
//!
//! Bytes of a block: f16 `d`, f16 `dmin`, 12 bytes of packed scales and minimums (see
//! [`scales_and_mins`]), then 128 bytes of nibbles: bytes 32p..32p + 32 hold sub-block 2p in their
//! low nibbles and sub-block 2p + 1 in their high nibbles.

use super::activations::{BlockQ8K, QK_K};
use super::fields::f16_at;
use super::row_dot::RowDot;

const BLOCK_BYTES: usize = 144;

/// The eight 6-bit scales and eight 6-bit minimums packed into 12 bytes, as ggml's
/// `get_scale_min_k4` reads them: bytes 0..4 hold scales 0..4 in their low six bits, bytes 4..8
/// minimums 0..4; scales and minimums 4..8 take their low four bits from bytes 8..12 (scale in
/// the low nibble, minimum in the high one) and their top two bits from the spare top bits of
/// bytes 0..4 (scales) and 4..8 (minimums). Shared with Q5_K.
pub(super) fn scales_and_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    // Four bytes at a time, as ggml's AVX2 kernels do: the same masks and shifts apply to every
    // byte of a word, and no shift carries a bit into a kept position of a neighbouring byte.
    const LOW_SIX: u32 = 0x3f3f_3f3f;
    const LOW_FOUR: u32 = 0x0f0f_0f0f;
    const TWO: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (first, second, third) = (word(0), word(4), word(8));
    let scales_0_4 = first & LOW_SIX;
    let mins_0_4 = second & LOW_SIX;
    let scales_4_8 = (third & LOW_FOUR) | (((first >> 6) & TWO) << 4);
    let mins_4_8 = ((third >> 4) & LOW_FOUR) | (((second >> 6) & TWO) << 4);
    let join = |low: u32, high: u32| {
        let (low, high) = (low.to_le_bytes(), high.to_le_bytes());
        [
            low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3],
        ]
    };
    (join(scales_0_4, scales_4_8), join(mins_0_4, mins_4_8))
}

/// The quants of one block, in value order.
fn unpack(block: &[u8]) -> [u8; QK_K] {
    let nibbles = &block[16..144];
    std::array::from_fn(|i| {
        let (pair, sub, l) = (i / 64, i / 32 % 2, i % 32);
        (nibbles[32 * pair + l] >> (4 * sub)) & 0x0F
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

/// One Q4_K weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q4_k_q8_k(weights: &[u8], x: &[BlockQ8K]) -> f32 {
    Kernel::dot_rows(weights, [x])[0]
}

/// Q4_K's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8K;

    fn dot_rows<const N: usize>(weights: &[u8], inputs: [&[BlockQ8K]; N]) -> [f32; N] {
        for x in inputs {
            assert_eq!(
                weights.len(),
                x.len() * BLOCK_BYTES,
                "a Q4_K row must hold one block per activation block"
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

/// sum over sub-blocks s of min[s] * (the sum of the activation quants of s): the part of a
/// K-quant block's product that the minimums subtract. Shared with Q5_K.
pub(super) fn minimums_times_sums(mins: &[u8; 8], act: &BlockQ8K) -> i32 {
    mins.iter()
        .zip(act.sums.chunks_exact(2))
        .map(|(&m, sums)| m as i32 * (sums[0] as i32 + sums[1] as i32))
        .sum()
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

/// Per block: 32 nibbles and 32 activation quants per `maddubs` (nibbles unsigned, quants signed;
/// pair sums at most 2 * 15 * 127), times the sub-block's scale with `madd`, added as i32. The
/// nibbles and scales are unpacked once per block for all inputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const N: usize>(weights: &[u8], inputs: [&[BlockQ8K]; N]) -> [f32; N] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    let mut minimums = [0f32; N];
    for (b, block) in weights.chunks_exact(BLOCK_BYTES).enumerate() {
        let (scales, mins) = scales_and_mins(&block[4..]);
        let mut sums = [_mm256_setzero_si256(); N];
        for pair in 0..4 {
            let (low, high) = split_nibbles(load_u8x32(&block[16 + 32 * pair..]));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q4K);

    #[test]
    fn scales_and_mins_unpack_as_ggml_documents() {
        // Six-bit values with and without their top bits set, packed by hand the way ggml's
        // quantize_row_q4_K_ref writes them.
        let scales: [u8; 8] = [1, 2, 63, 4, 17, 33, 50, 63];
        let mins: [u8; 8] = [56, 0, 31, 63, 5, 48, 16, 62];
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
            packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
            packed[j + 8] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4);
        }
        assert_eq!(scales_and_mins(&packed), (scales, mins));
    }
}

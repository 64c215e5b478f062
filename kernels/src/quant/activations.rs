//! Activations quantized to 8 bits per value, the right-hand side of the integer dot products.
//!
//! As in llama.cpp, a weight row in Q4_0/Q5_0/Q8_0 meets its input in Q8_0 blocks of 32 values
//! and a K-quant row meets it in Q8_K blocks of 256 values (with the sums of every 16 quants, which
//! the K-quants' per-sub-block minimums need). Quantizing the input once per matmul costs
//! O(cols); it turns every weight block's work into byte multiplies.
//!
//! These blocks live only in memory, never in a file, so they keep the scale as f32 where ggml's
//! `block_q8_0` stores f16: one rounding fewer and no conversion in the inner loop.
//!
//! Rounding is to nearest, ties to even (`round_ties_even`, the rounding of the vector
//! instructions and of ggml's `nearest_int`), and quants stay in -127..=127: never -128, which
//! keeps the AVX2 kernels' `maddubs` pair sums (at most 2 * 128 * 127) clear of i16 saturation.

/// Values per Q8_0 block (ggml's `QK8_0`).
pub const QK8_0: usize = 32;
/// Values per K-quant and Q8_K block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// 32 values as `scale * quants[i]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub scale: f32,
    pub quants: [i8; QK8_0],
}

/// 256 values as `scale * quants[i]`, with `sums[j]` = the sum of `quants[16 j..16 j + 16]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub scale: f32,
    pub quants: [i8; QK_K],
    pub sums: [i16; QK_K / 16],
}

impl BlockQ8_0 {
    pub const ZERO: Self = Self {
        scale: 0.0,
        quants: [0; QK8_0],
    };
}

impl BlockQ8K {
    pub const ZERO: Self = Self {
        scale: 0.0,
        quants: [0; QK_K],
        sums: [0; QK_K / 16],
    };
}

/// Quantizes `x` into `out`, one block per 32 values.
///
/// Each block's scale is max|x| / 127; values are expected finite.
/// Panics unless `x.len() == 32 * out.len()`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), out.len() * QK8_0, "Q8_0 takes 32 values per block");
    for (values, block) in x.chunks_exact(QK8_0).zip(out.iter_mut()) {
        block.scale = quantize_block(values, &mut block.quants);
    }
}

/// Quantizes `x` into `out`, one block per 256 values, with the 16-value sums.
///
/// Each block's scale is max|x| / 127; values are expected finite.
/// Panics unless `x.len() == 256 * out.len()`.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K, "Q8_K takes 256 values per block");
    for (values, block) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        block.scale = quantize_block(values, &mut block.quants);
        for (sum, quants) in block.sums.iter_mut().zip(block.quants.chunks_exact(16)) {
            // At most 16 * 127 in magnitude: fits i16.
            *sum = quants.iter().map(|&q| q as i16).sum();
        }
    }
}

/// Writes round(x / scale) into `quants` and returns the scale, max|x| / 127 (0 for an all-zero
/// block, whose quants are then all 0).
fn quantize_block(values: &[f32], quants: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if values.len().is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { quantize_block_avx512(values, quants) };
        }
        if super::x86::has_avx2_fma_f16c() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { quantize_block_avx2(values, quants) };
        }
    }
    quantize_block_any(values, quants)
}

/// [`quantize_block`] on AVX-512, 16 values per instruction, with the same bits as the portable
/// code: the largest magnitude by `vmaxps` (which, as `f32::max` there, passes over a NaN:
/// the running maximum is its second operand), the rounding to nearest even by `vrndscaleps`,
/// NaN lanes to 0 (as `as i8` maps them) and the narrowing by `vpmovsdb`. Compilers leave the
/// portable loop's NaN-aware maximum and saturating casts scalar; in a prompt's products these
/// took 4% of the time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn quantize_block_avx512(values: &[f32], quants: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;

    let load = |chunk: &[f32]| {
        debug_assert_eq!(chunk.len(), 16);
        // SAFETY: chunks_exact(16) gives 16 floats; loadu has no alignment requirement.
        unsafe { _mm512_loadu_ps(chunk.as_ptr()) }
    };
    let mut largest = _mm512_setzero_ps();
    for chunk in values.chunks_exact(16) {
        largest = _mm512_max_ps(_mm512_abs_ps(load(chunk)), largest);
    }
    let max_abs = _mm512_reduce_max_ps(largest);
    if max_abs == 0.0 {
        quants.fill(0);
        return 0.0;
    }
    let inverse = _mm512_set1_ps(127.0 / max_abs);
    let (low, high) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for (chunk, out) in values.chunks_exact(16).zip(quants.chunks_exact_mut(16)) {
        let rounded = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(load(chunk), inverse),
        );
        let numbers = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(rounded, rounded);
        let clamped = _mm512_min_ps(_mm512_max_ps(rounded, low), high);
        let bytes = _mm512_cvtsepi32_epi8(_mm512_maskz_cvtps_epi32(numbers, clamped));
        // SAFETY: `out` holds 16 bytes; storeu has no alignment requirement.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), bytes) };
    }
    max_abs / 127.0
}

/// [`quantize_block`] compiled for AVX2: the same operations, so the same bits, but the rounding
/// is one vector instruction (`vroundps`) where the baseline x86-64 target calls libm's `rintf`
/// per value.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block_avx2(values: &[f32], quants: &mut [i8]) -> f32 {
    quantize_block_any(values, quants)
}

#[inline(always)]
fn quantize_block_any(values: &[f32], quants: &mut [i8]) -> f32 {
    let max_abs = values.iter().fold(0f32, |max, v| max.max(v.abs()));
    if max_abs == 0.0 {
        quants.fill(0);
        return 0.0;
    }
    // Both factors are one correctly rounded division, so q * scale is within scale / 2 (plus a
    // few ulps) of x.
    let inverse = 127.0 / max_abs;
    for (q, &v) in quants.iter_mut().zip(values) {
        // |v * inverse| <= 127 up to rounding, so the clamp only guards the last ulp; `as`
        // saturates and maps a NaN to 0.
        *q = (v * inverse).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    max_abs / 127.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 100.0 - 10.0)
            .collect()
    }

    #[test]
    fn q8_0_values_come_back_within_half_a_step() {
        let x = values(5 * QK8_0, 1);
        let mut blocks = vec![BlockQ8_0::ZERO; 5];
        quantize_row_q8_0(&x, &mut blocks);
        for (values, block) in x.chunks_exact(QK8_0).zip(&blocks) {
            let max_abs = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(block.scale, max_abs / 127.0);
            assert!(block.quants.iter().any(|q| q.abs() == 127));
            for (v, q) in values.iter().zip(block.quants) {
                assert!((v - q as f32 * block.scale).abs() <= 0.5001 * block.scale);
            }
        }
    }

    #[test]
    fn q8_k_sums_are_the_sums_of_sixteen_quants() {
        let x = values(3 * QK_K, 2);
        let mut blocks = vec![BlockQ8K::ZERO; 3];
        quantize_row_q8_k(&x, &mut blocks);
        for (values, block) in x.chunks_exact(QK_K).zip(&blocks) {
            for (j, sum) in block.sums.iter().enumerate() {
                let expected: i32 = block.quants[16 * j..16 * j + 16]
                    .iter()
                    .map(|&q| q as i32)
                    .sum();
                assert_eq!(*sum as i32, expected);
            }
            for (v, q) in values.iter().zip(block.quants) {
                assert!((v - q as f32 * block.scale).abs() <= 0.5001 * block.scale);
            }
        }
    }

    #[test]
    fn zero_blocks_and_extremes() {
        let mut x = vec![0f32; QK_K];
        x[QK_K / 2..].fill(-3.0);
        x[QK_K / 2] = 3.0;
        let mut k = [BlockQ8K::ZERO];
        quantize_row_q8_k(&x, &mut k);
        assert_eq!(k[0].quants[0], 0);
        assert_eq!(k[0].quants[QK_K / 2], 127);
        assert_eq!(k[0].quants[QK_K - 1], -127);
        assert_eq!(k[0].sums[8], 127 - 15 * 127);
        assert_eq!(k[0].sums[15], -16 * 127);

        let mut zero = [BlockQ8_0::ZERO; 2];
        zero[0].quants[3] = 9;
        quantize_row_q8_0(&[0.0; 2 * QK8_0], &mut zero);
        assert_eq!(zero, [BlockQ8_0::ZERO; 2]);
    }

    /// Blocks that test every rule: random values, exact ties of the rounding (x * 127 / max
    /// landing on k + 0.5), a NaN, infinities, zeros and subnormals.
    fn awkward_blocks(len: usize) -> Vec<Vec<f32>> {
        let mut blocks = vec![values(len, 7), vec![0.0; len], vec![1e-40; len]];
        let mut ties: Vec<f32> = (0..len).map(|i| (i % 64) as f32 + 0.5).collect();
        ties[0] = 127.0;
        blocks.push(ties);
        let mut nan = values(len, 8);
        nan[len / 3] = f32::NAN;
        blocks.push(nan);
        let mut infinite = values(len, 9);
        infinite[1] = f32::INFINITY;
        infinite[len - 1] = f32::NEG_INFINITY;
        blocks.push(infinite);
        let mut negative_largest = values(len, 10);
        negative_largest[len / 2] = -40.0;
        blocks.push(negative_largest);
        blocks
    }

    #[test]
    fn every_instruction_set_quantizes_to_the_portable_bits() {
        for len in [QK8_0, QK_K] {
            for block in awkward_blocks(len) {
                let mut portable = vec![0i8; len];
                let portable_scale = quantize_block_any(&block, &mut portable);
                #[cfg(target_arch = "x86_64")]
                {
                    let mut fast = vec![1i8; len];
                    if super::super::x86::has_avx2_fma_f16c() {
                        // SAFETY: the CPU has the features.
                        let scale = unsafe { quantize_block_avx2(&block, &mut fast) };
                        assert_eq!(scale.to_bits(), portable_scale.to_bits());
                        assert_eq!(fast, portable, "AVX2, {len} values");
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        fast.fill(1);
                        // SAFETY: the CPU has the features.
                        let scale = unsafe { quantize_block_avx512(&block, &mut fast) };
                        assert_eq!(scale.to_bits(), portable_scale.to_bits());
                        assert_eq!(fast, portable, "AVX-512, {len} values");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "256 values per block")]
    fn q8_k_refuses_a_partial_block() {
        quantize_row_q8_k(&[1.0; 300], &mut [BlockQ8K::ZERO; 2]);
    }
}

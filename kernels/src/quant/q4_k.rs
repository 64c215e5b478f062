//! Q4_K (ggml's `block_q4_K`): blocks of 256 values in 8 sub-blocks of 32, value
//! `d * scale[s] * q - dmin * min[s]` with q in 0..=15 and 6-bit `scale`, `min` per sub-block.
//!
//! Bytes of a block: f16 `d`, f16 `dmin`, 12 bytes of packed scales and minimums (see
//! [`scales_and_mins`]), then 128 bytes of nibbles: bytes 32p..32p + 32 hold sub-block 2p in their
//! low nibbles and sub-block 2p + 1 in their high nibbles.

use super::activations::{BlockQ8K, QK_K};
use super::fields::f16_at;
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

const BLOCK_BYTES: usize = 144;

/// The eight 6-bit scales and eight 6-bit minimums packed into 12 bytes, as ggml's
/// `get_scale_min_k4` reads them: bytes 0..4 hold scales 0..4 in their low six bits, bytes 4..8
/// minimums 0..4; scales and minimums 4..8 take their low four bits from bytes 8..12 (scale in
/// the low nibble, minimum in the high one) and their top two bits from the spare top bits of
/// bytes 0..4 (scales) and 4..8 (minimums). Shared with Q5_K.
#[inline]
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
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q4_K's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8K;

    /// A row's unpacked nibbles and scales meet 8 inputs (the tile's 8 sums, the row's two
    /// unpacked sub-blocks and their scales fit the sixteen registers). Same run, 1 thread,
    /// Q4_K 1408x2048 n=64, 300 calls: 2484-2534 ms of CPU with 2 rows x 4 inputs, 1712-1812
    /// with 1 row x 8 inputs.
    fn inputs_at_once() -> usize {
        8
    }

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q4_K");
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_avx2(rows, inputs) };
            }
        }
        tile_by_pairs(rows, inputs, dot_portable)
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

/// A tile of R rows times N inputs. Per sub-block of 32 values: each row's nibbles (unsigned)
/// times the input's quants with `maddubs` (pair sums at most 2 * 15 * 127), times the
/// sub-block's scale with `madd`, added as i32; the nibbles and scales are unpacked once per
/// tile and each input's quants loaded once per tile. Per block, the minimums meet the input's
/// 16-value sums (added in pairs: the sums of the 32-value sub-blocks) with one `madd`, and are
/// taken off the same float accumulator. Blocks are read without a bounds check per load (one
/// length check per tile): `quant_matmul` bench, n = 1, 1 thread, same sitting, 1408x2048
/// 8.7 -> 13.6 GB/s and 10944x2048 10.1 -> 14.0 GB/s when that was done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&[BlockQ8K]; N],
) -> [[f32; N]; R] {
    with_minimums_tile::<R, N, false>(rows, inputs)
}

/// The tile of [`dot_avx2`] for the K-quants with minimums: Q4_K, or Q5_K when `FIFTH` (each
/// sub-block's fifth bits added as 16 before the `maddubs`: pair sums at most 2 * 31 * 127).
// Blocks, rows and inputs are indexed together (block b of row r meets block b of input k).
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn with_minimums_tile<const R: usize, const N: usize, const FIFTH: bool>(
    rows: [&[u8]; R],
    inputs: [&[BlockQ8K]; N],
) -> [[f32; N]; R] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let (block_bytes, nibbles_at) = if FIFTH { (176, 48) } else { (BLOCK_BYTES, 16) };
    let low_mask = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let blocks = check_tile_lengths(&rows, &inputs, block_bytes);
    for b in 0..blocks {
        // SAFETY: b < blocks, checked against every row and input above.
        let (row_blocks, acts) = unsafe { tile_blocks(rows, inputs, b, block_bytes) };
        let mut scales = [_mm256_setzero_si256(); R];
        let mut mins = [_mm_setzero_si128(); R];
        let mut d = [_mm256_setzero_ps(); R];
        let mut dmin = [_mm256_setzero_ps(); R];
        let mut fifth_bits = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let block = row_blocks[r];
            (scales[r], mins[r]) = scales_and_mins_avx2(&block[4..]);
            d[r] = _mm256_set1_ps(f16_at(block));
            dmin[r] = _mm256_set1_ps(f16_at(&block[2..]));
            if FIFTH {
                fifth_bits[r] = load_u8x32(&block[16..]);
            }
        }
        let mut sums = [[_mm256_setzero_si256(); N]; R];
        // The two bytes of i16 lane s in every lane picks sub-block s's scale.
        let mut pick_low = _mm256_set1_epi16(0x0100);
        for pair in 0..4 {
            let pick_high = _mm256_add_epi8(pick_low, _mm256_set1_epi8(2));
            let mut low = [_mm256_setzero_si256(); R];
            let mut high = [_mm256_setzero_si256(); R];
            let mut low_scale = [_mm256_setzero_si256(); R];
            let mut high_scale = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let packed = load_u8x32(&row_blocks[r][nibbles_at + 32 * pair..]);
                // The 16-bit shift moves the neighbour byte's low bits in; the mask drops them.
                low[r] = _mm256_and_si256(packed, low_mask);
                high[r] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask);
                if FIFTH {
                    // Bits 0 and 1 of every byte are the fifth bits of this pair's sub-blocks,
                    // moved to bit 4 (from within the byte; the mask drops what crosses).
                    let bits = fifth_bits[r];
                    low[r] = _mm256_or_si256(
                        low[r],
                        _mm256_and_si256(_mm256_slli_epi16(bits, 4), sixteen),
                    );
                    high[r] = _mm256_or_si256(
                        high[r],
                        _mm256_and_si256(_mm256_slli_epi16(bits, 3), sixteen),
                    );
                    fifth_bits[r] = _mm256_srli_epi16(bits, 2);
                }
                low_scale[r] = _mm256_shuffle_epi8(scales[r], pick_low);
                high_scale[r] = _mm256_shuffle_epi8(scales[r], pick_high);
            }
            for k in 0..N {
                let quants = &acts[k].quants[64 * pair..];
                let low_activations = load_i8x32(quants);
                let high_activations = load_i8x32(&quants[32..]);
                for r in 0..R {
                    let low_products = _mm256_maddubs_epi16(low[r], low_activations);
                    let high_products = _mm256_maddubs_epi16(high[r], high_activations);
                    sums[r][k] = _mm256_add_epi32(
                        sums[r][k],
                        _mm256_add_epi32(
                            _mm256_madd_epi16(low_products, low_scale[r]),
                            _mm256_madd_epi16(high_products, high_scale[r]),
                        ),
                    );
                }
            }
            pick_low = _mm256_add_epi8(pick_low, _mm256_set1_epi8(4));
        }
        for k in 0..N {
            let act = acts[k];
            let sixteens = load_i16x16(&act.sums);
            // Sums of 32 quants: at most 32 * 127 in magnitude.
            let sub_block_sums = _mm_hadd_epi16(
                _mm256_castsi256_si128(sixteens),
                _mm256_extracti128_si256(sixteens, 1),
            );
            let act_scale = _mm256_set1_ps(act.scale);
            for r in 0..R {
                let scale = _mm256_mul_ps(d[r], act_scale);
                acc[r][k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[r][k]), acc[r][k]);
                // The minimums' four sums in the low lanes, zeros above: one accumulator.
                let min_scale = _mm256_mul_ps(dmin[r], act_scale);
                let min_sums = _mm256_zextsi128_si256(_mm_madd_epi16(mins[r], sub_block_sums));
                acc[r][k] = _mm256_fnmadd_ps(min_scale, _mm256_cvtepi32_ps(min_sums), acc[r][k]);
            }
        }
    }
    let mut totals = [[0f32; N]; R];
    for r in 0..R {
        for k in 0..N {
            totals[r][k] = sum_f32x8(acc[r][k]);
        }
    }
    totals
}

/// The block's eight scales as i16 in lanes 0..8 of both halves (for `shuffle_epi8` to pick
/// from) and its eight minimums as i16, from the 12 packed bytes: [`scales_and_mins`] on words,
/// widened once. Shared with Q5_K.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales_and_mins_avx2(
    packed: &[u8],
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m128i) {
    use std::arch::x86_64::*;
    let word =
        |i: usize| i32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (first, second, third) = (word(0), word(4), word(8));
    const LOW_SIX: i32 = 0x3f3f_3f3f;
    const LOW_FOUR: i32 = 0x0f0f_0f0f;
    const TWO: i32 = 0x0303_0303;
    let scales_0_4 = first & LOW_SIX;
    let mins_0_4 = second & LOW_SIX;
    let scales_4_8 = (third & LOW_FOUR) | (((first >> 6) & TWO) << 4);
    let mins_4_8 = ((third >> 4) & LOW_FOUR) | (((second >> 6) & TWO) << 4);
    let wide = _mm256_cvtepu8_epi16(_mm_setr_epi32(scales_0_4, scales_4_8, mins_0_4, mins_4_8));
    (
        _mm256_broadcastsi128_si256(_mm256_castsi256_si128(wide)),
        _mm256_extracti128_si256(wide, 1),
    )
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

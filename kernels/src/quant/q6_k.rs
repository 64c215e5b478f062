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
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

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
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q6_K's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8K;

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q6_K");
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

/// A tile of R rows times N inputs. Per 32 values: each row's unsigned 6-bit quants (unpacked
/// once per tile) times the input's quants with `maddubs` (pair sums at most 2 * 63 * 127), then
/// each 16-value half times its scale with `madd`. The offset of 32 is taken off once per block:
/// 32 * sum over groups of scale * (the input's 16-value sum), one `madd` against the sums the
/// Q8_K block carries. Blocks are read without a bounds check per load (one length check per
/// tile): `quant_matmul` bench, n = 1, 1 thread, same sitting, 1408x2048 15.2 -> 19.2 GB/s when
/// that was done.
// Blocks, rows and inputs are indexed together (block b of row r meets block b of input k).
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&[BlockQ8K]; N],
) -> [[f32; N]; R] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let low_mask = _mm256_set1_epi8(0x0F);
    let high_mask = _mm256_set1_epi8(0x30);
    // The scales' bytes reordered even groups first, then odd ones.
    let evens_then_odds = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let blocks = check_tile_lengths(&rows, &inputs, BLOCK_BYTES);
    for b in 0..blocks {
        // SAFETY: b < blocks, checked against every row and input above.
        let (row_blocks, acts) = unsafe { tile_blocks(rows, inputs, b, BLOCK_BYTES) };
        // Per row: the 16 scales as i16 in group order (for the offset), and as i16 with the
        // even groups in the low half and the odd ones in the high half (the halves of 32
        // values are groups 2q and 2q + 1).
        let mut scales = [_mm256_setzero_si256(); R];
        let mut split_scales = [_mm256_setzero_si256(); R];
        let mut d = [_mm256_setzero_ps(); R];
        for r in 0..R {
            let block = row_blocks[r];
            let bytes = load_u8x16(&block[SCALES..]);
            scales[r] = _mm256_cvtepi8_epi16(bytes);
            split_scales[r] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(bytes, evens_then_odds));
            d[r] = _mm256_set1_ps(f16_at(&block[D..]));
        }
        let mut sums = [[_mm256_setzero_si256(); N]; R];
        for half in 0..2 {
            let mut bit_pairs = [_mm256_setzero_si256(); R];
            for r in 0..R {
                bit_pairs[r] = load_u8x32(&row_blocks[r][128 + 32 * half..]);
            }
            for quarter in 0..4 {
                let q = 4 * half + quarter;
                // The two bytes of i16 lane q, in every lane.
                let pick = _mm256_set1_epi16((((2 * q + 1) << 8) | (2 * q)) as i16);
                let mut quants = [_mm256_setzero_si256(); R];
                let mut scale = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let nibbles = load_u8x32(&row_blocks[r][64 * half + 32 * (quarter % 2)..]);
                    let bit_pairs = bit_pairs[r];
                    // The shifts are 16-bit wide: every kept bit comes from its own byte, and
                    // what moves in from the neighbouring byte the masks drop.
                    let low = if quarter < 2 {
                        _mm256_and_si256(nibbles, low_mask)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low_mask)
                    };
                    let high = match quarter {
                        0 => _mm256_slli_epi16(bit_pairs, 4),
                        1 => _mm256_slli_epi16(bit_pairs, 2),
                        2 => bit_pairs,
                        _ => _mm256_srli_epi16(bit_pairs, 2),
                    };
                    quants[r] = _mm256_or_si256(low, _mm256_and_si256(high, high_mask));
                    scale[r] = _mm256_shuffle_epi8(split_scales[r], pick);
                }
                for k in 0..N {
                    let activations = load_i8x32(&acts[k].quants[32 * q..]);
                    for r in 0..R {
                        let products = _mm256_maddubs_epi16(quants[r], activations);
                        sums[r][k] =
                            _mm256_add_epi32(sums[r][k], _mm256_madd_epi16(products, scale[r]));
                    }
                }
            }
        }
        for k in 0..N {
            let act = acts[k];
            let sixteens = load_i16x16(&act.sums);
            let act_scale = _mm256_set1_ps(act.scale);
            for r in 0..R {
                // At most 2 * 128 * 16 * 127 per lane before the shift: far inside i32.
                let offsets = _mm256_slli_epi32(_mm256_madd_epi16(scales[r], sixteens), 5);
                let total = _mm256_sub_epi32(sums[r][k], offsets);
                let scale = _mm256_mul_ps(d[r], act_scale);
                acc[r][k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), acc[r][k]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q6K);
}

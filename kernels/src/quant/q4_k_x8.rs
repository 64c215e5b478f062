//! Q4_K with eight rows interleaved: the same blocks as a GGUF file's Q4_K rows, rearranged so
//! that one vector instruction works on eight rows at once.
//!
//! A row-by-row Q4_K product spends about half its instructions per block on work that is the
//! same for every block: unpacking the 6-bit scales with scalar shifts, picking each sub-block's
//! scale out of a register, converting the two f16 factors, and adding up a row's lanes at the
//! end. With eight rows side by side, each of those steps covers eight rows, and the lanes of
//! the result are the eight rows' products, so nothing is summed across lanes. (llama.cpp's
//! CPU "repack" buffers do the same for the same reason; the layout here is our own.)
//!
//! Layout: a matrix of `rows` (a multiple of 8) rows is `rows / 8` groups, each group the blocks
//! of its eight rows in column order, one 1152-byte *group block* per column of Q4_K blocks:
//!
//! | bytes | what |
//! |---|---|
//! | 0..16 | the eight rows' `d` (f16), row r at 2r |
//! | 16..32 | the eight rows' `dmin` (f16) |
//! | 32..128 | the packed scales: word w (bytes 4w..4w + 4 of a row's 12) of row r at 32 + 32w + 4r |
//! | 128..1152 | the nibbles: bytes 32p + 4j..32p + 4j + 4 of row r's 128 at 128 + 32 (8p + j) + 4r |
//!
//! so every 32-byte load holds one piece of each of the eight rows. A group block is exactly
//! eight Q4_K blocks, so the matrix keeps its size.

use super::activations::BlockQ8K;
use super::interleaved::GroupBlock;
use super::q8_k_groups::{self, Q8KGroups};
use super::{GgmlType, q4_k};

/// Rows interleaved together.
pub const ROWS: usize = super::interleaved::ROWS_TOGETHER;
const BLOCK_BYTES: usize = 144;
const GROUP_BLOCK_BYTES: usize = ROWS * BLOCK_BYTES;
const SCALES_AT: usize = 32;
const NIBBLES_AT: usize = 128;

/// Where a row's block goes in a group block and back, and the row-by-row kernel.
pub(super) const GROUP_BLOCK: GroupBlock<BlockQ8K> = GroupBlock {
    ty: GgmlType::Q4K,
    put: put_row,
    take: take_row,
    dot_row: q4_k::dot_q4_k_q8_k,
};

/// Writes one Q4_K block as row r of a group block (see the module's table). Fixed-size
/// copies: the loader runs this over every block of every Q4_K matrix, and copies of lengths
/// known only at run time (a table of ranges shared with [`take_row`]) went through memmove:
/// lite:4 Q4_K_M loaded in 1.87-2.34 s instead of 1.20-1.25 s.
fn put_row(source: &[u8], r: usize, target: &mut [u8]) {
    target[2 * r..2 * r + 2].copy_from_slice(&source[0..2]);
    target[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&source[2..4]);
    for w in 0..3 {
        let to = SCALES_AT + 32 * w + 4 * r;
        target[to..to + 4].copy_from_slice(&source[4 + 4 * w..8 + 4 * w]);
    }
    for piece in 0..32 {
        let to = NIBBLES_AT + 32 * piece + 4 * r;
        target[to..to + 4].copy_from_slice(&source[16 + 4 * piece..20 + 4 * piece]);
    }
}

/// Reads row r of a group block back as a Q4_K block (the inverse of [`put_row`]).
fn take_row(source: &[u8], r: usize, target: &mut [u8]) {
    target[0..2].copy_from_slice(&source[2 * r..2 * r + 2]);
    target[2..4].copy_from_slice(&source[16 + 2 * r..16 + 2 * r + 2]);
    for w in 0..3 {
        let from = SCALES_AT + 32 * w + 4 * r;
        target[4 + 4 * w..8 + 4 * w].copy_from_slice(&source[from..from + 4]);
    }
    for piece in 0..32 {
        let from = NIBBLES_AT + 32 * piece + 4 * r;
        target[16 + 4 * piece..20 + 4 * piece].copy_from_slice(&source[from..from + 4]);
    }
}

/// Q4_K's group kernels, for the shared dispatch and matmul of [`super::q8_k_groups`].
pub(super) struct Q4KGroups;

impl Q8KGroups for Q4KGroups {
    const TYPE: GgmlType = GgmlType::Q4K;
    /// Their accumulators and the group's unpacked nibbles fill the sixteen registers. Measured
    /// (quant_matmul, 1 thread, 1408x2048, two runs each, n=8 / n=64 GOP/s): one at a time
    /// 85.6-89.6 / 93.5-99.2, pairs 124.8-130.9 / 124.0-133.9, fours 130.5-142.4 / 128.3-132.1
    /// (within the noise of pairs, with twice the registers).
    const INPUTS_AT_ONCE_AVX2: usize = 2;

    fn portable<const N: usize>(group: &[u8], inputs: [&[BlockQ8K]; N]) -> [[f32; ROWS]; N] {
        GROUP_BLOCK.portable_products(group, inputs)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; ROWS]; N] {
        // SAFETY: the caller checked the features.
        unsafe { dot_group_avx2::<N, PREFETCH>(group, inputs) }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; ROWS]; N] {
        // SAFETY: the caller checked the features.
        unsafe { dot_group_vnni::<N, PREFETCH>(group, inputs) }
    }
}

/// Writes X W^T into `y` ([n, rows]) for `n` input rows `x` ([n, cols]) and W as [`interleave`]
/// left it: [`super::matmul_rows_quant`] for interleaved Q4_K (see [`q8_k_groups::matmul`]).
///
/// Panics unless `rows` is a multiple of 8, `cols` of 256, and the slices hold what the sizes say
/// (caller bugs).
pub fn matmul_interleaved(
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    q8_k_groups::matmul::<Q4KGroups>(weights, rows, cols, x, n, y)
}

/// Per group block: the nibbles of four pairs of sub-blocks, eight 32-byte loads a pair (each a
/// 4-byte piece of all eight rows), meet each input's four matching quants broadcast to every
/// row with `maddubs`; a sub-block's eight pieces add up in i16 (at most 16 products of 15 * 127:
/// 30480). Each sub-block's sums then meet the eight rows' scales for it with one `madd`, the
/// minimums meet the input's 32-value sums two sub-blocks per `madd` ([`minimums`]), and
/// [`accumulate`] takes the eight rows' products into eight float lanes. With `PREFETCH`, each
/// group block first asks for the weights [`super::x86::PREFETCH_AHEAD_BYTES`] further on.
// Inputs and their accumulators are indexed together.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_group_avx2<const N: usize, const PREFETCH: bool>(
    group: &[u8],
    inputs: [&[BlockQ8K]; N],
) -> [[f32; ROWS]; N] {
    use super::x86::*;
    use std::arch::x86_64::*;
    // Byte k of every 4-byte lane into both i16 halves of the lane (zero above each byte).
    let pick = |k: i8| lane_bytes([k, -1, k, -1]);
    let picks = [pick(0), pick(1), pick(2), pick(3)];
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, block) in group.chunks_exact(GROUP_BLOCK_BYTES).enumerate() {
        if PREFETCH {
            prefetch_ahead(block);
        }
        let [scales_0_4, mins_0_4, scales_4_8, mins_4_8] = scales_and_mins(block);
        let mut sums = [_mm256_setzero_si256(); N];
        for pair in 0..4 {
            let mut low = [_mm256_setzero_si256(); N];
            let mut high = [_mm256_setzero_si256(); N];
            for piece in 0..8 {
                let [low_nibbles, high_nibbles] = piece_nibbles(block, 8 * pair + piece);
                for k in 0..N {
                    let quants = &inputs[k][b].quants[64 * pair + 4 * piece..];
                    let low_quants = _mm256_set1_epi32(four_quants(quants));
                    let high_quants = _mm256_set1_epi32(four_quants(&quants[32..]));
                    low[k] =
                        _mm256_add_epi16(low[k], _mm256_maddubs_epi16(low_nibbles, low_quants));
                    high[k] =
                        _mm256_add_epi16(high[k], _mm256_maddubs_epi16(high_nibbles, high_quants));
                }
            }
            let scales = if pair < 2 { scales_0_4 } else { scales_4_8 };
            let low_scale = _mm256_shuffle_epi8(scales, picks[2 * pair % 4]);
            let high_scale = _mm256_shuffle_epi8(scales, picks[(2 * pair + 1) % 4]);
            for k in 0..N {
                sums[k] = _mm256_add_epi32(
                    sums[k],
                    _mm256_add_epi32(
                        _mm256_madd_epi16(low[k], low_scale),
                        _mm256_madd_epi16(high[k], high_scale),
                    ),
                );
            }
        }
        let min_pairs = minimum_pairs(mins_0_4, mins_4_8);
        accumulate(&mut acc, block, &inputs, b, sums, &min_pairs);
    }
    acc.map(|lanes| lanes_f32x8(lanes))
}

/// [`dot_group_avx2`] with VNNI: `dpbusd` multiplies a piece's nibbles (unsigned) by the
/// input's quants (signed) and adds each row's four products into its i32 lane, one instruction
/// where AVX2 takes `maddubs` and an add; a sub-block's sums stay in i32 (at most
/// 32 * 15 * 127 = 60960) and meet the rows' scales (at most 63) with `mullo`, so a block's sum
/// is at most 8 * 63 * 60960 = 30.7 million. With 32 registers, four inputs
/// share each unpacked piece.
// Inputs and their accumulators are indexed together.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn dot_group_vnni<const N: usize, const PREFETCH: bool>(
    group: &[u8],
    inputs: [&[BlockQ8K]; N],
) -> [[f32; ROWS]; N] {
    use super::x86::*;
    use std::arch::x86_64::*;
    // Byte k of every 4-byte lane as the lane's i32.
    let widen = |k: i8| lane_bytes([k, -1, -1, -1]);
    let widens = [widen(0), widen(1), widen(2), widen(3)];
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, block) in group.chunks_exact(GROUP_BLOCK_BYTES).enumerate() {
        if PREFETCH {
            prefetch_ahead(block);
        }
        let [scales_0_4, mins_0_4, scales_4_8, mins_4_8] = scales_and_mins(block);
        let mut sums = [_mm256_setzero_si256(); N];
        for pair in 0..4 {
            let mut low = [_mm256_setzero_si256(); N];
            let mut high = [_mm256_setzero_si256(); N];
            for piece in 0..8 {
                let [low_nibbles, high_nibbles] = piece_nibbles(block, 8 * pair + piece);
                for k in 0..N {
                    let quants = &inputs[k][b].quants[64 * pair + 4 * piece..];
                    let low_quants = _mm256_set1_epi32(four_quants(quants));
                    let high_quants = _mm256_set1_epi32(four_quants(&quants[32..]));
                    low[k] = _mm256_dpbusd_epi32(low[k], low_nibbles, low_quants);
                    high[k] = _mm256_dpbusd_epi32(high[k], high_nibbles, high_quants);
                }
            }
            let scales = if pair < 2 { scales_0_4 } else { scales_4_8 };
            let low_scale = _mm256_shuffle_epi8(scales, widens[2 * pair % 4]);
            let high_scale = _mm256_shuffle_epi8(scales, widens[(2 * pair + 1) % 4]);
            for k in 0..N {
                sums[k] = _mm256_add_epi32(
                    sums[k],
                    _mm256_add_epi32(
                        _mm256_mullo_epi32(low[k], low_scale),
                        _mm256_mullo_epi32(high[k], high_scale),
                    ),
                );
            }
        }
        let min_pairs = minimum_pairs(mins_0_4, mins_4_8);
        accumulate(&mut acc, block, &inputs, b, sums, &min_pairs);
    }
    acc.map(|lanes| lanes_f32x8(lanes))
}

/// A shuffle mask that applies the same four byte picks to each 4-byte lane: `picks[i]` is the
/// lane's byte to put at position i (-1 for zero).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_bytes(picks: [i8; 4]) -> std::arch::x86_64::__m256i {
    let bytes: [i8; 32] = std::array::from_fn(|i| {
        let pick = picks[i % 4];
        if pick < 0 {
            -1
        } else {
            pick + 4 * (i % 16 / 4) as i8
        }
    });
    // SAFETY: `bytes` holds 32 bytes, and loadu has no alignment requirement.
    unsafe { std::arch::x86_64::_mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// The eight rows' 6-bit scales and minimums of one group block, unpacked as
/// `q4_k::scales_and_mins` does for one row: [scales of sub-blocks 0..4, their minimums, scales
/// of 4..8, their minimums], byte j of row r's 4-byte lane holding sub-block j's (or 4 + j's).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales_and_mins(block: &[u8]) -> [std::arch::x86_64::__m256i; 4] {
    use super::x86::load_u8x32;
    use std::arch::x86_64::*;
    let low_mask = _mm256_set1_epi8(0x0F);
    let low_six = _mm256_set1_epi8(0x3F);
    let two = _mm256_set1_epi8(0x03);
    let first = load_u8x32(&block[SCALES_AT..]);
    let second = load_u8x32(&block[SCALES_AT + 32..]);
    let third = load_u8x32(&block[SCALES_AT + 64..]);
    [
        _mm256_and_si256(first, low_six),
        _mm256_and_si256(second, low_six),
        _mm256_or_si256(
            _mm256_and_si256(third, low_mask),
            _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(first, 6), two), 4),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32(third, 4), low_mask),
            _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(second, 6), two), 4),
        ),
    ]
}

/// The minimums of sub-blocks (2t, 2t + 1), t in 0..4, as each row's two i16 halves, from
/// [`scales_and_mins`]'s minimums.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn minimum_pairs(
    mins_0_4: std::arch::x86_64::__m256i,
    mins_4_8: std::arch::x86_64::__m256i,
) -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::_mm256_shuffle_epi8;
    // Bytes k and k + 1 of every 4-byte lane as its two i16 halves.
    let (low_pair, high_pair) = (lane_bytes([0, -1, 1, -1]), lane_bytes([2, -1, 3, -1]));
    [
        _mm256_shuffle_epi8(mins_0_4, low_pair),
        _mm256_shuffle_epi8(mins_0_4, high_pair),
        _mm256_shuffle_epi8(mins_4_8, low_pair),
        _mm256_shuffle_epi8(mins_4_8, high_pair),
    ]
}

/// Each row's sum over the eight sub-blocks of its minimum times the input's 32-value sum (the
/// input's sums are at most 32 * 127 in magnitude), two sub-blocks per `madd`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn minimums(
    min_pairs: &[std::arch::x86_64::__m256i; 4],
    act: &BlockQ8K,
) -> std::arch::x86_64::__m256i {
    use super::x86::load_i16x16;
    use std::arch::x86_64::*;
    let sixteens = load_i16x16(&act.sums);
    // The eight 32-value sums, in order, in both halves.
    let sub_block_sums = _mm256_broadcastsi128_si256(_mm_hadd_epi16(
        _mm256_castsi256_si128(sixteens),
        _mm256_extracti128_si256(sixteens, 1),
    ));
    _mm256_add_epi32(
        _mm256_add_epi32(
            _mm256_madd_epi16(min_pairs[0], _mm256_shuffle_epi32(sub_block_sums, 0x00)),
            _mm256_madd_epi16(min_pairs[1], _mm256_shuffle_epi32(sub_block_sums, 0x55)),
        ),
        _mm256_add_epi32(
            _mm256_madd_epi16(min_pairs[2], _mm256_shuffle_epi32(sub_block_sums, 0xAA)),
            _mm256_madd_epi16(min_pairs[3], _mm256_shuffle_epi32(sub_block_sums, 0xFF)),
        ),
    )
}

/// Each input's float sums plus one group block's products with its block `b`: d x̂ sums -
/// dmin x̂ minimums per row ([`minimums`] from the group block's `min_pairs`), with the eight
/// rows' f16 `d` and `dmin` from the group block's start.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate<const N: usize>(
    acc: &mut [std::arch::x86_64::__m256; N],
    block: &[u8],
    inputs: &[&[BlockQ8K]; N],
    b: usize,
    sums: [std::arch::x86_64::__m256i; N],
    min_pairs: &[std::arch::x86_64::__m256i; 4],
) {
    use super::x86::load_u8x16;
    use std::arch::x86_64::*;
    let d = _mm256_cvtph_ps(load_u8x16(block));
    let dmin = _mm256_cvtph_ps(load_u8x16(&block[16..]));
    for (k, acc) in acc.iter_mut().enumerate() {
        let act = &inputs[k][b];
        let act_scale = _mm256_set1_ps(act.scale);
        *acc = _mm256_fmadd_ps(
            _mm256_mul_ps(d, act_scale),
            _mm256_cvtepi32_ps(sums[k]),
            *acc,
        );
        *acc = _mm256_fnmadd_ps(
            _mm256_mul_ps(dmin, act_scale),
            _mm256_cvtepi32_ps(minimums(min_pairs, act)),
            *acc,
        );
    }
}

/// The low and the high nibbles of piece `piece` (0..32) of a group block: four values of each
/// of the eight rows, for the sub-blocks 2 (piece / 8) and 2 (piece / 8) + 1.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn piece_nibbles(block: &[u8], piece: usize) -> [std::arch::x86_64::__m256i; 2] {
    use super::x86::load_u8x32;
    use std::arch::x86_64::*;
    let low_mask = _mm256_set1_epi8(0x0F);
    let packed = load_u8x32(&block[NIBBLES_AT + 32 * piece..]);
    [
        _mm256_and_si256(packed, low_mask),
        _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;
    use crate::quant::InstructionSet;
    use crate::quant::test_support::{Rng, extreme_inputs, random_blocks, random_quantized};

    fn check_group<const N: usize>(blocks: usize, rng: &mut Rng) {
        let bytes = random_blocks(GgmlType::Q4K, ROWS * blocks, rng);
        let inputs: Vec<Vec<BlockQ8K>> = (0..N)
            .map(|_| random_quantized::<BlockQ8K>(blocks, rng))
            .collect();
        let xs: [&[BlockQ8K]; N] = std::array::from_fn(|k| inputs[k].as_slice());
        for level in InstructionSet::supported() {
            GROUP_BLOCK.check_products(&bytes, xs, |group, from_memory| {
                q8_k_groups::dot_group::<Q4KGroups, N>(level, group, xs, from_memory)
            });
        }
    }

    #[test]
    fn groups_match_the_row_by_row_kernel() {
        let mut rng = Rng::new(11);
        for blocks in [1, 2, 5, 8] {
            check_group::<1>(blocks, &mut rng);
            check_group::<2>(blocks, &mut rng);
            check_group::<3>(blocks, &mut rng);
            check_group::<4>(blocks, &mut rng);
        }
    }

    /// Every nibble at 0 or 15 and every 6-bit scale and minimum at 0 or 63, against inputs at
    /// +-127: the largest sums the bounds in `dot_group_avx2` allow (a sub-block's eight pieces
    /// reach 30480 in i16), with no saturation.
    #[test]
    fn extreme_nibbles_scales_and_minimums_match_the_row_by_row_kernel() {
        // A block: d and dmin (f16), 12 bytes of packed 6-bit scales and minimums, 128 of nibbles.
        const PACKED_SCALES: std::ops::Range<usize> = 4..16;
        const NIBBLES: std::ops::Range<usize> = 16..BLOCK_BYTES;
        let blocks = 2;
        let mut rng = Rng::new(5);
        for (nibbles, scales) in [(0xFF, 0xFF), (0x00, 0xFF), (0xFF, 0x00), (0xF0, 0x3F)] {
            let mut bytes = random_blocks(GgmlType::Q4K, ROWS * blocks, &mut rng);
            for block in bytes.chunks_exact_mut(BLOCK_BYTES) {
                block[PACKED_SCALES].fill(scales);
                block[NIBBLES].fill(nibbles);
            }
            let inputs = extreme_inputs::<BlockQ8K>(blocks);
            let xs: [&[BlockQ8K]; 3] = std::array::from_fn(|k| inputs[k].as_slice());
            for level in InstructionSet::supported() {
                GROUP_BLOCK.check_products(&bytes, xs, |group, from_memory| {
                    q8_k_groups::dot_group::<Q4KGroups, 3>(level, group, xs, from_memory)
                });
            }
        }
    }
}

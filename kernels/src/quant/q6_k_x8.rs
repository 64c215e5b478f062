//! Q6_K with eight rows interleaved: the same blocks as a GGUF file's Q6_K rows, rearranged so
//! that one vector instruction works on eight rows at once.
//!
//! A row-by-row Q6_K product spends many instructions per block on work of its own row: widening
//! and shuffling the sixteen scales, converting the f16 factor, and adding up the row's lanes at
//! the end. With eight rows side by side each of those steps covers eight rows, and the lanes of
//! the result are the eight rows' products, so nothing is summed across lanes. (As
//! [`super::q4_k_x8`]; llama.cpp's CPU "repack" buffers do the same, the layout here is our own.)
//!
//! Layout: a matrix of `rows` (a multiple of 8) rows is `rows / 8` groups, each group the blocks
//! of its eight rows in column order, one 1680-byte *group block* per column of Q6_K blocks:
//!
//! | bytes | what |
//! |---|---|
//! | 0..16 | the eight rows' `d` (f16), row r at 2r |
//! | 16..144 | the `i8` scales, 16 bytes per pair of sub-blocks (2t, 2t + 1) at 16 + 16t: row r's scale of 2t + e (e = 0, 1) at 16 + 16t + 8 (r / 4) + 4e + r % 4 |
//! | 144..1680 | the 6-bit quants, 96 bytes per sub-block j (16 values) at 144 + 96j: three 32-byte pieces P0, P1, P2, row r's 4 bytes of Pm at 144 + 96j + 32m + 4r |
//!
//! The scales' order is the one `cvtepi8_epi16` and an `unpacklo`/`unpackhi` of the result with
//! itself turn into row r's scale in both i16 halves of 32-bit lane r, for a `madd` per
//! sub-block.
//!
//! Within a sub-block the bits are rearranged too (ggml splits every quant into a nibble and a
//! bit pair 64 bytes apart; putting them back together takes 17 instructions per four vectors
//! of quants, against 11 here). Of row r's 16 quants q0..q15 of sub-block j, byte i
//! (0..4) of its 4 bytes of piece Pm holds q(4m + i) in bits 0-5 and bits 2m, 2m + 1 of q(12 + i)
//! in bits 6-7. So one `and` takes four quants of each of the eight rows out of a piece, and
//! three masked shifts put the last four together.
//!
//! A group block holds exactly the bits of eight Q6_K blocks, so the matrix keeps its size.

use super::activations::{BlockQ8K, QK_K};
use super::interleaved::GroupBlock;
use super::q8_k_groups::{self, Q8KGroups};
use super::{GgmlType, q6_k};

/// Rows interleaved together.
pub const ROWS: usize = super::interleaved::ROWS_TOGETHER;
const BLOCK_BYTES: usize = 210;
const GROUP_BLOCK_BYTES: usize = ROWS * BLOCK_BYTES;
/// Where a Q6_K block (in a file) keeps its scales and its f16 `d`.
const BLOCK_SCALES: usize = 192;
const BLOCK_D: usize = 208;
/// Where a group block keeps its scales and its quants.
const SCALES_AT: usize = 16;
const QUANTS_AT: usize = 144;
/// Bytes of a group block per sub-block of 16 values: three 32-byte pieces.
const SUB_BLOCK_BYTES: usize = 96;

/// The 256 quants (0..=63, before the offset of 32) of a Q6_K block in value order; see the
/// layout in [`super::q6_k`].
fn six_bit_quants(block: &[u8]) -> [u8; QK_K] {
    // Loops over whole arrays rather than a closure per value: the loader runs this over every
    // block of the output matrix (a closure with a slice per value took a quarter of a load).
    let block: &[u8; 210] = block[..210].try_into().expect("a whole Q6_K block");
    let mut quants = [0u8; QK_K];
    for half in 0..2 {
        for quarter in 0..4 {
            let nibbles = &block[64 * half + 32 * (quarter % 2)..][..32];
            let bit_pairs = &block[128 + 32 * half..][..32];
            let out = &mut quants[128 * half + 32 * quarter..][..32];
            for ((q, &nibble), &pair) in out.iter_mut().zip(nibbles).zip(bit_pairs) {
                let low = (nibble >> (4 * (quarter / 2))) & 0x0F;
                *q = low | ((pair >> (2 * quarter)) & 3) << 4;
            }
        }
    }
    quants
}

/// The inverse of [`six_bit_quants`]: writes the 128 nibble bytes and 64 bit-pair bytes.
fn pack_six_bit_quants(quants: &[u8; QK_K], block: &mut [u8]) {
    for half in 0..2 {
        let q = &quants[128 * half..128 * half + 128];
        for l in 0..32 {
            block[64 * half + l] = (q[l] & 0x0F) | (q[l + 64] & 0x0F) << 4;
            block[64 * half + 32 + l] = (q[l + 32] & 0x0F) | (q[l + 96] & 0x0F) << 4;
            block[128 + 32 * half + l] =
                (q[l] >> 4) | (q[l + 32] >> 4) << 2 | (q[l + 64] >> 4) << 4 | (q[l + 96] >> 4) << 6;
        }
    }
}

/// Where the scale of sub-block j of row r lies in a group block: the scales of a pair of
/// sub-blocks (2t, 2t + 1) take 16 bytes, rows 0..4 in the first 8 and rows 4..8 in the last 8,
/// each half the four rows' scales of 2t, then those of 2t + 1.
fn scale_at(j: usize, r: usize) -> usize {
    SCALES_AT + 16 * (j / 2) + 8 * (r / 4) + 4 * (j % 2) + r % 4
}

/// Where byte i of row r's share of piece `piece` of sub-block j lies in a group block.
fn piece_at(j: usize, piece: usize, r: usize, i: usize) -> usize {
    QUANTS_AT + SUB_BLOCK_BYTES * j + 32 * piece + 4 * r + i
}

/// Writes one Q6_K block as row r of a group block.
fn put_row(source: &[u8], r: usize, target: &mut [u8]) {
    target[2 * r..2 * r + 2].copy_from_slice(&source[BLOCK_D..BLOCK_D + 2]);
    for j in 0..16 {
        target[scale_at(j, r)] = source[BLOCK_SCALES + j];
    }
    let quants = six_bit_quants(source);
    for (j, q) in quants.chunks_exact(16).enumerate() {
        for piece in 0..3 {
            // Row r's four bytes of the piece, written at once.
            let bytes: [u8; 4] =
                std::array::from_fn(|i| q[4 * piece + i] | ((q[12 + i] >> (2 * piece)) & 3) << 6);
            let at = piece_at(j, piece, r, 0);
            target[at..at + 4].copy_from_slice(&bytes);
        }
    }
}

/// Reads row r of a group block back as a Q6_K block (the inverse of [`put_row`]).
fn take_row(source: &[u8], r: usize, target: &mut [u8]) {
    target[BLOCK_D..BLOCK_D + 2].copy_from_slice(&source[2 * r..2 * r + 2]);
    for j in 0..16 {
        target[BLOCK_SCALES + j] = source[scale_at(j, r)];
    }
    let mut quants = [0u8; QK_K];
    for (j, q) in quants.chunks_exact_mut(16).enumerate() {
        for i in 0..4 {
            let mut last = 0;
            for piece in 0..3 {
                let byte = source[piece_at(j, piece, r, i)];
                q[4 * piece + i] = byte & 0x3F;
                last |= (byte >> 6) << (2 * piece);
            }
            q[12 + i] = last;
        }
    }
    pack_six_bit_quants(&quants, target);
}

/// Where a row's block goes in a group block and back, and the row-by-row kernel.
pub(super) const GROUP_BLOCK: GroupBlock<BlockQ8K> = GroupBlock {
    ty: GgmlType::Q6K,
    put: put_row,
    take: take_row,
    dot_row: q6_k::dot_q6_k_q8_k,
};

/// Q6_K's group kernels, for the shared dispatch and matmul of [`super::q8_k_groups`].
pub(super) struct Q6KGroups;

impl Q8KGroups for Q6KGroups {
    const TYPE: GgmlType = GgmlType::Q6K;
    /// Their integer sums and accumulators, with the group's unpacked quants, fill the sixteen
    /// registers.
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
/// left it: [`super::matmul_rows_quant`] for interleaved Q6_K (see [`q8_k_groups::matmul`]).
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
    q8_k_groups::matmul::<Q6KGroups>(weights, rows, cols, x, n, y)
}

/// Per group block, per sub-block of 16 values: three 32-byte loads (a 4-byte piece of each of
/// the eight rows) give four vectors of unsigned 6-bit quants, each of which meets the input's
/// four matching quants, broadcast to every row, with `maddubs`. Bounds: a `maddubs` pair sum is
/// at most 2 * 63 * 127 = 16002 in magnitude, so two of them add up in i16 (32004 <= 32767) but
/// four might not; each of the sub-block's two i16 sums meets the eight rows' scale for it with
/// one `madd` (into i32: at most 2 * 128 * 32004 per lane). The offset of 32 is taken off once
/// per block, as in the row-by-row kernel: 32 * sum over sub-blocks of scale * (the input's
/// 16-value sum), one `madd` per pair of sub-blocks. A block's total per row is at most
/// 16 * 128 * 16 * 63 * 127 + 32 * 16 * 128 * 16 * 127 (about 4e8) in magnitude: inside i32.
/// One multiply-add per block takes the eight rows' totals into eight float lanes. With
/// `PREFETCH`, each group block first asks for the weights
/// [`super::x86::PREFETCH_AHEAD_BYTES`] further on.
///
/// For one input, llvm-mca (znver3) puts the loop at about 15 cycles per pair of sub-blocks,
/// bound by the four vector pipes (59 operations, the eight broadcasts of input quants
/// included, each of which takes a shuffle slot as well as a load).
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
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, block) in group.chunks_exact(GROUP_BLOCK_BYTES).enumerate() {
        let acts: [&BlockQ8K; N] = std::array::from_fn(|k| &inputs[k][b]);
        if PREFETCH {
            prefetch_ahead(block);
        }
        // Per input: sum over sub-blocks of scale * products, and of scale * 16-value sum.
        let mut products = [_mm256_setzero_si256(); N];
        let mut offsets = [_mm256_setzero_si256(); N];
        for pair in 0..8 {
            let scales = pair_scales(block, pair);
            add_offsets(&mut offsets, scales, &acts, pair);
            for half in 0..2 {
                let j = 2 * pair + half;
                let scale = scales[half];
                let quants = sub_block_quants(block, j);
                for k in 0..N {
                    let x = &acts[k].quants[16 * j..16 * j + 16];
                    let piece = |m: usize| {
                        _mm256_maddubs_epi16(quants[m], _mm256_set1_epi32(four_quants(&x[4 * m..])))
                    };
                    let front = _mm256_add_epi16(piece(0), piece(1));
                    let back = _mm256_add_epi16(piece(2), piece(3));
                    products[k] = _mm256_add_epi32(
                        products[k],
                        _mm256_add_epi32(
                            _mm256_madd_epi16(front, scale),
                            _mm256_madd_epi16(back, scale),
                        ),
                    );
                }
            }
        }
        accumulate(&mut acc, block, products, offsets, &acts);
    }
    acc.map(|lanes| lanes_f32x8(lanes))
}

/// [`dot_group_avx2`] with VNNI: a sub-block's four vectors of quants meet the input's quants
/// in four `dpbusd` straight into i32 (at most 16 * 63 * 127 = 128016), which meet the rows'
/// scales with `mullo` (a block's sum at most 16 * 128 * 128016, about 2.6e8, in magnitude);
/// the offset of 32 comes off as in the AVX2 kernel. With 32 registers,
/// four inputs share each unpacked sub-block.
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
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, block) in group.chunks_exact(GROUP_BLOCK_BYTES).enumerate() {
        let acts: [&BlockQ8K; N] = std::array::from_fn(|k| &inputs[k][b]);
        if PREFETCH {
            prefetch_ahead(block);
        }
        let mut products = [_mm256_setzero_si256(); N];
        let mut offsets = [_mm256_setzero_si256(); N];
        for pair in 0..8 {
            let scales = pair_scales(block, pair);
            add_offsets(&mut offsets, scales, &acts, pair);
            for half in 0..2 {
                let j = 2 * pair + half;
                // Row r's scale in both i16 of lane r: the top one, shifted down with its sign.
                let scale = _mm256_srai_epi32(scales[half], 16);
                let quants = sub_block_quants(block, j);
                for k in 0..N {
                    let x = &acts[k].quants[16 * j..16 * j + 16];
                    let mut dot = _mm256_setzero_si256();
                    for m in 0..4 {
                        let four = _mm256_set1_epi32(four_quants(&x[4 * m..]));
                        dot = _mm256_dpbusd_epi32(dot, quants[m], four);
                    }
                    products[k] = _mm256_add_epi32(products[k], _mm256_mullo_epi32(dot, scale));
                }
            }
        }
        accumulate(&mut acc, block, products, offsets, &acts);
    }
    acc.map(|lanes| lanes_f32x8(lanes))
}

/// The scales of sub-blocks 2 pair and 2 pair + 1 of a group block's eight rows, as i16: the
/// pair's 16 bytes widened (rows 0..4 in the low 128-bit half, 4..8 in the high) and unpacked
/// with themselves, so that entry e holds row r's scale of sub-block 2 pair + e in both i16 of
/// lane r.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_scales(block: &[u8], pair: usize) -> [std::arch::x86_64::__m256i; 2] {
    use super::x86::load_u8x16;
    use std::arch::x86_64::*;
    let both = _mm256_cvtepi8_epi16(load_u8x16(&block[SCALES_AT + 16 * pair..]));
    [
        _mm256_unpacklo_epi16(both, both),
        _mm256_unpackhi_epi16(both, both),
    ]
}

/// Adds each input's scale-weighted 16-value sums of one pair of sub-blocks to its `offsets`:
/// with the rows' two scales blended as the two i16 of each lane and the input's two sums
/// likewise, one `madd` gives each row s(2 pair) S(2 pair) + s(2 pair + 1) S(2 pair + 1).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_offsets<const N: usize>(
    offsets: &mut [std::arch::x86_64::__m256i; N],
    scales: [std::arch::x86_64::__m256i; 2],
    acts: &[&BlockQ8K; N],
    pair: usize,
) {
    use std::arch::x86_64::*;
    let scale_pairs = _mm256_blend_epi16(scales[0], scales[1], 0b1010_1010);
    for (offset, act) in offsets.iter_mut().zip(acts) {
        let sums = &act.sums[2 * pair..2 * pair + 2];
        let sums = _mm256_set1_epi32((sums[0] as u16 as i32) | ((sums[1] as i32) << 16));
        *offset = _mm256_add_epi32(*offset, _mm256_madd_epi16(scale_pairs, sums));
    }
}

/// The 6-bit quants (0..=63) of sub-block `j` of a group block's eight rows, four values of
/// each row per vector: three 32-byte loads, the low six bits of each, and the three top-two
/// bit pairs put together for the last four values.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sub_block_quants(block: &[u8], j: usize) -> [std::arch::x86_64::__m256i; 4] {
    use super::x86::load_u8x32;
    use std::arch::x86_64::*;
    let low_six = _mm256_set1_epi8(0x3F);
    let top_two = _mm256_set1_epi8(0xC0u8 as i8);
    let at = QUANTS_AT + SUB_BLOCK_BYTES * j;
    let first = load_u8x32(&block[at..]);
    let second = load_u8x32(&block[at + 32..]);
    let third = load_u8x32(&block[at + 64..]);
    // The shifts are 16-bit wide, but the top-two mask leaves nothing that could cross into
    // the neighbouring byte's bits that are kept.
    let last = _mm256_or_si256(
        _mm256_or_si256(
            _mm256_srli_epi16(_mm256_and_si256(first, top_two), 6),
            _mm256_srli_epi16(_mm256_and_si256(second, top_two), 4),
        ),
        _mm256_srli_epi16(_mm256_and_si256(third, top_two), 2),
    );
    [
        _mm256_and_si256(first, low_six),
        _mm256_and_si256(second, low_six),
        _mm256_and_si256(third, low_six),
        last,
    ]
}

/// Each input's float sums plus one group block's totals: products less 32 times the offsets,
/// times the eight rows' f16 `d` (from the group block's start) and the input block's scale.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate<const N: usize>(
    acc: &mut [std::arch::x86_64::__m256; N],
    block: &[u8],
    products: [std::arch::x86_64::__m256i; N],
    offsets: [std::arch::x86_64::__m256i; N],
    acts: &[&BlockQ8K; N],
) {
    use super::x86::load_u8x16;
    use std::arch::x86_64::*;
    let d = _mm256_cvtph_ps(load_u8x16(block));
    for k in 0..N {
        let total = _mm256_sub_epi32(products[k], _mm256_slli_epi32(offsets[k], 5));
        let scale = _mm256_mul_ps(d, _mm256_set1_ps(acts[k].scale));
        acc[k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), acc[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;
    use crate::quant::InstructionSet;
    use crate::quant::test_support::{Rng, extreme_inputs, random_blocks, random_quantized};

    #[test]
    fn six_bit_quants_are_the_row_by_row_quants() {
        let bytes = random_blocks(GgmlType::Q6K, 2, &mut Rng::new(3));
        let mut values = vec![0f32; 2 * QK_K];
        crate::quant::dequantize(GgmlType::Q6K, &bytes, &mut values);
        for (block, values) in bytes
            .chunks_exact(BLOCK_BYTES)
            .zip(values.chunks_exact(QK_K))
        {
            let d = half::f16::from_le_bytes([block[BLOCK_D], block[BLOCK_D + 1]]).to_f32();
            let quants = six_bit_quants(block);
            for (i, (&q, &value)) in quants.iter().zip(values).enumerate() {
                let factor = d * (block[BLOCK_SCALES + i / 16] as i8) as f32;
                assert_eq!(value, factor * (q as i32 - 32) as f32, "value {i}");
            }
            let mut packed = [0u8; 192];
            pack_six_bit_quants(&quants, &mut packed);
            assert_eq!(packed, block[..192]);
        }
    }

    fn check_group<const N: usize>(blocks: usize, rng: &mut Rng) {
        let bytes = random_blocks(GgmlType::Q6K, ROWS * blocks, rng);
        let inputs: Vec<Vec<BlockQ8K>> = (0..N)
            .map(|_| random_quantized::<BlockQ8K>(blocks, rng))
            .collect();
        let xs: [&[BlockQ8K]; N] = std::array::from_fn(|k| inputs[k].as_slice());
        for level in InstructionSet::supported() {
            GROUP_BLOCK.check_products(&bytes, xs, |group, from_memory| {
                q8_k_groups::dot_group::<Q6KGroups, N>(level, group, xs, from_memory)
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

    /// Every quant at 0 or 63 and every scale at -128 or 127, against inputs at +-127: the
    /// largest sums the bounds in `dot_group_avx2` allow, with no saturation.
    #[test]
    fn extreme_quants_and_scales_match_the_row_by_row_kernel() {
        let blocks = 2;
        let mut rng = Rng::new(5);
        for (fill, scale) in [(0xFF, 0x7F), (0xFF, 0x80), (0x00, 0x80), (0x00, 0x7F)] {
            let mut bytes = random_blocks(GgmlType::Q6K, ROWS * blocks, &mut rng);
            for block in bytes.chunks_exact_mut(BLOCK_BYTES) {
                block[..BLOCK_SCALES].fill(fill);
                block[BLOCK_SCALES..BLOCK_D].fill(scale);
            }
            let inputs = extreme_inputs::<BlockQ8K>(blocks);
            let xs: [&[BlockQ8K]; 3] = std::array::from_fn(|k| inputs[k].as_slice());
            for level in InstructionSet::supported() {
                GROUP_BLOCK.check_products(&bytes, xs, |group, from_memory| {
                    q8_k_groups::dot_group::<Q6KGroups, 3>(level, group, xs, from_memory)
                });
            }
        }
    }
}

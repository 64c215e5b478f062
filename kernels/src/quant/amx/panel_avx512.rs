//! Interleaved quantized rows straight into a bf16 panel with AVX-512, a group of eight rows at
//! a time: a group block's pieces of eight rows become each row's quants through 8 x 8
//! transposes, each 32-value chunk is dequantized in two registers (the same products, in the
//! same order, as [`crate::quant::dequantize`], so the same f32 bits) and rounded to bf16 by one
//! instruction (`VCVTNE2PS2BF16`: nearest, ties to even, as the general road), and each slice's
//! 16 tile rows get the group's eight rows in one 32-byte store each.
//!
//! Every AMX CPU has these instructions. Only the interleaved layout has this road: the loader
//! interleaves every matrix of these types whose rows come in eights (all of DeepSeek-V2's), and
//! the rest take the general road.
//!
//! Measured (`PANELS=1` quant_matmul bench, one thread of a Zen 4, ns per weight value): the
//! general road (put rows back in file order, dequantize, place each value) took 1.19 (Q8_0),
//! 1.59 (Q4_K), 1.70 (Q5_0) and 2.85 (Q6_K); this one takes 0.163-0.249.

use std::arch::x86_64::*;

use super::super::GgmlType;
use super::super::interleaved::ROWS_TOGETHER;
use super::super::q4_k::scales_and_mins;
use super::SLICE;
use super::panel::tile_rows_of;
use super::tiles::TILE_ROWS;

/// Whether [`pack_groups`] takes `ty` on this CPU.
pub(super) fn packs(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4K | GgmlType::Q6K | GgmlType::Q8_0 | GgmlType::Q5_0
    ) && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// [`super::panel::pack_rows`] for the `take` rows (a multiple of 8) in `groups`, interleaved
/// as [`crate::quant::interleaved`] leaves them, for a type [`packs`] takes: each group
/// block's eight rows are dequantized together (their pieces turned into rows by 8 x 8
/// transposes), without putting the rows back in file order.
///
/// # Safety
/// The CPU must have the features [`packs`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub(super) unsafe fn pack_groups(
    ty: GgmlType,
    groups: &[u8],
    take: usize,
    padded_cols: usize,
    panel: &mut [u16],
) {
    let group_block_bytes = ROWS * ty.block_bytes();
    let group_bytes = groups.len() / take.max(1) * ROWS;
    for (g, group) in groups.chunks_exact(group_bytes.max(1)).enumerate() {
        let mut out = GroupOut {
            panel: &mut *panel,
            slices: padded_cols / SLICE,
            first_row: ROWS * g,
        };
        for (b, group_block) in group.chunks_exact(group_block_bytes).enumerate() {
            match ty {
                GgmlType::Q4K => q4_k_group_block(group_block, b, &mut out),
                GgmlType::Q6K => q6_k_group_block(group_block, b, &mut out),
                _ => q8_0_or_q5_0_group_block(ty, group_block, b, &mut out),
            }
        }
    }
}

/// Rows interleaved together.
const ROWS: usize = ROWS_TOGETHER;

/// Where a group's rows go in the panel.
struct GroupOut<'a> {
    panel: &'a mut [u16],
    slices: usize,
    first_row: usize,
}

impl GroupOut<'_> {
    /// The eight rows' chunks of 32 values, as bf16 pairs ([`bf16_pairs`]), as slice `slice` of
    /// their panel rows: transposed so that each of the slice's 16 tile rows gets the eight rows'
    /// pairs in one 32-byte store (the eight rows lie side by side in a tile row).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2")]
    fn put(&mut self, slice: usize, pairs: [__m512i; ROWS]) {
        let rows = tile_rows_of(self.first_row, self.slices, self.panel);
        let tile = &mut rows[slice * TILE_ROWS * SLICE..];
        assert!(tile.len() >= (TILE_ROWS - 1) * SLICE + 2 * ROWS);
        let low = transpose_8x8(pairs.map(|p| _mm512_castsi512_si256(p)));
        let high = transpose_8x8(pairs.map(|p| _mm512_extracti64x4_epi64::<1>(p)));
        for (k, row) in low.into_iter().chain(high).enumerate() {
            // SAFETY: 32 bytes at tile row k, inside `tile` (asserted above).
            unsafe { _mm256_storeu_si256(tile[k * SLICE..].as_mut_ptr().cast(), row) };
        }
    }
}

/// 32 values (0-15 in `low`, 16-31 in `high`) rounded to bf16, as 16 pairs: lane k holds values
/// 2k and 2k + 1.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_pairs(low: __m512, high: __m512) -> __m512i {
    // SAFETY: bf16 vectors and integer vectors are the same 512 bits.
    unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(high, low)) }
}

/// The eight f16 values at the start of `bytes` as f32 (the same conversion as the scalar
/// road's F16C one).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn eight_f16(bytes: &[u8]) -> [f32; ROWS] {
    let bytes = &bytes[..16];
    let mut values = [0f32; ROWS];
    // SAFETY: 16 readable bytes (sliced above) and room for eight f32.
    unsafe {
        let halves = _mm_loadu_si128(bytes.as_ptr().cast());
        _mm256_storeu_ps(values.as_mut_ptr(), _mm256_cvtph_ps(halves));
    }
    values
}

/// Group block `b` of interleaved Q4_K (see [`crate::quant::q4_k_x8`]): per row its packed
/// scales from three words, then per pair of sub-blocks the eight pieces of 4 bytes of every
/// row, transposed into each row's 32 bytes of nibbles.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn q4_k_group_block(group_block: &[u8], b: usize, out: &mut GroupOut<'_>) {
    const SCALES_AT: usize = 32;
    const NIBBLES_AT: usize = 128;
    let low_four = _mm256_set1_epi8(0x0F);
    let (d, dmin) = (eight_f16(group_block), eight_f16(&group_block[16..]));
    let factors: [([u8; 8], [u8; 8]); ROWS] = std::array::from_fn(|r| {
        let packed: [u8; 12] =
            std::array::from_fn(|i| group_block[SCALES_AT + 32 * (i / 4) + 4 * r + i % 4]);
        scales_and_mins(&packed)
    });
    for pair in 0..4 {
        let rows = transpose_8x8(std::array::from_fn(|j| {
            load_32(group_block, NIBBLES_AT + 32 * (8 * pair + j))
        }));
        let mut sub_blocks = [[_mm512_setzero_si512(); ROWS]; 2];
        for (r, quants) in rows.into_iter().enumerate() {
            let low = _mm256_and_si256(quants, low_four);
            let high = _mm256_and_si256(_mm256_srli_epi16::<4>(quants), low_four);
            let (scales, mins) = factors[r];
            for (e, nibbles) in [low, high].into_iter().enumerate() {
                let sub = 2 * pair + e;
                let scale = _mm512_set1_ps(d[r] * scales[sub] as f32);
                let min = _mm512_set1_ps(dmin[r] * mins[sub] as f32);
                let (first, second) = unsigned_bytes_to_f32(nibbles);
                let first = _mm512_sub_ps(_mm512_mul_ps(scale, first), min);
                let second = _mm512_sub_ps(_mm512_mul_ps(scale, second), min);
                sub_blocks[e][r] = bf16_pairs(first, second);
            }
        }
        out.put(8 * b + 2 * pair, sub_blocks[0]);
        out.put(8 * b + 2 * pair + 1, sub_blocks[1]);
    }
}

/// Group block `b` of interleaved Q6_K (see [`crate::quant::q6_k_x8`]): per pair of sub-blocks
/// (one slice), each sub-block's three pieces give four vectors of four quants of every row (the
/// fourth from the pieces' top bit pairs), transposed into each row's 32 quants.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn q6_k_group_block(group_block: &[u8], b: usize, out: &mut GroupOut<'_>) {
    const SCALES_AT: usize = 16;
    const QUANTS_AT: usize = 144;
    let d = eight_f16(group_block);
    let (six, two) = (_mm256_set1_epi8(0x3F), _mm256_set1_epi8(3));
    let thirty_two = _mm512_set1_ps(32.0);
    for pair in 0..8 {
        let mut quarters = [_mm256_setzero_si256(); 8];
        for e in 0..2 {
            let at = QUANTS_AT + 96 * (2 * pair + e);
            let pieces: [__m256i; 3] = std::array::from_fn(|m| load_32(group_block, at + 32 * m));
            let top = |m: usize| _mm256_and_si256(_mm256_srli_epi16::<6>(pieces[m]), two);
            let last = _mm256_or_si256(
                top(0),
                _mm256_or_si256(
                    _mm256_slli_epi16::<2>(top(1)),
                    _mm256_slli_epi16::<4>(top(2)),
                ),
            );
            quarters[4 * e] = _mm256_and_si256(pieces[0], six);
            quarters[4 * e + 1] = _mm256_and_si256(pieces[1], six);
            quarters[4 * e + 2] = _mm256_and_si256(pieces[2], six);
            quarters[4 * e + 3] = last;
        }
        let rows = transpose_8x8(quarters);
        let mut pairs = [_mm512_setzero_si512(); ROWS];
        for (r, quants) in rows.into_iter().enumerate() {
            let scale = |e: usize| {
                let at = SCALES_AT + 16 * pair + 8 * (r / 4) + 4 * e + r % 4;
                _mm512_set1_ps(d[r] * group_block[at] as i8 as f32)
            };
            let (first, second) = unsigned_bytes_to_f32(quants);
            // q - 32 is exact in f32, as the scalar road's (q - 32) as f32.
            let first = _mm512_mul_ps(scale(0), _mm512_sub_ps(first, thirty_two));
            let second = _mm512_mul_ps(scale(1), _mm512_sub_ps(second, thirty_two));
            pairs[r] = bf16_pairs(first, second);
        }
        out.put(8 * b + pair, pairs);
    }
}

/// Group block `b` of interleaved Q8_0 or Q5_0 (see [`crate::quant::q8_0_x8`]): the eight
/// pieces of every row, transposed into each row's 32 quants.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
fn q8_0_or_q5_0_group_block(ty: GgmlType, group_block: &[u8], b: usize, out: &mut GroupOut<'_>) {
    let d = eight_f16(group_block);
    let sixteen = _mm512_set1_ps(16.0);
    let rows = transpose_8x8(match ty {
        GgmlType::Q8_0 => std::array::from_fn(|j| load_32(group_block, 16 + 32 * j)),
        _ => q5_0_group_pieces(group_block),
    });
    let mut pairs = [_mm512_setzero_si512(); ROWS];
    for (r, quants) in rows.into_iter().enumerate() {
        let d = _mm512_set1_ps(d[r]);
        let (first, second) = if ty == GgmlType::Q8_0 {
            signed_bytes_to_f32(quants)
        } else {
            // q - 16 is exact in f32, as the scalar road's (q - 16) as f32.
            let (first, second) = unsigned_bytes_to_f32(quants);
            (
                _mm512_sub_ps(first, sixteen),
                _mm512_sub_ps(second, sixteen),
            )
        };
        pairs[r] = bf16_pairs(_mm512_mul_ps(d, first), _mm512_mul_ps(d, second));
    }
    out.put(b, pairs);
}

/// A Q5_0 group block's 5-bit quants as eight vectors whose lane r holds row r's quants 4j..4j +
/// 4 in vector j (see the layout in [`crate::quant::q8_0_x8`]).
#[inline]
#[target_feature(enable = "avx2")]
fn q5_0_group_pieces(group_block: &[u8]) -> [__m256i; 8] {
    let (five, three, two) = (
        _mm256_set1_epi8(0x1F),
        _mm256_set1_epi8(7),
        _mm256_set1_epi8(3),
    );
    let low_bits = load_32(group_block, 16 + 4 * 32);
    let pieces: [__m256i; 4] = std::array::from_fn(|p| load_32(group_block, 16 + 32 * p));
    let top = |p: usize| {
        let high = _mm256_and_si256(_mm256_srli_epi16::<5>(pieces[p]), three);
        let low = match p {
            0 => low_bits,
            1 => _mm256_srli_epi16::<2>(low_bits),
            2 => _mm256_srli_epi16::<4>(low_bits),
            _ => _mm256_srli_epi16::<6>(low_bits),
        };
        _mm256_or_si256(_mm256_slli_epi16::<2>(high), _mm256_and_si256(low, two))
    };
    [
        _mm256_and_si256(pieces[0], five),
        _mm256_and_si256(pieces[1], five),
        _mm256_and_si256(pieces[2], five),
        _mm256_and_si256(pieces[3], five),
        top(0),
        top(1),
        top(2),
        top(3),
    ]
}

/// Eight vectors of eight 32-bit lanes, transposed: lane j of result r is lane r of vector j.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_8x8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t: [__m256i; 8] = [
        _mm256_unpacklo_epi32(v[0], v[1]),
        _mm256_unpackhi_epi32(v[0], v[1]),
        _mm256_unpacklo_epi32(v[2], v[3]),
        _mm256_unpackhi_epi32(v[2], v[3]),
        _mm256_unpacklo_epi32(v[4], v[5]),
        _mm256_unpackhi_epi32(v[4], v[5]),
        _mm256_unpacklo_epi32(v[6], v[7]),
        _mm256_unpackhi_epi32(v[6], v[7]),
    ];
    let u: [__m256i; 8] = [
        _mm256_unpacklo_epi64(t[0], t[2]),
        _mm256_unpackhi_epi64(t[0], t[2]),
        _mm256_unpacklo_epi64(t[1], t[3]),
        _mm256_unpackhi_epi64(t[1], t[3]),
        _mm256_unpacklo_epi64(t[4], t[6]),
        _mm256_unpackhi_epi64(t[4], t[6]),
        _mm256_unpacklo_epi64(t[5], t[7]),
        _mm256_unpackhi_epi64(t[5], t[7]),
    ];
    [
        _mm256_permute2x128_si256::<0x20>(u[0], u[4]),
        _mm256_permute2x128_si256::<0x20>(u[1], u[5]),
        _mm256_permute2x128_si256::<0x20>(u[2], u[6]),
        _mm256_permute2x128_si256::<0x20>(u[3], u[7]),
        _mm256_permute2x128_si256::<0x31>(u[0], u[4]),
        _mm256_permute2x128_si256::<0x31>(u[1], u[5]),
        _mm256_permute2x128_si256::<0x31>(u[2], u[6]),
        _mm256_permute2x128_si256::<0x31>(u[3], u[7]),
    ]
}

/// 32 unsigned bytes as two vectors of 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn unsigned_bytes_to_f32(bytes: __m256i) -> (__m512, __m512) {
    let low = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(bytes));
    let high = _mm512_cvtepu8_epi32(_mm256_extracti128_si256::<1>(bytes));
    (_mm512_cvtepi32_ps(low), _mm512_cvtepi32_ps(high))
}

/// 32 signed bytes as two vectors of 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn signed_bytes_to_f32(bytes: __m256i) -> (__m512, __m512) {
    let low = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes));
    let high = _mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(bytes));
    (_mm512_cvtepi32_ps(low), _mm512_cvtepi32_ps(high))
}

/// 32 bytes from `bytes[at..]`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_32(bytes: &[u8], at: usize) -> __m256i {
    let bytes = &bytes[at..at + 32];
    // SAFETY: 32 readable bytes (sliced above); unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

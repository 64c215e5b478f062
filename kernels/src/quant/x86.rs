//! AVX2 building blocks shared by the formats' kernels.
//!
//! The kernels are `#[target_feature(enable = "avx2,fma,f16c")]` functions, entered only after
//! [`has_avx2_fma_f16c`] said yes; inside them the register-only intrinsics are safe to call and
//! the only unsafe operations are the loads below, whose bounds the slice indexing checks.

use std::arch::x86_64::*;

use super::activations::BlockQ8_0;

/// Whether the CPU runs the kernels in this module (every AVX2 CPU made has FMA and F16C too, but
/// each is checked). Cached by std: an atomic load per call.
#[inline]
pub(super) fn has_avx2_fma_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// Whether the CPU also runs the AVX-512 VNNI kernels (on 256-bit registers: VNNI's byte dot
/// products with AVX512VL's encoding and its 32 registers), on top of [`has_avx2_fma_f16c`].
#[inline]
pub(super) fn has_avx512_vnni() -> bool {
    has_avx2_fma_f16c()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// The f16 at the start of `bytes` as f32, with one F16C instruction (the `half` crate would
/// check the CPU on every call, once per block in the hot loop).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_at(bytes: &[u8]) -> f32 {
    let bits = u16::from_le_bytes([bytes[0], bytes[1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Little-endian F16 values to f32, eight per instruction (the same conversion as [`f16_at`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    let mut bytes = bytes.chunks_exact(16);
    let mut out = out.chunks_exact_mut(8);
    for (bytes, out) in (&mut bytes).zip(&mut out) {
        let values = _mm256_cvtph_ps(load_u8x16(bytes));
        // SAFETY: `out` holds 8 floats, and storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), values) };
    }
    for (bytes, out) in bytes.remainder().chunks_exact(2).zip(out.into_remainder()) {
        *out = f16_at(bytes);
    }
}

/// Little-endian BF16 values to f32, eight at a time: each is the top half of its f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bf16_to_f32(bytes: &[u8], out: &mut [f32]) {
    let mut bytes = bytes.chunks_exact(16);
    let mut out = out.chunks_exact_mut(8);
    for (bytes, out) in (&mut bytes).zip(&mut out) {
        let widened = _mm256_slli_epi32(_mm256_cvtepu16_epi32(load_u8x16(bytes)), 16);
        // SAFETY: `out` holds 8 floats, and storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_castsi256_ps(widened)) };
    }
    for (bytes, out) in bytes.remainder().chunks_exact(2).zip(out.into_remainder()) {
        *out = f32::from_bits((u16::from_le_bytes([bytes[0], bytes[1]]) as u32) << 16);
    }
}

/// Asserts that every row holds `blocks` blocks of `block_bytes` and every input `blocks`
/// blocks: after it, a tile reads its blocks through [`tile_blocks`], without a
/// bounds check per load (which cost a decode step's loop about a fifth of its instructions).
pub(super) fn check_tile_lengths<A>(rows: &[&[u8]], inputs: &[&[A]], block_bytes: usize) -> usize {
    let blocks = inputs.first().map_or(0, |x| x.len());
    assert!(inputs.iter().all(|x| x.len() == blocks));
    assert!(rows.iter().all(|row| row.len() == blocks * block_bytes));
    blocks
}

/// Block `b` of every row (slices of exactly `block_bytes` bytes, so that loads inside them at
/// constant offsets need no check at run time) and of every input of a tile. (Plain loops: built
/// with `array::from_fn` closures, the Q4_K decode tile ran at half speed.)
///
/// # Safety
/// `b` must be below the block count [`check_tile_lengths`] returned for these rows and inputs.
#[inline(always)]
pub(super) unsafe fn tile_blocks<'a, A, const R: usize, const N: usize>(
    rows: [&'a [u8]; R],
    inputs: [&'a [A]; N],
    b: usize,
    block_bytes: usize,
) -> ([&'a [u8]; R], [&'a A; N]) {
    let mut row_blocks = rows;
    for (block, row) in row_blocks.iter_mut().zip(rows) {
        // SAFETY: the caller's promise.
        *block = unsafe { row.get_unchecked(b * block_bytes..(b + 1) * block_bytes) };
    }
    let mut acts = inputs.map(|x| x.as_ptr());
    for act in &mut acts {
        // SAFETY: the caller's promise.
        *act = unsafe { act.add(b) };
    }
    // SAFETY: each pointer is to block b of its input, in bounds by the caller's promise.
    (row_blocks, acts.map(|act| unsafe { &*act }))
}

/// The first 32 bytes of `bytes`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_u8x32(bytes: &[u8]) -> __m256i {
    let bytes = &bytes[..32];
    // SAFETY: `bytes` holds 32 readable bytes, and loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// The first 32 quants of `quants`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i8x32(quants: &[i8]) -> __m256i {
    let quants = &quants[..32];
    // SAFETY: `quants` holds 32 readable bytes, and loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(quants.as_ptr().cast()) }
}

/// The first 16 bytes of `bytes`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_u8x16(bytes: &[u8]) -> __m128i {
    let bytes = &bytes[..16];
    // SAFETY: `bytes` holds 16 readable bytes, and loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// 16 bytes of nibble pairs as 32 bytes in 0..=15: the low nibbles first, then the high ones
/// (the order of the legacy formats, where byte j holds values j and j + 16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
///
/// # Safety
/// `bytes` must point at 16 readable bytes.
pub(super) unsafe fn nibbles_low_then_high(bytes: *const u8) -> __m256i {
    // SAFETY: the caller's promise; loadu has no alignment requirement.
    let packed = unsafe { _mm_loadu_si128(bytes.cast()) };
    let low_mask = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(packed, low_mask);
    // A 16-bit shift moves the neighbour byte's low bits in; the mask drops them.
    let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
    _mm256_set_m128i(high, low)
}

/// 32 bits as 32 bytes, 0xFF where the bit is set: byte i of the result is bit i of `bits`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_from_bits(bits: u32) -> __m256i {
    // Byte i takes a copy of the source byte i / 8 ...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // ... then sets every bit but bit i % 8, so it is all ones exactly when that bit was set.
    let all_but_own_bit = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(
        _mm256_or_si256(spread, all_but_own_bit),
        _mm256_set1_epi64x(-1),
    )
}

/// Sums of four neighbouring products of signed bytes `a` and `b`, as eight i32, given
/// `magnitudes` = |a| (computed once for an `a` that meets several `b`).
///
/// `maddubs` multiplies unsigned by signed bytes, so the sign of `a` moves onto `b` first. Exact
/// as long as no pair sum passes i16: |a| <= 128 and |b| <= 127 (quantized activations) is fine.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_magnitudes_signs(magnitudes: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(b, a));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// How a 32-value format (Q4_0, Q5_0, Q8_0) unpacks a block's quants for [`q8_0_tile`].
pub(super) trait SignedQuants {
    /// The block's 32 quants as signed bytes (the block's first two bytes are its f16 scale).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (implementations are compiled for them), and
    /// `block` must point at a whole block of the format.
    unsafe fn signed_quants(block: *const u8) -> __m256i;
}

/// A tile of R rows of 32-value blocks (Q4_0, Q5_0, Q8_0, unpacked by `U`) times N rows of
/// Q8_0 blocks. Each row's block is unpacked once per tile and each input's block loaded once
/// per tile. The lengths are checked once, up front, and the blocks read through pointers: a
/// bounds check per load cost a decode step (4 rows x 1 input) a fifth of its instructions.
///
/// Blocks go two at a time: the pair's two scaled sums are added together before they meet the
/// accumulator, so that the loop waits on one addition per two blocks (not a multiply-add per
/// block) even for a tile of one row and one input.
///
/// Panics unless every row holds one `block_bytes` block per block of every input.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q8_0_tile<U: SignedQuants, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    block_bytes: usize,
    inputs: [&[BlockQ8_0]; N],
) -> [[f32; N]; R] {
    let blocks = check_tile_lengths(&rows, &inputs, block_bytes);
    let starts: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    // SAFETY (every `block` below): blocks `b` and `b + 1` are below `blocks`, so each lies
    // whole in its row (checked above).
    let block = |r: usize, b: usize| unsafe { starts[r].add(b * block_bytes) };
    // SAFETY: the f16 scale is a block's first two bytes.
    let scale_of = |block: *const u8| unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            block.cast::<u16>().read_unaligned() as i32,
        )))
    };
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut b = 0;
    while b + 2 <= blocks {
        let mut quants = [[_mm256_setzero_si256(); 2]; R];
        let mut magnitudes = [[_mm256_setzero_si256(); 2]; R];
        let mut d = [[_mm256_setzero_ps(); 2]; R];
        for r in 0..R {
            for half in 0..2 {
                let block = block(r, b + half);
                d[r][half] = _mm256_set1_ps(scale_of(block));
                // SAFETY: the features are on (this function is compiled for them) and the
                // block is whole.
                let q = unsafe { U::signed_quants(block) };
                quants[r][half] = q;
                magnitudes[r][half] = _mm256_sign_epi8(q, q);
            }
        }
        for k in 0..N {
            let (first, second) = (&inputs[k][b], &inputs[k][b + 1]);
            let first_quants = load_i8x32(&first.quants);
            let second_quants = load_i8x32(&second.quants);
            let first_scale = _mm256_set1_ps(first.scale);
            let second_scale = _mm256_set1_ps(second.scale);
            for r in 0..R {
                let first_sums = dot_magnitudes_signs(magnitudes[r][0], quants[r][0], first_quants);
                let second_sums =
                    dot_magnitudes_signs(magnitudes[r][1], quants[r][1], second_quants);
                let both = _mm256_fmadd_ps(
                    _mm256_mul_ps(d[r][0], first_scale),
                    _mm256_cvtepi32_ps(first_sums),
                    _mm256_mul_ps(
                        _mm256_mul_ps(d[r][1], second_scale),
                        _mm256_cvtepi32_ps(second_sums),
                    ),
                );
                acc[r][k] = _mm256_add_ps(acc[r][k], both);
            }
        }
        b += 2;
    }
    if b < blocks {
        let mut quants = [_mm256_setzero_si256(); R];
        let mut d = [_mm256_setzero_ps(); R];
        for r in 0..R {
            let block = block(r, b);
            d[r] = _mm256_set1_ps(scale_of(block));
            // SAFETY: as above.
            quants[r] = unsafe { U::signed_quants(block) };
        }
        for k in 0..N {
            let act = &inputs[k][b];
            let activations = load_i8x32(&act.quants);
            let act_scale = _mm256_set1_ps(act.scale);
            for r in 0..R {
                let magnitudes = _mm256_sign_epi8(quants[r], quants[r]);
                let sums = dot_magnitudes_signs(magnitudes, quants[r], activations);
                let scale = _mm256_mul_ps(d[r], act_scale);
                acc[r][k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc[r][k]);
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

/// The first 16 values of `values`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i16x16(values: &[i16]) -> __m256i {
    let values = &values[..16];
    // SAFETY: `values` holds 32 readable bytes, and loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

/// The four quants from the start of `quants` as one little-endian i32, to broadcast to every
/// lane (the interleaved kernels' pieces are four values of each row).
#[inline(always)]
pub(super) fn four_quants(quants: &[i8]) -> i32 {
    i32::from_le_bytes([
        quants[0] as u8,
        quants[1] as u8,
        quants[2] as u8,
        quants[3] as u8,
    ])
}

/// The four quants from the start of `quants` in every 32-bit lane, loaded straight into the
/// vector (LLVM can fold it into the instruction that uses it as an AVX-512 broadcast operand,
/// where [`four_quants`] may go through a general register).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn broadcast_four_quants(quants: &[i8]) -> __m256i {
    let quants = &quants[..4];
    // SAFETY: `quants` holds 4 readable bytes, and read_unaligned has no alignment requirement.
    _mm256_set1_epi32(unsafe { quants.as_ptr().cast::<i32>().read_unaligned() })
}

/// The eight lanes, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn lanes_f32x8(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats, and storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// The sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sum_f32x8(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

/// How far ahead of the group block it is multiplying a kernel asks for weights that come from
/// memory. With the weights in 4 KiB pages the hardware's prefetchers stop at every page's
/// end, and a core that is busy multiplying keeps too few reads in flight to stream at the
/// memory's speed on its own. Measured with the `moe_decode` bench (a decode step's Q4_K
/// gate/up and Q5_0 or Q8_0 down products of 8 of 64 experts, 2 threads, interleaved runs of each
/// distance): 0 -> 512 -> 1024 -> 2048 -> 4096 bytes gave 17.8 -> 20.2 -> 20.4 -> 21.5 -> 21.6
/// GB/s in 4 KiB pages and 20.5 -> 21.6 -> 24.0 -> 22.5 -> 21.9 GB/s in 2 MiB pages (Q5_0
/// down); Q8_0 down peaked at 1024 in both. The Q6_K output matrix of a lite:4 Q4_K_M file
/// (102400 x 2048, in 2 MiB pages) took a median of 505 ms per 64 decoded tokens at 1024 bytes
/// ahead, against 616, 592, 548 and 583 at 2048, 3360 (two group blocks, its old distance),
/// 6720 and 13440 (5 alternating runs each).
pub(super) const PREFETCH_AHEAD_BYTES: usize = 1024;

/// Asks the CPU to bring the bytes [`PREFETCH_AHEAD_BYTES`] past `block` into cache, as many as
/// `block` holds: the weights a kernel streaming through memory meets a little later.
#[inline(always)]
pub(super) fn prefetch_ahead(block: &[u8]) {
    let ahead = block.as_ptr().wrapping_add(PREFETCH_AHEAD_BYTES);
    for line in (0..block.len()).step_by(64) {
        // SAFETY: a prefetch is a hint: it reads nothing and cannot fault, whatever the address
        // (past the end of the weights it fetches nothing useful).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
    }
}

//! Q8_0 and Q5_0, the 32-value formats a Q4_K_M file keeps the experts' down projections in,
//! with eight rows interleaved: the same blocks as a GGUF file's rows, rearranged so that one
//! vector instruction works on eight rows at once. (Both meet Q8_0 inputs, hence the name.)
//!
//! A row-by-row product converts one f16 scale per block per row, adds up a row's eight lanes
//! at the end and, in Q5_0, expands 32 fifth bits per block per row. With eight rows side by
//! side, each 32-byte load holds a 4-value piece of every row and meets the input's four
//! matching quants broadcast, the eight rows' scales convert in one instruction, and the lanes of
//! the float accumulator are the eight rows' products. The layout is [`q4_k_x8`]'s idea (see
//! there) for these formats.
//!
//! Layout: a matrix of `rows` (a multiple of 8) rows is `rows / 8` groups, each group the blocks
//! of its eight rows in column order, one *group block* per column of blocks: eight blocks'
//! bytes, so the matrix keeps its size. In Q8_0 (272 bytes):
//!
//! | bytes | what |
//! |---|---|
//! | 0..16 | the eight rows' `d` (f16), row r at 2r |
//! | 16..272 | the quants: quants 4j..4j + 4 of row r at 16 + 32j + 4r |
//!
//! In Q5_0 (176 bytes), with q\[i\] in 0..=31 the 5-bit quant of value i of row r (its value
//! is d (q\[i\] - 16)), and k in 0..4:
//!
//! | bytes | what |
//! |---|---|
//! | 0..16 | the eight rows' `d` (f16), row r at 2r |
//! | 16..144 | four vectors V_p (p in 0..4) at 16 + 32p: byte 4r + k of V_p is q\[4p + k\] in its low five bits and q\[16 + 4p + k\] >> 2 in its top three |
//! | 144..176 | byte 4r + k: bits 2p, 2p + 1 are q\[16 + 4p + k\] & 3, for p in 0..4 |
//!
//! The file's nibbles and fifth bits are repacked so that the kernel gets the 5-bit quants of
//! eight rows' four values with one AND (values 0..16) or five operations (values 16..32):
//! 23 per group block, where nibbles and a vector of fifth bits would take 35.
//!
//! [`q4_k_x8`]: super::q4_k_x8

use super::activations::{BlockQ8_0, QK8_0};
use super::interleaved::{GroupBlock, MOST_INPUTS_AT_ONCE, matmul_groups, padded};
use super::matmul::q8_0_inputs;
use super::{GgmlType, InstructionSet};

/// Rows interleaved together.
pub const ROWS: usize = super::interleaved::ROWS_TOGETHER;
/// Where a group block's quants start, after the eight rows' f16 scales.
const QUANTS_AT: usize = 16;

/// What the shared code knows of a format: its block, where a row's block goes in a group
/// block, and its share of the AVX2 kernel.
trait Format {
    const TYPE: GgmlType;
    /// Bytes of one block of one row, as in a GGUF file.
    const BLOCK_BYTES: usize;
    const GROUP_BLOCK_BYTES: usize = ROWS * Self::BLOCK_BYTES;
    /// Inputs a group meets at once when there are that many (1, 2 or 4; the rest go one at a
    /// time): each shares the group's loads and unpacking among them.
    const INPUTS_AT_ONCE: usize;
    /// How far above the signed quant the unsigned byte the VNNI kernel multiplies lies (`dpbusd`
    /// takes one operand unsigned): the kernel subtracts this times the input block's quant sum.
    const VNNI_OFFSET: i32;
    /// Whether the AVX2 kernel reads the inputs' [`q5_0_offset`]s (only Q5_0's does).
    const AVX2_READS_OFFSETS: bool = false;

    /// Writes `block` (row r's) into its places in `group_block`.
    fn interleave_block(block: &[u8], r: usize, group_block: &mut [u8]);

    /// Row r's block from `group_block`, into `block`: the inverse of
    /// [`Format::interleave_block`].
    fn deinterleave_block(group_block: &[u8], r: usize, block: &mut [u8]);

    /// The row-by-row product of one row (file layout) and one input.
    fn dot_row(row: &[u8], x: &[BlockQ8_0]) -> f32;

    /// The eight rows' integer dot products with each input's block `b` (lane r: row r's), for
    /// one group block. Every sum is exact.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (implementations are compiled for them).
    #[cfg(target_arch = "x86_64")]
    unsafe fn block_dots<const N: usize>(
        group_block: &[u8],
        inputs: &[Input<'_>; N],
        b: usize,
    ) -> [std::arch::x86_64::__m256i; N];

    /// One group of eight rows times each of `inputs` with AVX-512 VNNI: per group block, the
    /// quants as unsigned bytes [`Format::VNNI_OFFSET`] above their signed values meet the
    /// inputs' quants in `dpbusd`, each input's [`Input::offsets`] (from [`offsets`]) comes off
    /// the sums ([`take_offsets`]), and [`accumulate`] takes them into the float sums. (The loop
    /// over group blocks is the format's own: LLVM would not inline a per-block function.)
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512VL and AVX512_VNNI.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_group_vnni<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [Input<'_>; N],
    ) -> [[f32; ROWS]; N];
}

/// An input row as the kernels take it: its Q8_0 blocks and what the kernel of one instruction
/// set subtracts per block ([`offsets`]; empty where that kernel subtracts nothing).
#[derive(Clone, Copy)]
pub(super) struct Input<'a> {
    pub(super) blocks: &'a [BlockQ8_0],
    pub(super) offsets: &'a [i32],
}

/// Q8_0's group block (see the module docs).
struct Q8_0;

impl Format for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_BYTES: usize = 34;
    /// Inputs share only the loads and the magnitudes (16 of about 50 instructions per group
    /// block and input), and with two, LLVM unrolls the piece loop and keeps an accumulator on
    /// the stack across blocks; with four the loop stays a loop and nothing spills (same run, 1
    /// thread, 2048x1408, n = 8: 640 us a call one at a time, 871 in pairs, 543 in fours).
    const INPUTS_AT_ONCE: usize = 4;
    /// The sign bit flipped: w + 128.
    const VNNI_OFFSET: i32 = 128;

    fn interleave_block(block: &[u8], r: usize, group_block: &mut [u8]) {
        group_block[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
        for (piece, quants) in block[2..].chunks_exact(4).enumerate() {
            let to = QUANTS_AT + 32 * piece + 4 * r;
            group_block[to..to + 4].copy_from_slice(quants);
        }
    }

    fn deinterleave_block(group_block: &[u8], r: usize, block: &mut [u8]) {
        block[..2].copy_from_slice(&group_block[2 * r..2 * r + 2]);
        for (piece, quants) in block[2..].chunks_exact_mut(4).enumerate() {
            let from = QUANTS_AT + 32 * piece + 4 * r;
            quants.copy_from_slice(&group_block[from..from + 4]);
        }
    }

    fn dot_row(row: &[u8], x: &[BlockQ8_0]) -> f32 {
        super::dot_q8_0_q8_0(row, x)
    }

    /// Per piece: |w| as the unsigned operand of `maddubs` and w's sign moved onto the input's
    /// quants, as the row-by-row kernel does. A pair of products is up to 2 * 128 * 127 = 32512
    /// (a weight may be -128), so two pieces' pairs could pass i16: each piece's pairs widen to
    /// i32 at once.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_dots<const N: usize>(
        group_block: &[u8],
        inputs: &[Input<'_>; N],
        b: usize,
    ) -> [std::arch::x86_64::__m256i; N] {
        use super::x86::*;
        use std::arch::x86_64::*;
        let mut sums = [_mm256_setzero_si256(); N];
        for piece in 0..8 {
            let weights = load_u8x32(&group_block[QUANTS_AT + 32 * piece..]);
            let magnitudes = _mm256_sign_epi8(weights, weights);
            for k in 0..N {
                let quants =
                    _mm256_set1_epi32(four_quants(&inputs[k].blocks[b].quants[4 * piece..]));
                sums[k] =
                    _mm256_add_epi32(sums[k], dot_magnitudes_signs(magnitudes, weights, quants));
            }
        }
        sums
    }

    /// Per piece: the weights with their sign bit flipped (w + 128, unsigned) meet four quants
    /// of each input in one `dpbusd`; a block's sum is at most 32 * 255 * 127 = 1036320.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_group_vnni<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [Input<'_>; N],
    ) -> [[f32; ROWS]; N] {
        use super::x86::*;
        use std::arch::x86_64::*;
        let sign_bit = _mm256_set1_epi8(0x80u8 as i8);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, group_block) in group.chunks_exact(Self::GROUP_BLOCK_BYTES).enumerate() {
            if PREFETCH {
                prefetch_ahead(group_block);
            }
            // Two sums per input, even and odd pieces: `dpbusd` takes several cycles to give
            // its sum, and one chain of eight per input would wait on each.
            let mut sums = [[_mm256_setzero_si256(); 2]; N];
            for piece in 0..8 {
                let weights =
                    _mm256_xor_si256(load_u8x32(&group_block[QUANTS_AT + 32 * piece..]), sign_bit);
                for k in 0..N {
                    let quants = broadcast_four_quants(&inputs[k].blocks[b].quants[4 * piece..]);
                    let sum = &mut sums[k][piece % 2];
                    *sum = _mm256_dpbusd_epi32(*sum, weights, quants);
                }
            }
            let dots = take_offsets(sums, &inputs, b);
            accumulate(&mut acc, group_block, dots, &inputs, b);
        }
        acc.map(|lanes| lanes_f32x8(lanes))
    }
}

/// Each input's two partial sums added, less its offset for block `b` (the VNNI kernels' last
/// step).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn take_offsets<const N: usize>(
    sums: [[std::arch::x86_64::__m256i; 2]; N],
    inputs: &[Input<'_>; N],
    b: usize,
) -> [std::arch::x86_64::__m256i; N] {
    use std::arch::x86_64::*;
    std::array::from_fn(|k| {
        let sum = _mm256_add_epi32(sums[k][0], sums[k][1]);
        _mm256_sub_epi32(sum, _mm256_set1_epi32(inputs[k].offsets[b]))
    })
}

/// Q5_0's group block (see the module docs).
struct Q5_0;

/// Where Q5_0's group block keeps the low two bits of the quants of values 16..32.
const Q5_0_LOW_BITS_AT: usize = QUANTS_AT + 4 * 32;

/// The 5-bit quants (0..=31) of a Q5_0 block: f16 d, a u32 whose bit i is value i's fifth bit,
/// 16 bytes of nibbles (value i's low four bits in byte i % 16, low nibble for i < 16).
fn q5_0_quants(block: &[u8]) -> [u8; QK8_0] {
    let fifth_bits = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    std::array::from_fn(|i| {
        let nibble = (block[6 + i % 16] >> (4 * (i / 16))) & 0x0F;
        nibble | (((fifth_bits >> i) & 1) as u8) << 4
    })
}

impl Format for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_BYTES: usize = 22;
    /// Unpacking is a third of the work for one input; with four inputs the unrolled loop
    /// spills (same run, 1 thread, 2048x1408, n = 8: 639 us a call one at a time, 483 in pairs,
    /// 537 in fours).
    const INPUTS_AT_ONCE: usize = 2;
    /// The quants are stored 0..=31 for q - 16.
    const VNNI_OFFSET: i32 = 16;
    const AVX2_READS_OFFSETS: bool = true;

    fn interleave_block(block: &[u8], r: usize, group_block: &mut [u8]) {
        group_block[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
        let q = q5_0_quants(block);
        for k in 0..4 {
            let mut low_bits = 0;
            for p in 0..4 {
                let (first, second) = (q[4 * p + k], q[16 + 4 * p + k]);
                group_block[QUANTS_AT + 32 * p + 4 * r + k] = first | (second >> 2) << 5;
                low_bits |= (second & 3) << (2 * p);
            }
            group_block[Q5_0_LOW_BITS_AT + 4 * r + k] = low_bits;
        }
    }

    fn deinterleave_block(group_block: &[u8], r: usize, block: &mut [u8]) {
        block[..2].copy_from_slice(&group_block[2 * r..2 * r + 2]);
        let mut q = [0u8; QK8_0];
        for k in 0..4 {
            let low_bits = group_block[Q5_0_LOW_BITS_AT + 4 * r + k];
            for p in 0..4 {
                let packed = group_block[QUANTS_AT + 32 * p + 4 * r + k];
                q[4 * p + k] = packed & 0x1F;
                q[16 + 4 * p + k] = (packed >> 5) << 2 | ((low_bits >> (2 * p)) & 3);
            }
        }
        let fifth_bits = (0..QK8_0).fold(0u32, |bits, i| bits | ((q[i] >> 4) as u32 & 1) << i);
        block[2..6].copy_from_slice(&fifth_bits.to_le_bytes());
        for i in 0..16 {
            block[6 + i] = (q[i] & 0x0F) | (q[16 + i] & 0x0F) << 4;
        }
    }

    fn dot_row(row: &[u8], x: &[BlockQ8_0]) -> f32 {
        super::dot_q5_0_q8_0(row, x)
    }

    /// The quants go in unsigned (0..=31, what `maddubs` wants on that side), each piece's pairs
    /// into one i16 sum per lane, and the input's [`q5_0_offset`] comes off before the sums
    /// widen. A pair of products is at most 2 * 31 * 127 = 7874, so `maddubs` never saturates;
    /// the eight pieces' total may pass i16, but the i16 additions wrap, and what is left after
    /// the offset, a sum of 16 products (q - 16) a with |q - 16| <= 16, is at most
    /// 16 * 16 * 127 = 32512 in magnitude: it fits, so the wrapped sum is the exact one.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_dots<const N: usize>(
        group_block: &[u8],
        inputs: &[Input<'_>; N],
        b: usize,
    ) -> [std::arch::x86_64::__m256i; N] {
        use super::x86::*;
        use std::arch::x86_64::*;
        let low_bits = load_u8x32(&group_block[Q5_0_LOW_BITS_AT..]);
        let mut sums = [_mm256_setzero_si256(); N];
        for p in 0..4 {
            let [first, second] = q5_0_piece_quants(group_block, low_bits, p);
            for k in 0..N {
                let quants = &inputs[k].blocks[b].quants;
                let first_quants = _mm256_set1_epi32(four_quants(&quants[4 * p..]));
                let second_quants = _mm256_set1_epi32(four_quants(&quants[16 + 4 * p..]));
                sums[k] = _mm256_add_epi16(sums[k], _mm256_maddubs_epi16(first, first_quants));
                sums[k] = _mm256_add_epi16(sums[k], _mm256_maddubs_epi16(second, second_quants));
            }
        }
        let ones = _mm256_set1_epi16(1);
        for k in 0..N {
            let offset = _mm256_set1_epi32(inputs[k].offsets[b]);
            sums[k] = _mm256_madd_epi16(_mm256_sub_epi16(sums[k], offset), ones);
        }
        sums
    }

    /// The quants unpacked as in [`Format::block_dots`] (0..=31) meet the inputs' quants in
    /// `dpbusd`, straight into i32 (a block's sum is at most 32 * 31 * 127 = 125984).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_group_vnni<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [Input<'_>; N],
    ) -> [[f32; ROWS]; N] {
        use super::x86::*;
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, group_block) in group.chunks_exact(Self::GROUP_BLOCK_BYTES).enumerate() {
            if PREFETCH {
                prefetch_ahead(group_block);
            }
            let low_bits = load_u8x32(&group_block[Q5_0_LOW_BITS_AT..]);
            // Two sums per input, as in Q8_0's.
            let mut sums = [[_mm256_setzero_si256(); 2]; N];
            for p in 0..4 {
                let [first, second] = q5_0_piece_quants(group_block, low_bits, p);
                for k in 0..N {
                    let quants = &inputs[k].blocks[b].quants;
                    let first_quants = broadcast_four_quants(&quants[4 * p..]);
                    let second_quants = broadcast_four_quants(&quants[16 + 4 * p..]);
                    sums[k][0] = _mm256_dpbusd_epi32(sums[k][0], first, first_quants);
                    sums[k][1] = _mm256_dpbusd_epi32(sums[k][1], second, second_quants);
                }
            }
            let dots = take_offsets(sums, &inputs, b);
            accumulate(&mut acc, group_block, dots, &inputs, b);
        }
        acc.map(|lanes| lanes_f32x8(lanes))
    }
}

/// The 5-bit quants (0..=31) of values 4p..4p + 4 and 16 + 4p..16 + 4p + 4 of the eight rows
/// of a Q5_0 group block, from its vector V_p and its low bits (`low_bits`, loaded once).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_piece_quants(
    group_block: &[u8],
    low_bits: std::arch::x86_64::__m256i,
    p: usize,
) -> [std::arch::x86_64::__m256i; 2] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let low_five = _mm256_set1_epi8(0x1F);
    let bits_two_to_four = _mm256_set1_epi8(0x1C);
    let low_two = _mm256_set1_epi8(0x03);
    let packed = load_u8x32(&group_block[QUANTS_AT + 32 * p..]);
    // A 16-bit shift moves the neighbour byte's bits in; the masks drop them.
    let low_two_bits = match p {
        0 => low_bits,
        1 => _mm256_srli_epi16(low_bits, 2),
        2 => _mm256_srli_epi16(low_bits, 4),
        _ => _mm256_srli_epi16(low_bits, 6),
    };
    [
        _mm256_and_si256(packed, low_five),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(packed, 3), bits_two_to_four),
            _mm256_and_si256(low_two_bits, low_two),
        ),
    ]
}

/// What Q5_0's kernel subtracts from its i16 sums for one input block, to turn the unsigned
/// quants q into q - 16: 16 times the sum over the block's eight 4-value pieces of the piece's
/// quants 0 and 1 (in the low i16) and of its quants 2 and 3 (in the high i16), the i16 lanes
/// of `maddubs` over 4-byte pieces. Each is at most 16 * 16 * 127 = 32512 in magnitude.
fn q5_0_offset(block: &BlockQ8_0) -> i32 {
    let half = |h: usize| {
        let sum: i32 = block
            .quants
            .chunks_exact(4)
            .map(|piece| piece[2 * h] as i32 + piece[2 * h + 1] as i32)
            .sum();
        (16 * sum) as i16 as u16 as u32
    };
    (half(0) | half(1) << 16) as i32
}

/// The format for `ty`, or a panic for a type this module does not interleave.
macro_rules! with_format {
    ($ty:expr, $format:ident => $body:expr) => {
        match $ty {
            GgmlType::Q8_0 => {
                type $format = Q8_0;
                $body
            }
            GgmlType::Q5_0 => {
                type $format = Q5_0;
                $body
            }
            other => panic!(
                "{} rows are not interleaved here (Q8_0 and Q5_0 are)",
                other.name()
            ),
        }
    };
}

/// Where `F` puts a row's block in a group block, for the shared rearranging.
fn group_block<F: Format>() -> GroupBlock<BlockQ8_0> {
    GroupBlock {
        ty: F::TYPE,
        put: F::interleave_block,
        take: F::deinterleave_block,
        dot_row: F::dot_row,
    }
}

/// An input row's [`Input::offsets`] for the kernel of `level` on `ty` (Q8_0 or Q5_0), computed
/// once per row: each block's quant sum times [`Format::VNNI_OFFSET`] for VNNI, Q5_0's
/// [`q5_0_offset`] for AVX2, nothing where the kernel reads none.
pub(super) fn offsets(ty: GgmlType, level: InstructionSet, blocks: &[BlockQ8_0]) -> Vec<i32> {
    with_format!(ty, F => offsets_for::<F>(level, blocks))
}

fn offsets_for<F: Format>(level: InstructionSet, blocks: &[BlockQ8_0]) -> Vec<i32> {
    match level {
        InstructionSet::Avx512Vnni => blocks
            .iter()
            .map(|block| F::VNNI_OFFSET * block.quants.iter().map(|&q| q as i32).sum::<i32>())
            .collect(),
        InstructionSet::Avx2 if F::AVX2_READS_OFFSETS => blocks.iter().map(q5_0_offset).collect(),
        _ => Vec::new(),
    }
}

/// Whether the kernel of `level` on `F` reads [`Input::offsets`].
fn reads_offsets<F: Format>(level: InstructionSet) -> bool {
    level == InstructionSet::Avx512Vnni || (level == InstructionSet::Avx2 && F::AVX2_READS_OFFSETS)
}

/// One group of eight interleaved rows of `ty` (Q8_0 or Q5_0) times one input (its offsets from
/// [`offsets`] for the same `level`): a decode step's share of [`super::matvec_many_quant`]
/// (`from_memory`: prefetch the weights).
pub(super) fn dot_group_one(
    ty: GgmlType,
    level: InstructionSet,
    group: &[u8],
    input: Input<'_>,
    from_memory: bool,
) -> [f32; ROWS] {
    with_format!(ty, F => dot_group::<F, 1>(level, group, [input], from_memory)[0])
}

/// Where `ty` (Q8_0 or Q5_0; anything else panics) puts a row's block in a group block, for the
/// shared rearranging.
pub(super) fn group_block_of(ty: GgmlType) -> GroupBlock<BlockQ8_0> {
    with_format!(ty, F => group_block::<F>())
}

/// Writes X W^T into `y` ([n, rows]) for `n` input rows `x` ([n, cols]) and W (`ty`, Q8_0 or
/// Q5_0) as [`interleave`] left it: [`super::matmul_rows_quant`] for interleaved rows. Each
/// thread takes bands of whole groups; with more inputs than a group meets at once, a band goes
/// in sub-bands that stay in cache while every few inputs pass over them.
///
/// Panics unless `ty` is Q8_0 or Q5_0, `rows` is a multiple of 8, `cols` of 32, and the slices
/// hold what the sizes say (caller bugs).
pub fn matmul_interleaved(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    with_format!(ty, F => matmul::<F>(weights, rows, cols, x, n, y))
}

fn matmul<F: Format>(weights: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * cols, "x must hold n x cols values");
    let level = InstructionSet::vectors_in_use();
    let blocks_of_inputs = q8_0_inputs(x);
    let blocks = cols / QK8_0;
    let offsets = offsets_for::<F>(level, &blocks_of_inputs);
    let input = |k: usize| {
        let these = k * blocks..(k + 1) * blocks;
        Input {
            blocks: &blocks_of_inputs[these.clone()],
            offsets: offsets.get(these).unwrap_or_default(),
        }
    };
    let products = |group: &[u8], first: usize, take: usize, from_memory: bool| match take {
        4 => padded(dot_group::<F, 4>(
            level,
            group,
            std::array::from_fn(|k| input(first + k)),
            from_memory,
        )),
        2 => padded(dot_group::<F, 2>(
            level,
            group,
            [input(first), input(first + 1)],
            from_memory,
        )),
        _ => padded(dot_group::<F, 1>(level, group, [input(first)], from_memory)),
    };
    // With 32 registers, four inputs' sums fit beside the unpacked quants in either format.
    let inputs_at_once = if level == InstructionSet::Avx512Vnni {
        MOST_INPUTS_AT_ONCE
    } else {
        F::INPUTS_AT_ONCE
    };
    matmul_groups(F::TYPE, weights, rows, cols, n, y, inputs_at_once, products);
}

/// One group of eight interleaved rows times each of `inputs`, on the kernel of `level`:
/// `result[k][r]` is row r times input k. The integer sums per block are exactly the row-by-row
/// kernel's; the float sums run in another order, so results agree with it to rounding.
/// `from_memory`: the weights come straight from memory, and the kernel prefetches them.
///
/// Panics unless the CPU supports `level`, the group holds one group block per block of each
/// input, and each input one offset per block where the kernel reads them.
fn dot_group<F: Format, const N: usize>(
    level: InstructionSet,
    group: &[u8],
    inputs: [Input<'_>; N],
    from_memory: bool,
) -> [[f32; ROWS]; N] {
    for x in inputs {
        assert!(
            group.len() == x.blocks.len() * F::GROUP_BLOCK_BYTES
                && (!reads_offsets::<F>(level) || x.offsets.len() == x.blocks.len()),
            "a group of {} rows must hold one group block per activation block",
            F::TYPE.name()
        );
    }
    assert!(level.is_supported(), "this CPU lacks {}", level.name());
    match level {
        // SAFETY (both arms): the CPU has the features the functions are compiled for.
        #[cfg(target_arch = "x86_64")]
        InstructionSet::Avx512Vnni => unsafe {
            if from_memory {
                F::dot_group_vnni::<N, true>(group, inputs)
            } else {
                F::dot_group_vnni::<N, false>(group, inputs)
            }
        },
        #[cfg(target_arch = "x86_64")]
        InstructionSet::Avx2 => unsafe {
            if from_memory {
                dot_group_avx2::<F, N, true>(group, inputs)
            } else {
                dot_group_avx2::<F, N, false>(group, inputs)
            }
        },
        _ => dot_group_portable::<F, N>(group, inputs),
    }
}

/// Row by row through the format's own kernel, on the group's rows put back in file order.
fn dot_group_portable<F: Format, const N: usize>(
    group: &[u8],
    inputs: [Input<'_>; N],
) -> [[f32; ROWS]; N] {
    group_block::<F>().portable_products(group, inputs.map(|x| x.blocks))
}

/// Per group block: the eight rows' f16 scales in one conversion, the format's exact integer
/// sums for the eight rows ([`Format::block_dots`]), and one multiply-add per input taking them
/// into eight float lanes, one per row ([`accumulate`]). With `PREFETCH`, each group block
/// first asks for the weights [`super::x86::PREFETCH_AHEAD_BYTES`] further on.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_group_avx2<F: Format, const N: usize, const PREFETCH: bool>(
    group: &[u8],
    inputs: [Input<'_>; N],
) -> [[f32; ROWS]; N] {
    use super::x86::*;
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, group_block) in group.chunks_exact(F::GROUP_BLOCK_BYTES).enumerate() {
        if PREFETCH {
            prefetch_ahead(group_block);
        }
        // SAFETY: the features are on (this function is compiled for them).
        let dots = unsafe { F::block_dots(group_block, &inputs, b) };
        accumulate(&mut acc, group_block, dots, &inputs, b);
    }
    acc.map(|lanes| lanes_f32x8(lanes))
}

/// Each input's float sums plus one group block's integer sums `dots` times the eight rows' f16
/// scales (from the group block's start) and the input block's scale.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate<const N: usize>(
    acc: &mut [std::arch::x86_64::__m256; N],
    group_block: &[u8],
    dots: [std::arch::x86_64::__m256i; N],
    inputs: &[Input<'_>; N],
    b: usize,
) {
    use super::x86::*;
    use std::arch::x86_64::*;
    let d = _mm256_cvtph_ps(load_u8x16(group_block));
    for (k, acc) in acc.iter_mut().enumerate() {
        let act_scale = _mm256_set1_ps(inputs[k].blocks[b].scale);
        *acc = _mm256_fmadd_ps(
            _mm256_mul_ps(d, act_scale),
            _mm256_cvtepi32_ps(dots[k]),
            *acc,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_support::{Rng, extreme_inputs, random_blocks, random_quantized};

    /// Eight rows' blocks `bytes` times `inputs`, through the group kernel and the portable
    /// road, against the row-by-row kernel.
    fn check_rows<F: Format, const N: usize>(bytes: &[u8], inputs: &[Vec<BlockQ8_0>]) {
        for level in InstructionSet::supported() {
            let offsets: Vec<Vec<i32>> =
                inputs.iter().map(|x| offsets_for::<F>(level, x)).collect();
            let xs: [Input<'_>; N] = std::array::from_fn(|k| Input {
                blocks: &inputs[k],
                offsets: &offsets[k],
            });
            group_block::<F>().check_products(bytes, xs.map(|x| x.blocks), |group, from_memory| {
                dot_group::<F, N>(level, group, xs, from_memory)
            });
        }
    }

    fn check_group<F: Format, const N: usize>(blocks: usize, rng: &mut Rng) {
        let bytes = random_blocks(F::TYPE, ROWS * blocks, rng);
        let inputs: Vec<Vec<BlockQ8_0>> = (0..N)
            .map(|_| random_quantized::<BlockQ8_0>(blocks, rng))
            .collect();
        check_rows::<F, N>(&bytes, &inputs);
    }

    fn groups_match<F: Format>(seed: u64) {
        let mut rng = Rng::new(seed);
        for blocks in [1, 2, 5, 8, 44] {
            check_group::<F, 1>(blocks, &mut rng);
            check_group::<F, 2>(blocks, &mut rng);
            check_group::<F, 3>(blocks, &mut rng);
            check_group::<F, 4>(blocks, &mut rng);
        }
    }

    #[test]
    fn q8_0_groups_match_the_row_by_row_kernel() {
        groups_match::<Q8_0>(11);
    }

    #[test]
    fn q5_0_groups_match_the_row_by_row_kernel() {
        groups_match::<Q5_0>(12);
    }

    /// The integer sums' bounds: every weight byte 0x00, 0x80 or 0xFF (Q8_0: 0, -128, -1; Q5_0:
    /// every quant 0 or 31, every quant -16 for 0x00), scale 1, against inputs whose quants are all
    /// +127 or all -127 or mixed ([`extreme_inputs`]).
    fn extremes<F: Format>() {
        let blocks = 3;
        let inputs = extreme_inputs::<BlockQ8_0>(blocks);
        assert!(inputs[0][0].quants.iter().all(|&q| q == 127));
        for fill in [0x00, 0x80, 0xFF] {
            let mut bytes = vec![fill; ROWS * blocks * F::BLOCK_BYTES];
            for block in bytes.chunks_exact_mut(F::BLOCK_BYTES) {
                block[..2].copy_from_slice(&half::f16::ONE.to_le_bytes());
            }
            check_rows::<F, 3>(&bytes, &inputs);
        }
    }

    #[test]
    fn q8_0_extremes_are_exact() {
        extremes::<Q8_0>();
    }

    #[test]
    fn q5_0_extremes_are_exact() {
        extremes::<Q5_0>();
    }
}

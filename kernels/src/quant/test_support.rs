//! Shared by the formats' unit tests: random blocks, and the two checks every dot product passes.
//!
//! Tolerances, with u = 2^-24 (f32's unit roundoff) and M = sum over values of
//! (|w_i| + 2 |m_i|) |x̂_i|, where w is the dequantized weight, m_i the sub-block minimum it
//! subtracts (K-quants with minimums; 0 elsewhere) and x̂ the dequantized activation:
//!
//! - Every block's integer sum is exact in both kernels, so they differ only in float rounding:
//!   converting the sums, scaling them, and accumulating one term per block (the SIMD kernels in
//!   eight lanes, added at the end). Each of the two results is then within (blocks + 8) u M of
//!   the exact value, so they differ by at most (blocks + 8) 2u M = (blocks + 8) EPSILON M.
//! - Against the f32 dot of the dequantized weights with the unquantized input x, the quantized
//!   dot adds the activations' rounding: |x_i - x̂_i| <= s/2 for a block scale s (plus a few ulps
//!   of s from the two roundings of the scale, hence 0.5001), so the bound is
//!   sum |w_i| 0.5001 s_i + (blocks + 8) EPSILON M.

use super::activations::{BlockQ8_0, BlockQ8K, quantize_row_q8_0, quantize_row_q8_k};
use super::row_dot::RowDot;
use super::{GgmlType, dequantize};

/// splitmix64: deterministic and dependency-free.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub(super) fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Where a block keeps its f16 scales.
pub(super) fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

/// Random bytes for every quant, packed scale and high bit; finite f16 scales of either sign
/// between about 1e-3 and 1 (a few exactly zero).
pub(super) fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..blocks * ty.block_bytes())
        .map(|_| rng.next_u64() as u8)
        .collect();
    for block in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &offset in scale_offsets(ty) {
            let scale = if rng.next_u64().is_multiple_of(16) {
                0.0
            } else {
                rng.signed_unit().signum() * 10f32.powf(-3.0 * rng.signed_unit().abs())
            };
            block[offset..offset + 2].copy_from_slice(&half::f16::from_f32(scale).to_le_bytes());
        }
    }
    bytes
}

/// What a weight's block subtracts from it: the K-quants' `dmin * min` of its sub-block, found by
/// dequantizing the block with every quant bit cleared (then the value is exactly `-dmin * min`).
fn subtracted_minimums(ty: GgmlType, weights: &[u8], values: usize) -> Vec<f32> {
    let quant_bits = match ty {
        GgmlType::Q4K => 16..144,
        GgmlType::Q5K => 16..176,
        _ => return vec![0.0; values],
    };
    let mut cleared = weights.to_vec();
    for block in cleared.chunks_exact_mut(ty.block_bytes()) {
        block[quant_bits.clone()].fill(0);
    }
    let mut minimums = vec![0f32; values];
    dequantize(ty, &cleared, &mut minimums);
    minimums
}

/// The activation block types, so that the checks serve both.
pub(super) trait ActivationBlock: Copy {
    const LEN: usize;
    const ZERO: Self;
    fn quantize(x: &[f32], out: &mut [Self]);
    fn scale(&self) -> f32;
    fn quants(&self) -> &[i8];
}

impl ActivationBlock for BlockQ8_0 {
    const LEN: usize = 32;
    const ZERO: Self = BlockQ8_0::ZERO;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_q8_0(x, out);
    }
    fn scale(&self) -> f32 {
        self.scale
    }
    fn quants(&self) -> &[i8] {
        &self.quants
    }
}

impl ActivationBlock for BlockQ8K {
    const LEN: usize = 256;
    const ZERO: Self = BlockQ8K::ZERO;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_q8_k(x, out);
    }
    fn scale(&self) -> f32 {
        self.scale
    }
    fn quants(&self) -> &[i8] {
        &self.quants
    }
}

/// A random input row, its quantized blocks and their dequantized values.
fn random_input<A: ActivationBlock>(blocks: usize, rng: &mut Rng) -> (Vec<f32>, Vec<A>, Vec<f32>) {
    // Magnitudes vary by block so that the blocks' scales differ.
    let x: Vec<f32> = (0..blocks * A::LEN)
        .map(|i| rng.signed_unit() * (1 + i / A::LEN % 5) as f32)
        .collect();
    let mut quantized = vec![A::ZERO; blocks];
    A::quantize(&x, &mut quantized);
    let dequantized = quantized
        .iter()
        .flat_map(|b| b.quants().iter().map(|&q| q as f32 * b.scale()))
        .collect();
    (x, quantized, dequantized)
}

/// The quantized blocks of a random input row ([`random_input`]'s).
pub(super) fn random_quantized<A: ActivationBlock>(blocks: usize, rng: &mut Rng) -> Vec<A> {
    random_input::<A>(blocks, rng).1
}

/// Inputs of `blocks` blocks whose quants all sit at +-127 (every value +1, every value -1, and
/// every third value -1): the extreme inputs the kernels' integer bounds are tested with.
pub(super) fn extreme_inputs<A: ActivationBlock>(blocks: usize) -> Vec<Vec<A>> {
    let signs: [fn(usize) -> f32; 3] = [|_| 1.0, |_| -1.0, |i| if i % 3 == 0 { -1.0 } else { 1.0 }];
    signs
        .iter()
        .map(|sign| {
            let x: Vec<f32> = (0..blocks * A::LEN).map(sign).collect();
            let mut quantized = vec![A::ZERO; blocks];
            A::quantize(&x, &mut quantized);
            quantized
        })
        .collect()
}

/// Sum over a row of |w x̂|, for the dequantized row and input: the scale the interleaved
/// kernels' float rounding is measured against.
pub(super) fn abs_products<A: ActivationBlock>(ty: GgmlType, row: &[u8], x: &[A]) -> f32 {
    let mut w = vec![0f32; x.len() * A::LEN];
    dequantize(ty, row, &mut w);
    let x_hat = x
        .iter()
        .flat_map(|b| b.quants().iter().map(|&q| b.scale() * q as f32));
    w.iter().zip(x_hat).map(|(w, x)| (w * x).abs()).sum()
}

/// M of the module docs.
fn magnitude(ty: GgmlType, weights: &[u8], w: &[f32], x_hat: &[f32]) -> f64 {
    let minimums = subtracted_minimums(ty, weights, w.len());
    w.iter()
        .zip(&minimums)
        .zip(x_hat)
        .map(|((w, m), x)| (w.abs() as f64 + 2.0 * m.abs() as f64) * x.abs() as f64)
        .sum()
}

const AWKWARD_BLOCK_COUNTS: [usize; 6] = [1, 2, 3, 7, 11, 17];

/// The SIMD kernel agrees with the portable one on random rows of awkward lengths, and on rows
/// of extreme quants (every weight byte 0x00, 0x7F, 0x80 or 0xFF; inputs at +-max, quants +-127).
pub(super) fn check_kernels_agree<A: ActivationBlock>(
    ty: GgmlType,
    portable: fn(&[u8], &[A]) -> f32,
    simd: impl Fn(&[u8], &[A]) -> f32,
) {
    let mut rng = Rng::new(ty.id() as u64);
    let mut cases = Vec::new();
    for blocks in AWKWARD_BLOCK_COUNTS {
        for _ in 0..4 {
            cases.push((random_blocks(ty, blocks, &mut rng), blocks));
        }
    }
    for fill in [0x00, 0x7F, 0x80, 0xFF] {
        let mut weights = vec![fill; 3 * ty.block_bytes()];
        for block in weights.chunks_exact_mut(ty.block_bytes()) {
            for &offset in scale_offsets(ty) {
                block[offset..offset + 2].copy_from_slice(&half::f16::ONE.to_le_bytes());
            }
        }
        cases.push((weights, 3));
    }
    for (case, (weights, blocks)) in cases.iter().enumerate() {
        let (_, quantized, x_hat) = if case % 2 == 0 {
            random_input::<A>(*blocks, &mut rng)
        } else {
            // Every input at +-its block's maximum, so every quant is +-127.
            let x: Vec<f32> = (0..blocks * A::LEN)
                .map(|_| {
                    if rng.next_u64().is_multiple_of(2) {
                        2.0
                    } else {
                        -2.0
                    }
                })
                .collect();
            let mut quantized = vec![A::ZERO; *blocks];
            A::quantize(&x, &mut quantized);
            let x_hat = quantized
                .iter()
                .flat_map(|b| b.quants().iter().map(|&q| q as f32 * b.scale()))
                .collect();
            (x, quantized, x_hat)
        };
        let mut w = vec![0f32; blocks * A::LEN];
        dequantize(ty, weights, &mut w);
        let tolerance =
            (*blocks + 8) as f64 * f32::EPSILON as f64 * magnitude(ty, weights, &w, &x_hat);
        let (expected, got) = (portable(weights, &quantized), simd(weights, &quantized));
        assert!(
            (expected as f64 - got as f64).abs() <= tolerance,
            "{} case {case} ({blocks} blocks): portable {expected}, simd {got}, tolerance {tolerance}",
            ty.name()
        );
    }
}

/// The portable quantized dot is within the module docs' bound of the f32 dot of the dequantized
/// weights with the unquantized input, and that bound is tight enough to mean something.
pub(super) fn check_close_to_float_dot<A: ActivationBlock>(
    ty: GgmlType,
    portable: fn(&[u8], &[A]) -> f32,
) {
    let mut rng = Rng::new(1000 + ty.id() as u64);
    for blocks in AWKWARD_BLOCK_COUNTS {
        for _ in 0..4 {
            let weights = random_blocks(ty, blocks, &mut rng);
            let (x, quantized, x_hat) = random_input::<A>(blocks, &mut rng);
            let mut w = vec![0f32; blocks * A::LEN];
            dequantize(ty, &weights, &mut w);
            let exact: f64 = w.iter().zip(&x).map(|(w, x)| *w as f64 * *x as f64).sum();
            let rounding: f64 = w
                .iter()
                .enumerate()
                .map(|(i, w)| w.abs() as f64 * 0.5001 * quantized[i / A::LEN].scale() as f64)
                .sum();
            let bound = rounding
                + (blocks + 8) as f64 * f32::EPSILON as f64 * magnitude(ty, &weights, &w, &x_hat);
            let got = portable(&weights, &quantized) as f64;
            assert!(
                (got - exact).abs() <= bound,
                "{} ({blocks} blocks): quantized {got}, f32 {exact}, bound {bound}",
                ty.name()
            );
            let scale_of_products: f64 = w
                .iter()
                .zip(&x)
                .map(|(w, x)| (*w as f64 * *x as f64).abs())
                .sum();
            assert!(
                bound <= 0.05 * scale_of_products + 1e-30,
                "{}: bound {bound} says nothing",
                ty.name()
            );
        }
    }
}

/// Every tile shape (1, 2 or 4 rows times 1 to 8 inputs) gives, bit for bit, what each row and
/// input give alone, for rows and inputs taken in any order.
pub(super) fn check_tiles<K: RowDot>(ty: GgmlType)
where
    K::Activation: ActivationBlock,
{
    let mut rng = Rng::new(2000 + ty.id() as u64);
    for blocks in [1, 3] {
        let rows: Vec<Vec<u8>> = (0..5)
            .map(|_| random_blocks(ty, blocks, &mut rng))
            .collect();
        let inputs: Vec<Vec<K::Activation>> = (0..9)
            .map(|_| random_input::<K::Activation>(blocks, &mut rng).1)
            .collect();
        let alone: Vec<Vec<u32>> = rows
            .iter()
            .map(|w| {
                inputs
                    .iter()
                    .map(|x| K::dot_tile([w.as_slice()], [x.as_slice()])[0][0].to_bits())
                    .collect()
            })
            .collect();
        check_tile_shape::<K, 1>(&rows, &inputs, &alone, ty);
        check_tile_shape::<K, 2>(&rows, &inputs, &alone, ty);
        check_tile_shape::<K, 4>(&rows, &inputs, &alone, ty);
    }
}

fn check_tile_shape<K: RowDot, const R: usize>(
    rows: &[Vec<u8>],
    inputs: &[Vec<K::Activation>],
    alone: &[Vec<u32>],
    ty: GgmlType,
) {
    check_tile_inputs::<K, R, 1>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 2>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 3>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 4>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 5>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 6>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 7>(rows, inputs, alone, ty);
    check_tile_inputs::<K, R, 8>(rows, inputs, alone, ty);
}

fn check_tile_inputs<K: RowDot, const R: usize, const N: usize>(
    rows: &[Vec<u8>],
    inputs: &[Vec<K::Activation>],
    alone: &[Vec<u32>],
    ty: GgmlType,
) {
    // Rows and inputs picked with a stride, so that tiles see them out of order.
    for shift in 0..rows.len() {
        let row_index = |j: usize| (shift + 3 * j) % rows.len();
        let input_index = |k: usize| (2 * shift + 2 * k + 1) % inputs.len();
        let tile = K::dot_tile(
            std::array::from_fn::<_, R, _>(|j| rows[row_index(j)].as_slice()),
            std::array::from_fn::<_, N, _>(|k| inputs[input_index(k)].as_slice()),
        );
        for (j, products) in tile.iter().enumerate() {
            for (k, product) in products.iter().enumerate() {
                assert_eq!(
                    product.to_bits(),
                    alone[row_index(j)][input_index(k)],
                    "{}: {R}x{N} tile, row {j}, input {k}",
                    ty.name()
                );
            }
        }
    }
}

/// The checks as tests, in a format's test module where `dot_portable`, `dot_avx2` and
/// `Kernel` are in scope.
macro_rules! dot_kernel_tests {
    ($ty:expr) => {
        #[test]
        fn the_quantized_dot_is_close_to_the_float_dot() {
            crate::quant::test_support::check_close_to_float_dot($ty, dot_portable);
        }

        #[cfg(target_arch = "x86_64")]
        #[test]
        fn avx2_matches_portable() {
            if !crate::quant::x86::has_avx2_fma_f16c() {
                eprintln!("this CPU lacks AVX2, FMA or F16C: nothing to compare");
                return;
            }
            crate::quant::test_support::check_kernels_agree($ty, dot_portable, |w, x| {
                // SAFETY: the CPU has the features, checked above.
                let [[product]] = unsafe { dot_avx2([w], [x]) };
                product
            });
        }

        #[test]
        fn every_tile_shape_matches_one_pair_at_a_time() {
            crate::quant::test_support::check_tiles::<Kernel>($ty);
        }
    };
}
pub(super) use dot_kernel_tests;

//! `matmul_rows_quant` against the f32 product of the dequantized weights, for every type, with
//! odd row counts (partial bands), one and five input rows, and rows of one or several blocks.

mod support;

use kernels::matvec::matmul_rows_f32;
use kernels::quant::{
    BlockQ8_0, BlockQ8K, GgmlType, QK_K, QK8_0, dequantize, dot_q4_0_q8_0, dot_q4_k_q8_k,
    dot_q5_0_q8_0, dot_q5_k_q8_k, dot_q6_k_q8_k, dot_q8_0_q8_0, matmul_rows_quant,
    quantize_row_q8_0, quantize_row_q8_k,
};
use support::quant_weights::{Rng, layout, random_weights};

/// What each weight's block subtracts (K-quant minimums; zero elsewhere).
fn subtracted(ty: GgmlType, weights: &[u8], values: usize) -> Vec<f32> {
    let quant_bits = layout(ty).1;
    if quant_bits.is_empty() {
        return vec![0.0; values];
    }
    let mut cleared = weights.to_vec();
    for block in cleared.chunks_exact_mut(ty.block_bytes()) {
        block[quant_bits.clone()].fill(0);
    }
    let mut out = vec![0f32; values];
    dequantize(ty, &cleared, &mut out);
    out
}

/// The activation block scale that input value `c` of row `x` gets (0 for float weights, whose
/// inputs are not quantized).
fn input_steps(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let block = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => QK8_0,
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        _ => return vec![0.0; x.len()],
    };
    x.chunks_exact(block)
        .flat_map(|b| {
            let step = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            std::iter::repeat_n(step, block)
        })
        .collect()
}

/// Bound on |ours - f32 product| for one output: the inputs' rounding (half a step, plus ulps of
/// the step, per weight) plus float rounding over the terms' magnitudes, (terms + 8) EPSILON M
/// with M = sum (|w| + 2 |subtracted|) (|x| + step) (summation orders differ, and the quantized
/// kernels add one term per block or lane in any order).
fn bound(w: &[f32], minimums: &[f32], x: &[f32], steps: &[f32], terms: usize) -> f64 {
    let rounding: f64 = w
        .iter()
        .zip(steps)
        .map(|(w, s)| w.abs() as f64 * 0.5001 * *s as f64)
        .sum();
    let magnitude: f64 = w
        .iter()
        .zip(minimums)
        .zip(x.iter().zip(steps))
        .map(|((w, m), (x, s))| {
            (w.abs() as f64 + 2.0 * m.abs() as f64) * (x.abs() as f64 + *s as f64)
        })
        .sum();
    rounding + (terms + 8) as f64 * f32::EPSILON as f64 * magnitude
}

#[test]
fn every_type_matches_the_dequantized_f32_product() {
    let mut rng = Rng(7);
    for ty in GgmlType::ALL {
        for blocks in [1, 3] {
            let cols = if ty.block_len() == 1 {
                37 * blocks
            } else {
                ty.block_len() * blocks
            };
            for rows in [1, 7, 101] {
                for n in [1, 5] {
                    let weights = random_weights(ty, rows * cols, &mut rng);
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit() * 3.0).collect();
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_rows_quant(ty, &weights, rows, cols, &x, n, &mut y);

                    let mut w = vec![0f32; rows * cols];
                    dequantize(ty, &weights, &mut w);
                    let minimums = subtracted(ty, &weights, rows * cols);
                    let mut expected = vec![0f32; n * rows];
                    matmul_rows_f32(&w, rows, cols, &x, n, &mut expected);
                    let terms = if ty.block_len() == 1 { cols } else { blocks };
                    for i in 0..n {
                        let input = &x[i * cols..(i + 1) * cols];
                        let steps = input_steps(ty, input);
                        for r in 0..rows {
                            let row = r * cols..(r + 1) * cols;
                            let limit =
                                bound(&w[row.clone()], &minimums[row], input, &steps, terms);
                            let (ours, f32s) = (y[i * rows + r], expected[i * rows + r]);
                            assert!(
                                (ours as f64 - f32s as f64).abs() <= limit,
                                "{} {rows}x{cols}, n {n}, input {i}, row {r}: {ours} vs {f32s} (bound {limit})",
                                ty.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bands_give_the_row_by_row_dot_products_exactly() {
    // Splitting rows across threads and inputs across a band must not change a single bit.
    let mut rng = Rng(11);
    let (rows, n) = (53, 5);
    for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
        let cols = 3 * QK8_0;
        let weights = random_weights(ty, rows * cols, &mut rng);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
        let mut y = vec![0f32; n * rows];
        matmul_rows_quant(ty, &weights, rows, cols, &x, n, &mut y);
        let dot = match ty {
            GgmlType::Q4_0 => dot_q4_0_q8_0,
            GgmlType::Q5_0 => dot_q5_0_q8_0,
            _ => dot_q8_0_q8_0,
        };
        let row_bytes = ty.row_bytes(cols).unwrap();
        for (i, input) in x.chunks_exact(cols).enumerate() {
            let mut blocks = vec![BlockQ8_0::ZERO; cols / QK8_0];
            quantize_row_q8_0(input, &mut blocks);
            for (r, row) in weights.chunks_exact(row_bytes).enumerate() {
                assert_eq!(y[i * rows + r], dot(row, &blocks), "{} {i} {r}", ty.name());
            }
        }
    }
    for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
        let cols = 2 * QK_K;
        let weights = random_weights(ty, rows * cols, &mut rng);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
        let mut y = vec![0f32; n * rows];
        matmul_rows_quant(ty, &weights, rows, cols, &x, n, &mut y);
        let dot = match ty {
            GgmlType::Q4K => dot_q4_k_q8_k,
            GgmlType::Q5K => dot_q5_k_q8_k,
            _ => dot_q6_k_q8_k,
        };
        let row_bytes = ty.row_bytes(cols).unwrap();
        for (i, input) in x.chunks_exact(cols).enumerate() {
            let mut blocks = vec![BlockQ8K::ZERO; cols / QK_K];
            quantize_row_q8_k(input, &mut blocks);
            for (r, row) in weights.chunks_exact(row_bytes).enumerate() {
                assert_eq!(y[i * rows + r], dot(row, &blocks), "{} {i} {r}", ty.name());
            }
        }
    }
}

#[test]
fn unaligned_f32_weights_give_the_aligned_result() {
    let mut rng = Rng(13);
    let (rows, cols, n) = (19, 41, 3);
    let weights = random_weights(GgmlType::F32, rows * cols, &mut rng);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
    // The same bytes at an address that is 4-aligned and at one that is not.
    let mut storage = vec![0u8; weights.len() + 8];
    let aligned_at = storage.as_ptr().align_offset(4);
    storage[aligned_at..aligned_at + weights.len()].copy_from_slice(&weights);
    let mut aligned = vec![0f32; n * rows];
    matmul_rows_quant(
        GgmlType::F32,
        &storage[aligned_at..aligned_at + weights.len()],
        rows,
        cols,
        &x,
        n,
        &mut aligned,
    );
    storage[aligned_at + 1..aligned_at + 1 + weights.len()].copy_from_slice(&weights);
    let mut unaligned = vec![0f32; n * rows];
    matmul_rows_quant(
        GgmlType::F32,
        &storage[aligned_at + 1..aligned_at + 1 + weights.len()],
        rows,
        cols,
        &x,
        n,
        &mut unaligned,
    );
    for (a, b) in aligned.iter().zip(&unaligned) {
        assert!((a - b).abs() <= 1e-5 * (cols as f32).sqrt(), "{a} vs {b}");
    }
}

#[test]
fn long_float_rows_are_converted_in_chunks() {
    // Longer than one conversion chunk (4096 values), not a multiple of it.
    let mut rng = Rng(17);
    let (rows, cols, n) = (5, 9000, 2);
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let weights = random_weights(ty, rows * cols, &mut rng);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
        let mut y = vec![0f32; n * rows];
        matmul_rows_quant(ty, &weights, rows, cols, &x, n, &mut y);
        let mut w = vec![0f32; rows * cols];
        dequantize(ty, &weights, &mut w);
        for i in 0..n {
            for r in 0..rows {
                let exact: f64 = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[i * cols + c] as f64)
                    .sum();
                let magnitude: f64 = (0..cols)
                    .map(|c| (w[r * cols + c] as f64 * x[i * cols + c] as f64).abs())
                    .sum();
                let ours = y[i * rows + r] as f64;
                assert!(
                    (ours - exact).abs() <= (cols + 8) as f64 * f32::EPSILON as f64 * magnitude,
                    "{} {i} {r}: {ours} vs {exact}",
                    ty.name()
                );
            }
        }
    }
}

#[test]
fn empty_products() {
    let mut y: [f32; 0] = [];
    matmul_rows_quant(GgmlType::Q4K, &[], 0, 256, &[0.0; 512], 2, &mut y);
    matmul_rows_quant(GgmlType::Q8_0, &[0; 34], 1, 32, &[], 0, &mut y);
    for ty in GgmlType::ALL {
        let mut y = [f32::NAN; 6];
        matmul_rows_quant(ty, &[], 3, 0, &[], 2, &mut y);
        assert_eq!(y, [0.0; 6], "{}: a sum of nothing is 0", ty.name());
    }
}

#[test]
#[should_panic(expected = "not a whole number")]
fn columns_must_be_whole_blocks() {
    matmul_rows_quant(GgmlType::Q6K, &[0; 210], 1, 200, &[0.0; 200], 1, &mut [0.0]);
}

#[test]
#[should_panic(expected = "take 420 bytes")]
fn weights_must_match_the_shape() {
    matmul_rows_quant(
        GgmlType::Q6K,
        &[0; 210],
        2,
        256,
        &[0.0; 256],
        1,
        &mut [0.0; 2],
    );
}

#[test]
fn tile_edges_give_the_row_by_row_dot_products_exactly() {
    // Row and input counts around the tiles (up to 4 rows x 4 inputs), and 131 rows of 40
    // blocks, which span several bands and several cache-sized sub-bands per band: every output
    // is the one-row, one-input dot product, bit for bit.
    let mut rng = Rng(19);
    let quantized = [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    for ty in quantized {
        for (rows, cols) in [(1, 1), (2, 1), (3, 2), (5, 1), (6, 2), (9, 1), (131, 40)] {
            let cols = cols * ty.block_len();
            let weights = random_weights(ty, rows * cols, &mut rng);
            let row_bytes = ty.row_bytes(cols).unwrap();
            for n in [1, 2, 3, 4, 5, 7, 8, 9] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
                let mut y = vec![f32::NAN; n * rows];
                matmul_rows_quant(ty, &weights, rows, cols, &x, n, &mut y);
                for (i, input) in x.chunks_exact(cols).enumerate() {
                    let expected: Vec<f32> = if ty.block_len() == QK8_0 {
                        let mut blocks = vec![BlockQ8_0::ZERO; cols / QK8_0];
                        quantize_row_q8_0(input, &mut blocks);
                        let dot = match ty {
                            GgmlType::Q4_0 => dot_q4_0_q8_0,
                            GgmlType::Q5_0 => dot_q5_0_q8_0,
                            _ => dot_q8_0_q8_0,
                        };
                        weights
                            .chunks_exact(row_bytes)
                            .map(|row| dot(row, &blocks))
                            .collect()
                    } else {
                        let mut blocks = vec![BlockQ8K::ZERO; cols / QK_K];
                        quantize_row_q8_k(input, &mut blocks);
                        let dot = match ty {
                            GgmlType::Q4K => dot_q4_k_q8_k,
                            GgmlType::Q5K => dot_q5_k_q8_k,
                            _ => dot_q6_k_q8_k,
                        };
                        weights
                            .chunks_exact(row_bytes)
                            .map(|row| dot(row, &blocks))
                            .collect()
                    };
                    for (r, value) in expected.iter().enumerate() {
                        assert_eq!(
                            y[i * rows + r].to_bits(),
                            value.to_bits(),
                            "{} {rows}x{cols}, n {n}, input {i}, row {r}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

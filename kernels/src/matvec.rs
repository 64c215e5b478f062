//! Y = X W^T for one or a few input rows: the weight-streaming products of decode steps and of
//! small batches (a short prefill, or the handful of tokens one expert receives).
//!
//! With few input rows the time is the time to stream W from memory. A general matmul spends
//! much of it packing W into panels; here each thread streams a contiguous band of W once and
//! multiplies every input row with it while the band is in cache.
//!
//! W is row-major [rows, cols] (the checkpoint's [out, in] layout).

use rayon::prelude::*;

use crate::simd::dot;

/// Rows one task takes at least; small enough to balance two to sixteen threads over the
/// narrowest projection, large enough that scheduling costs nothing next to the streaming.
const MIN_ROWS_PER_TASK: usize = 16;

/// Writes W x into `y` for one input vector.
///
/// Panics if the slice lengths disagree with `rows` x `cols`.
pub fn matvec_f32(weights: &[f32], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    matmul_rows_f32(weights, rows, cols, x, 1, y);
}

/// Writes X W^T into `y` ([n, rows]) for `n` input rows `x` ([n, cols]), in parallel over bands
/// of W's rows.
///
/// Panics if the slice lengths disagree with the sizes given.
pub fn matmul_rows_f32(
    weights: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert_eq!(
        weights.len(),
        rows * cols,
        "weights must hold rows x cols values"
    );
    assert_eq!(x.len(), n * cols, "x must hold n x cols values");
    assert_eq!(y.len(), n * rows, "y must hold n x rows values");
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK);
    // Bands write Y^T ([rows, n]) contiguously; for one input row that is Y itself.
    let mut transposed = if n == 1 {
        Vec::new()
    } else {
        vec![0f32; rows * n]
    };
    let target: &mut [f32] = if n == 1 { y } else { &mut transposed };
    target
        .par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(band, out)| {
            let band_weights = &weights[band * rows_per_task * cols..][..out.len() / n * cols];
            band_times_x(band_weights, cols, x, n, out);
        });
    if n > 1 {
        for (r, values) in transposed.chunks_exact(n).enumerate() {
            for (i, value) in values.iter().enumerate() {
                y[i * rows + r] = *value;
            }
        }
    }
}

/// `out[r * n + i]` = row r of `band` (row-major, `cols` wide) times input row i of `x`.
fn band_times_x(band: &[f32], cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { band_times_x_avx2_fma(band, cols, x, n, out) };
            return;
        }
    }
    for (r, row) in band.chunks_exact(cols).enumerate() {
        for (i, input) in x.chunks_exact(cols).enumerate() {
            out[r * n + i] = dot(row, input);
        }
    }
}

/// Four W rows at a time: each load of an input row feeds four FMAs, four independent chains
/// hide latency, and the four rows stay in cache while every input row passes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn band_times_x_avx2_fma(band: &[f32], cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let rows = out.len() / n;
    let full = cols - cols % 8;
    let mut r = 0;
    while r + 4 <= rows {
        let base = band[r * cols..].as_ptr();
        for (i, input) in x.chunks_exact(cols).enumerate() {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            // SAFETY: rows r..r+4 lie in `band`, and c + 8 <= full <= cols keeps every load in its row.
            unsafe {
                while c < full {
                    let xv = _mm256_loadu_ps(input.as_ptr().add(c));
                    for (k, sum) in acc.iter_mut().enumerate() {
                        *sum = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(k * cols + c)), xv, *sum);
                    }
                    c += 8;
                }
            }
            for (k, sum) in acc.iter().enumerate() {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds eight floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *sum) };
                let row = &band[(r + k) * cols..(r + k + 1) * cols];
                let tail: f32 = row[full..]
                    .iter()
                    .zip(&input[full..])
                    .map(|(w, v)| w * v)
                    .sum();
                out[(r + k) * n + i] = lanes.iter().sum::<f32>() + tail;
            }
        }
        r += 4;
    }
    for r in r..rows {
        let row = &band[r * cols..(r + 1) * cols];
        for (i, input) in x.chunks_exact(cols).enumerate() {
            out[r * n + i] = dot(row, input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference in f64 so the comparison measures the kernel's rounding only.
    fn reference(weights: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| weights[r * cols + c] as f64 * x[c] as f64)
                    .sum()
            })
            .collect()
    }

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn several_input_rows_match_one_at_a_time() {
        for (n, rows, cols) in [(2, 5, 9), (3, 64, 2048), (7, 17, 33), (16, 100, 40)] {
            let weights = values(rows * cols, 3);
            let x = values(n * cols, 4);
            let mut y = vec![0f32; n * rows];
            matmul_rows_f32(&weights, rows, cols, &x, n, &mut y);
            for i in 0..n {
                let mut single = vec![0f32; rows];
                matvec_f32(
                    &weights,
                    rows,
                    cols,
                    &x[i * cols..(i + 1) * cols],
                    &mut single,
                );
                assert_eq!(
                    &y[i * rows..(i + 1) * rows],
                    single.as_slice(),
                    "n {n} row {i}"
                );
            }
        }
    }

    #[test]
    fn matches_a_double_precision_reference_on_awkward_sizes() {
        for (rows, cols) in [(1, 1), (3, 7), (17, 33), (64, 2048), (100, 1408), (5, 31)] {
            let weights = values(rows * cols, 7);
            let x = values(cols, 11);
            let mut y = vec![0f32; rows];
            matvec_f32(&weights, rows, cols, &x, &mut y);
            for (ours, exact) in y.iter().zip(reference(&weights, rows, cols, &x)) {
                assert!(
                    (*ours as f64 - exact).abs() <= 1e-5 * (cols as f64).sqrt(),
                    "{rows}x{cols}: {ours} vs {exact}"
                );
            }
        }
    }
}

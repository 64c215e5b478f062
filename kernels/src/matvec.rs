//! y = W x for one input vector: the decode step's weight-streaming product.
//!
//! Decoding one token multiplies every weight matrix by a single vector, so the time is the time
//! to stream the weights from memory. A general matmul (gemm with m = 1) spends part of that on
//! packing and scheduling; here each thread streams a contiguous band of rows once.
//!
//! W is row-major [rows, cols] (the checkpoint's [out, in] layout), x has `cols` values.

use rayon::prelude::*;

use crate::simd::dot;

/// Rows one task takes at least; small enough to balance two to sixteen threads over the
/// narrowest projection, large enough that scheduling costs nothing next to the streaming.
const MIN_ROWS_PER_TASK: usize = 16;

/// Writes W x into `y`, in parallel over bands of rows.
///
/// Panics if the slice lengths disagree with `rows` x `cols`.
pub fn matvec_f32(weights: &[f32], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        weights.len(),
        rows * cols,
        "weights must hold rows x cols values"
    );
    assert_eq!(x.len(), cols, "x must hold cols values");
    assert_eq!(y.len(), rows, "y must hold rows values");
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK);
    y.par_chunks_mut(rows_per_task)
        .enumerate()
        .for_each(|(band, out)| {
            let band_weights = &weights[band * rows_per_task * cols..][..out.len() * cols];
            band_times_x(band_weights, cols, x, out);
        });
}

/// `out[i]` = row i of `band` (row-major, `cols` wide) times `x`.
fn band_times_x(band: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { band_times_x_avx2_fma(band, cols, x, out) };
            return;
        }
    }
    for (row, y) in band.chunks_exact(cols).zip(out) {
        *y = dot(row, x);
    }
}

/// Four rows at a time: each load of x feeds four FMAs, four independent chains hide latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn band_times_x_avx2_fma(band: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let rows = out.len();
    let full = cols - cols % 8;
    let mut r = 0;
    while r + 4 <= rows {
        let base = band[r * cols..].as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        // SAFETY: rows r..r+4 lie in `band`, and c + 8 <= full <= cols keeps every load in its row.
        unsafe {
            while c < full {
                let xv = _mm256_loadu_ps(x.as_ptr().add(c));
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
            let tail: f32 = row[full..].iter().zip(&x[full..]).map(|(w, v)| w * v).sum();
            out[r + k] = lanes.iter().sum::<f32>() + tail;
        }
        r += 4;
    }
    for (i, y) in out.iter_mut().enumerate().skip(r) {
        *y = dot(&band[i * cols..(i + 1) * cols], x);
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

//! y = W x for one input vector: the decode step's weight-streaming product.
//!
//! Decoding one token multiplies every weight matrix by a single vector, so the time is the time
//! to stream the weights from memory. A general matmul (gemm with m = 1) spends part of that on
//! packing and scheduling; here each thread streams a contiguous band of rows once.
//!
//! W is row-major [rows, cols] (the checkpoint's [out, in] layout), x has `cols` values.

use rayon::prelude::*;

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
        *y = dot_portable(row, x);
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
        // SAFETY: same features as this function.
        *y = unsafe { dot_avx2_fma(&band[i * cols..(i + 1) * cols], x) };
    }
}

/// Dot product of two equal-length slices, with AVX2+FMA where the CPU has them.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Eight independent partial sums, which compilers vectorise on any target.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a_blocks, a_tail) = a.split_at(a.len() - a.len() % 8);
    let (b_blocks, b_tail) = b.split_at(a_blocks.len());
    for (a8, b8) in a_blocks.chunks_exact(8).zip(b_blocks.chunks_exact(8)) {
        for k in 0..8 {
            sums[k] += a8[k] * b8[k];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators hide the FMA latency; 32 floats per iteration.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n, or i + 8 <= n below, so every load is in bounds.
    unsafe {
        while i + 32 <= n {
            for (k, sum) in acc.iter_mut().enumerate() {
                let offset = i + 8 * k;
                *sum = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(offset)),
                    _mm256_loadu_ps(pb.add(offset)),
                    *sum,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut total: f32 = lanes.iter().sum();
        while i < n {
            total += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        total
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

    #[test]
    fn the_portable_and_simd_dots_agree() {
        for n in [0, 1, 8, 9, 32, 33, 100, 2048] {
            let (a, b) = (values(n, 3), values(n, 5));
            assert!(
                (dot(&a, &b) - dot_portable(&a, &b)).abs() <= 1e-4,
                "n = {n}"
            );
        }
    }
}

//! Small vector primitives on f32 slices, with AVX2+FMA where the CPU has them and a portable
//! fallback elsewhere. The feature check is a cached atomic load, cheap enough per call.

/// Dot product of two equal-length slices, with AVX2+FMA where the CPU has them.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Eight independent partial sums, which compilers vectorise on any target.
pub(crate) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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
pub(crate) unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
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

/// y += a * x
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { axpy_avx2_fma(a, x, y) };
            return;
        }
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// y *= a
pub fn scale(a: f32, y: &mut [f32]) {
    for y in y.iter_mut() {
        *y *= a;
    }
}

/// Replaces each value v by exp(v - shift) and returns their sum: a softmax's numerators. The
/// exponential is a polynomial (Cephes' `expf`: within 2 ulp of exp over [-87, 88], and below
/// 1e-37 under that), the same on every CPU, so that the compiler can run 16 of them at
/// once where libm's `expf` runs one.
pub fn exp_shifted_sum(values: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { exp_shifted_sum_avx512(values, shift) };
        }
    }
    exp_shifted_sum_lanes(values, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_sum_avx512(values: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_lanes(values, shift)
}

/// 16 independent lanes, which the compiler vectorises for whatever its caller enables.
#[inline(always)]
fn exp_shifted_sum_lanes(values: &mut [f32], shift: f32) -> f32 {
    let mut sums = [0f32; 16];
    let mut chunks = values.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (value, sum) in chunk.iter_mut().zip(&mut sums) {
            *value = exp_polynomial(*value - shift);
            *sum += *value;
        }
    }
    let mut total: f32 = sums.iter().sum();
    for value in chunks.into_remainder() {
        *value = exp_polynomial(*value - shift);
        total += *value;
    }
    total
}

/// exp(x) as Cephes' `expf`: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two so that
/// n ln 2 is exact), a degree-7 polynomial for e^r, and 2^n put in the exponent bits.
#[inline(always)]
fn exp_polynomial(x: f32) -> f32 {
    // exp(88.72) is the largest f32; below -87.33, 2^n would leave the normal range.
    let x = x.clamp(-87.33, 88.72);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2_fma(a: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: i + 8 <= n keeps every load and store in bounds.
    unsafe {
        while i + 8 <= n {
            let sum = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), sum);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polynomial_exponential_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp_polynomial(x) as f64;
            let ulp = (want as f32).abs() as f64 * f32::EPSILON as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp_polynomial(0.0), 1.0);
        assert!(exp_polynomial(-200.0) < 1e-37 && exp_polynomial(-200.0) >= 0.0);
        assert!(exp_polynomial(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn the_shifted_sum_is_every_numerator_and_their_total() {
        for n in [0, 1, 15, 16, 17, 40] {
            let original = values(n, 7);
            let mut lanes = original.clone();
            let total = exp_shifted_sum(&mut lanes, 0.25);
            let mut want_total = 0f64;
            for (got, v) in lanes.iter().zip(&original) {
                let want = (*v as f64 - 0.25).exp();
                want_total += want;
                assert!(
                    (*got as f64 - want).abs() <= 2.5e-7 * want,
                    "n {n}: {got} vs {want}"
                );
            }
            assert!(
                (total as f64 - want_total).abs() <= 1e-6 * want_total.max(1.0),
                "n {n}"
            );
        }
    }

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
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

    #[test]
    fn axpy_and_scale_match_scalar_code() {
        for n in [0, 3, 8, 13, 512] {
            let x = values(n, 1);
            let mut y = values(n, 2);
            let mut expected = y.clone();
            axpy(0.5, &x, &mut y);
            for (e, x) in expected.iter_mut().zip(&x) {
                *e += 0.5 * x;
            }
            assert!(
                y.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6),
                "n = {n}"
            );
            scale(2.0, &mut y);
            assert!(
                y.iter()
                    .zip(&expected)
                    .all(|(a, b)| (a - 2.0 * b).abs() < 1e-5)
            );
        }
    }
}

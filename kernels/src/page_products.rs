//! The two products a few query rows make with one page of latent keys: a decode step's heads
//! (16 rows for DeepSeek-V2-Lite) against a page's 32 cached tokens. A packed matrix product
//! packs the same queries again for every page: on a 2-core Zen 4, decoding at 8K tokens of
//! context, `gemm`'s packing alone took 17% of the samples. Here every operand is read in place,
//! in register blocks of 4 rows x 4 keys (scores) and 4 rows x 64 latent columns (the weighted
//! sum). The `latent_attention` bench puts the packed road at 0.98x-1.38x this one's time.
//!
//! AVX-512F only, for sizes in whole 16-float vectors; [`available`] says whether a call may
//! come here, and the caller takes its general road otherwise.

use crate::quant::InstructionSet;

/// Query rows (tokens x heads) up to which a page's products come here rather than to a packed
/// matrix product: a decode step, or a few speculative tokens.
pub(crate) const MAX_ROWS: usize = 64;

/// Floats per vector register.
const LANES: usize = 16;

/// Whether this CPU (within the instruction-set limit) multiplies pages of `kv_lora + rope`
/// floats here.
pub(crate) fn available(kv_lora: usize, rope: usize) -> bool {
    kv_lora.is_multiple_of(LANES)
        && rope.is_multiple_of(LANES)
        && InstructionSet::vectors_in_use() >= InstructionSet::Avx512Vnni
}

/// The operands of one page's products.
pub(crate) struct PageOperands<'a> {
    /// [rows, kv_lora]
    pub q_latent: &'a [f32],
    /// [rows, rope]
    pub q_rope: &'a [f32],
    /// At least `count` key rows of `kv_lora + rope` floats: `[c_kv | k_pe]`.
    pub keys: &'a [f32],
    pub rows: usize,
    pub count: usize,
    pub kv_lora: usize,
    pub rope: usize,
}

impl PageOperands<'_> {
    fn check(&self, matrix: &[f32], stride: usize, what: &str) {
        assert!(self.count <= stride, "{what}: stride shorter than a page");
        assert!(
            matrix.len() >= self.rows.saturating_sub(1) * stride + self.count
                || self.rows == 0
                || self.count == 0,
            "{what}: too short"
        );
        assert!(
            self.q_latent.len() >= self.rows * self.kv_lora,
            "latent queries"
        );
        assert!(self.q_rope.len() >= self.rows * self.rope, "rope queries");
        assert!(
            self.keys.len() >= self.count * (self.kv_lora + self.rope),
            "keys"
        );
        assert!(
            available(self.kv_lora, self.rope),
            "page products unavailable"
        );
    }
}

/// scores[r * stride + j] = q_latent[r] . c_j + q_rope[r] . k_j, for r < rows and j < count.
///
/// Panics if [`available`] is false for these sizes or a slice is too short for them.
pub(crate) fn page_scores(page: &PageOperands, scores: &mut [f32], stride: usize) {
    page.check(scores, stride, "scores");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `check` proved AVX-512F (within the level) and every operand's length.
    unsafe {
        avx512::scores(page, scores, stride)
    }
}

/// acc[r * kv_lora + c] += sum_j weights[r * stride + j] * c_j[c], for r < rows, c < kv_lora.
///
/// Panics if [`available`] is false for these sizes or a slice is too short for them.
pub(crate) fn accumulate_latents(
    page: &PageOperands,
    weights: &[f32],
    stride: usize,
    acc: &mut [f32],
) {
    page.check(weights, stride, "weights");
    assert!(acc.len() >= page.rows * page.kv_lora, "accumulator");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `page_scores`, and `acc` holds rows x kv_lora.
    unsafe {
        avx512::accumulate(page, weights, stride, acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LANES, PageOperands};
    use std::arch::x86_64::*;

    /// Rows and keys per register block of the scores: 16 accumulators.
    const BLOCK: usize = 4;
    /// Latent vectors per register block of the weighted sum: 4 rows x 64 columns.
    const COLUMN_VECTORS: usize = 4;

    /// # Safety
    /// AVX-512F, and the lengths `PageOperands::check` asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(page: &PageOperands, scores: &mut [f32], stride: usize) {
        // Rows outside, keys inside: a block of queries (4 x 576 floats) stays in L1 while every
        // key meets it.
        let whole = page.rows - page.rows % BLOCK;
        // SAFETY: the caller's promise; every block lies inside the operands.
        unsafe {
            for r in (0..whole).step_by(BLOCK) {
                every_key_against::<BLOCK>(page, scores, stride, r);
            }
            match page.rows % BLOCK {
                3 => every_key_against::<3>(page, scores, stride, whole),
                2 => every_key_against::<2>(page, scores, stride, whole),
                1 => every_key_against::<1>(page, scores, stride, whole),
                _ => {}
            }
        }
    }

    /// Rows r..r+R against every key.
    #[target_feature(enable = "avx512f")]
    unsafe fn every_key_against<const R: usize>(
        page: &PageOperands,
        scores: &mut [f32],
        stride: usize,
        r: usize,
    ) {
        let whole = page.count - page.count % BLOCK;
        // SAFETY: the caller's promise; keys below `count`.
        unsafe {
            for j in (0..whole).step_by(BLOCK) {
                score_block::<R, BLOCK>(page, scores, stride, r, j);
            }
            for j in whole..page.count {
                score_block::<R, 1>(page, scores, stride, r, j);
            }
        }
    }

    /// Rows r..r+R against keys j..j+K.
    #[target_feature(enable = "avx512f")]
    unsafe fn score_block<const R: usize, const K: usize>(
        page: &PageOperands,
        scores: &mut [f32],
        stride: usize,
        r: usize,
        j: usize,
    ) {
        let row_len = page.kv_lora + page.rope;
        let mut acc = [[_mm512_setzero_ps(); K]; R];
        // SAFETY: rows r..r+R < rows and keys j..j+K < count, within the checked lengths.
        unsafe {
            let keys = page.keys.as_ptr().add(j * row_len);
            // The latent part and the rope part, each a query matrix and its keys' offset.
            for (queries, width, offset) in [
                (page.q_latent.as_ptr(), page.kv_lora, 0),
                (page.q_rope.as_ptr(), page.rope, page.kv_lora),
            ] {
                let queries = queries.add(r * width);
                for d in (0..width).step_by(LANES) {
                    let q: [__m512; R] =
                        std::array::from_fn(|a| _mm512_loadu_ps(queries.add(a * width + d)));
                    let k: [__m512; K] = std::array::from_fn(|b| {
                        _mm512_loadu_ps(keys.add(b * row_len + offset + d))
                    });
                    for a in 0..R {
                        for b in 0..K {
                            acc[a][b] = _mm512_fmadd_ps(q[a], k[b], acc[a][b]);
                        }
                    }
                }
            }
        }
        for (a, acc) in acc.iter().enumerate() {
            for (b, sum) in acc.iter().enumerate() {
                scores[(r + a) * stride + j + b] = _mm512_reduce_add_ps(*sum);
            }
        }
    }

    /// # Safety
    /// AVX-512F, and the lengths `accumulate_latents` asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn accumulate(
        page: &PageOperands,
        weights: &[f32],
        stride: usize,
        acc: &mut [f32],
    ) {
        // Columns outside, rows inside: 64 columns of the page's keys (8 KiB) stay in L1 while
        // every row adds them in.
        let vectors = page.kv_lora / LANES;
        let whole = vectors - vectors % COLUMN_VECTORS;
        // SAFETY (both loops): the caller's promise; every block lies inside the operands.
        for v in (0..whole).step_by(COLUMN_VECTORS) {
            unsafe { every_row_adds::<COLUMN_VECTORS>(page, weights, stride, acc, v) }
        }
        for v in whole..vectors {
            unsafe { every_row_adds::<1>(page, weights, stride, acc, v) }
        }
    }

    /// Every row's latent vectors v..v+V.
    #[target_feature(enable = "avx512f")]
    unsafe fn every_row_adds<const V: usize>(
        page: &PageOperands,
        weights: &[f32],
        stride: usize,
        acc: &mut [f32],
        v: usize,
    ) {
        let whole = page.rows - page.rows % BLOCK;
        // SAFETY: the caller's promise; rows below `rows`.
        unsafe {
            for r in (0..whole).step_by(BLOCK) {
                sum_block::<BLOCK, V>(page, weights, stride, acc, r, v);
            }
            match page.rows % BLOCK {
                3 => sum_block::<3, V>(page, weights, stride, acc, whole, v),
                2 => sum_block::<2, V>(page, weights, stride, acc, whole, v),
                1 => sum_block::<1, V>(page, weights, stride, acc, whole, v),
                _ => {}
            }
        }
    }

    /// Rows r..r+R, latent vectors v..v+V (16 columns each), over every key of the page.
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_block<const R: usize, const V: usize>(
        page: &PageOperands,
        weights: &[f32],
        stride: usize,
        acc: &mut [f32],
        r: usize,
        v: usize,
    ) {
        let row_len = page.kv_lora + page.rope;
        // SAFETY: rows r..r+R < rows, columns (v+V)*16 <= kv_lora and keys < count, within the
        // checked lengths.
        unsafe {
            let out = acc.as_mut_ptr().add(r * page.kv_lora + v * LANES);
            let mut sums: [[__m512; V]; R] = std::array::from_fn(|a| {
                std::array::from_fn(|c| _mm512_loadu_ps(out.add(a * page.kv_lora + c * LANES)))
            });
            let keys = page.keys.as_ptr().add(v * LANES);
            let weights = weights.as_ptr().add(r * stride);
            for j in 0..page.count {
                let c: [__m512; V] =
                    std::array::from_fn(|c| _mm512_loadu_ps(keys.add(j * row_len + c * LANES)));
                for (a, sums) in sums.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*weights.add(a * stride + j));
                    for (sum, c) in sums.iter_mut().zip(&c) {
                        *sum = _mm512_fmadd_ps(w, *c, *sum);
                    }
                }
            }
            for (a, sums) in sums.iter().enumerate() {
                for (c, sum) in sums.iter().enumerate() {
                    _mm512_storeu_ps(out.add(a * page.kv_lora + c * LANES), *sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// The products by their definition, in f64.
    fn expected(page: &PageOperands, weights: &[f32], stride: usize) -> (Vec<f64>, Vec<f64>) {
        let row_len = page.kv_lora + page.rope;
        let mut scores = vec![0f64; page.rows * page.count];
        let mut sums = vec![0f64; page.rows * page.kv_lora];
        for r in 0..page.rows {
            for j in 0..page.count {
                let key = &page.keys[j * row_len..][..row_len];
                let latent = &page.q_latent[r * page.kv_lora..][..page.kv_lora];
                let roped = &page.q_rope[r * page.rope..][..page.rope];
                scores[r * page.count + j] = latent
                    .iter()
                    .chain(roped)
                    .zip(key)
                    .map(|(q, k)| *q as f64 * *k as f64)
                    .sum();
                for c in 0..page.kv_lora {
                    sums[r * page.kv_lora + c] += weights[r * stride + j] as f64 * key[c] as f64;
                }
            }
        }
        (scores, sums)
    }

    #[test]
    fn both_products_match_their_definition_at_awkward_sizes() {
        if !available(16, 16) {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        for (rows, count, kv_lora, rope) in [
            (1, 1, 16, 16),
            (16, 32, 512, 64),
            (5, 7, 80, 16),
            (3, 4, 48, 32),
            (9, 13, 64, 16),
            (4, 5, 16, 48),
        ] {
            let stride = count + 3;
            let keys = values(count * (kv_lora + rope), 1);
            let q_latent = values(rows * kv_lora, 2);
            let q_rope = values(rows * rope, 3);
            let weights = values(rows * stride, 4);
            let page = PageOperands {
                q_latent: &q_latent,
                q_rope: &q_rope,
                keys: &keys,
                rows,
                count,
                kv_lora,
                rope,
            };
            let (want_scores, want_sums) = expected(&page, &weights, stride);
            // Past each row's `count` scores lies a value the products must leave alone.
            let mut scores = vec![7.5f32; rows * stride];
            page_scores(&page, &mut scores, stride);
            let start = values(rows * kv_lora, 5);
            let mut sums = start.clone();
            accumulate_latents(&page, &weights, stride, &mut sums);
            let case = format!("rows {rows} count {count} kv_lora {kv_lora} rope {rope}");
            for r in 0..rows {
                for j in 0..stride {
                    let got = scores[r * stride + j] as f64;
                    if j >= count {
                        assert_eq!(got, 7.5, "{case}: score [{r}, {j}] written");
                        continue;
                    }
                    let want = want_scores[r * count + j];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{case}: score [{r}, {j}] {got} vs {want}"
                    );
                }
                for c in 0..kv_lora {
                    let i = r * kv_lora + c;
                    let want = start[i] as f64 + want_sums[i];
                    let got = sums[i] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{case}: sum [{r}, {c}] {got} vs {want}"
                    );
                }
            }
        }
    }
}

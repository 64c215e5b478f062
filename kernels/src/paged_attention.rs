//! Multi-head latent attention in its absorbed form, reading the latent cache through a page
//! table: no key or value is copied, whatever pages the cache shares between sequences.
//!
//! Every key row holds `[c_kv (kv_lora) | k_pe (rope)]`. A query row holds the latent query
//! (W_UK already folded in, kv_lora values) and the roped query (rope values). For query token i
//! at position `first_position + i`, over keys j <= that position:
//!
//!   s_j = scale * (q_latent . c_j + q_rope . k_j),   out = sum_j softmax(s)_j * c_j
//!
//! `out` stays in the latent space; the caller applies W_UV. Work is split over blocks of query
//! tokens; each block walks the pages with three small matrix products per page (latent scores,
//! rope scores, weighted sum of latents) and an online softmax. When there are fewer tokens than
//! threads (a decode step), each token's keys are split into page ranges whose partial softmax
//! sums are merged with log-sum-exp.

use rayon::prelude::*;

use crate::page_products::{self, PageOperands, accumulate_latents, page_scores};
use crate::simd::{axpy, exp_shifted_sum, scale};
use crate::strided_gemm::{Strided, gemm_f32};

/// The cached keys of one layer, as a page table.
pub struct LatentPages<'a> {
    /// One slice per page, each `page_tokens` rows of `kv_lora + rope` floats (only the first
    /// rows of the last page need be filled).
    pub pages: &'a [&'a [f32]],
    pub page_tokens: usize,
    pub kv_lora: usize,
    pub rope: usize,
}

/// The queries of one step, token-major.
pub struct LatentQueries<'a> {
    /// [tokens, heads, kv_lora]
    pub latent: &'a [f32],
    /// [tokens, heads, rope]
    pub rope: &'a [f32],
    pub tokens: usize,
    pub heads: usize,
    /// Position of query token 0; token i sees keys 0..=first_position + i.
    pub first_position: usize,
}

/// Running softmax state of one query token over some keys, for every head.
struct Partial {
    /// Largest score seen per head (-inf when none).
    max: Vec<f32>,
    /// Sum of exp(score - max) per head.
    sum: Vec<f32>,
    /// Sum of exp(score - max) * c_j per head: [heads, kv_lora].
    acc: Vec<f32>,
}

impl Partial {
    /// Folds `other` (over disjoint keys) into `self`.
    fn merge(&mut self, other: &Partial, kv_lora: usize) {
        for h in 0..self.max.len() {
            let max = self.max[h].max(other.max[h]);
            if max == f32::NEG_INFINITY {
                continue;
            }
            let (mine, theirs) = ((self.max[h] - max).exp(), (other.max[h] - max).exp());
            let acc = &mut self.acc[h * kv_lora..(h + 1) * kv_lora];
            scale(mine, acc);
            axpy(theirs, &other.acc[h * kv_lora..(h + 1) * kv_lora], acc);
            self.sum[h] = self.sum[h] * mine + other.sum[h] * theirs;
            self.max[h] = max;
        }
    }
}

/// Writes the attention output, [tokens, heads, kv_lora], into `out`.
///
/// Panics if slice lengths disagree with the sizes given (callers build them from one config).
pub fn absorbed_attention(
    queries: &LatentQueries,
    keys: &LatentPages,
    softmax_scale: f32,
    out: &mut [f32],
) {
    let (tokens, heads, kv_lora, rope) = (queries.tokens, queries.heads, keys.kv_lora, keys.rope);
    assert_eq!(
        queries.latent.len(),
        tokens * heads * kv_lora,
        "latent queries"
    );
    assert_eq!(queries.rope.len(), tokens * heads * rope, "rope queries");
    assert_eq!(out.len(), tokens * heads * kv_lora, "output");
    let visible_keys = queries.first_position + tokens;
    assert!(
        visible_keys <= keys.pages.len() * keys.page_tokens,
        "queries past the cached keys"
    );
    for page in keys.pages {
        assert!(
            page.len() >= keys.page_tokens * (kv_lora + rope),
            "a page is shorter than page_tokens rows"
        );
    }

    // Tasks: blocks of query tokens; when tokens are fewer than threads, page ranges per token.
    let threads = rayon::current_num_threads().max(1);
    let block = tokens.div_ceil(2 * threads).clamp(1, MAX_BLOCK_TOKENS);
    let splits = if tokens >= threads {
        1
    } else {
        (2 * threads).div_ceil(tokens)
    };
    let mut tasks: Vec<Task> = Vec::new();
    for first_token in (0..tokens).step_by(block) {
        let count = block.min(tokens - first_token);
        let pages = (queries.first_position + first_token + count).div_ceil(keys.page_tokens);
        let per_split = pages.div_ceil(splits).max(1);
        for first_page in (0..pages).step_by(per_split) {
            tasks.push(Task {
                first_token,
                tokens: count,
                pages: first_page..(first_page + per_split).min(pages),
            });
        }
    }
    let partials: Vec<(usize, Vec<Partial>)> = tasks
        .into_par_iter()
        .map(|task| {
            (
                task.first_token,
                attend(queries, keys, softmax_scale, &task),
            )
        })
        .collect();

    let mut merged: Vec<Option<Partial>> = (0..tokens).map(|_| None).collect();
    for (first_token, block_partials) in partials {
        for (offset, partial) in block_partials.into_iter().enumerate() {
            match &mut merged[first_token + offset] {
                Some(total) => total.merge(&partial, kv_lora),
                slot @ None => *slot = Some(partial),
            }
        }
    }
    for (token, partial) in merged.into_iter().enumerate() {
        let partial = partial.expect("every token sees at least its own key");
        for h in 0..heads {
            let row = &mut out[(token * heads + h) * kv_lora..][..kv_lora];
            row.copy_from_slice(&partial.acc[h * kv_lora..(h + 1) * kv_lora]);
            scale(1.0 / partial.sum[h], row);
        }
    }
}

/// Query tokens per task at most: enough rows (tokens x heads) for efficient matrix products.
const MAX_BLOCK_TOKENS: usize = 16;

struct Task {
    first_token: usize,
    tokens: usize,
    pages: std::ops::Range<usize>,
}

/// A block of query tokens, all heads, over the keys in `task.pages` each may see; one partial
/// per token.
fn attend(
    queries: &LatentQueries,
    keys: &LatentPages,
    softmax_scale: f32,
    task: &Task,
) -> Vec<Partial> {
    let (heads, kv_lora, rope, page_tokens) =
        (queries.heads, keys.kv_lora, keys.rope, keys.page_tokens);
    let row_len = kv_lora + rope;
    let rows = task.tokens * heads;
    let q_latent = &queries.latent[task.first_token * heads * kv_lora..][..rows * kv_lora];
    let q_rope = &queries.rope[task.first_token * heads * rope..][..rows * rope];
    // Per row (token-major, heads inner): running max and sum, and the weighted latent sum.
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut acc = vec![0f32; rows * kv_lora];
    let mut scores = vec![0f32; rows * page_tokens];
    // A few rows (a decode step) multiply each page in place; more take packed products.
    let in_place = rows <= page_products::MAX_ROWS && page_products::available(kv_lora, rope);
    let last_visible = queries.first_position + task.first_token + task.tokens; // exclusive, last token
    for page in task.pages.clone() {
        let first_key = page * page_tokens;
        let count = page_tokens.min(last_visible - first_key);
        let operands = PageOperands {
            q_latent,
            q_rope,
            keys: keys.pages[page],
            rows,
            count,
            kv_lora,
            rope,
        };
        if in_place {
            page_scores(&operands, &mut scores, page_tokens);
        } else {
            let keys_ptr = keys.pages[page].as_ptr();
            // SAFETY: every operand lies inside its slice: `rows` rows of `kv_lora`/`rope`
            // queries, `count <= page_tokens` rows of `row_len` floats in the page,
            // `rows x page_tokens` scores.
            unsafe {
                // scores = q_latent . c^T
                gemm_f32(
                    (rows, count, kv_lora),
                    Strided::row_major(scores.as_mut_ptr(), page_tokens),
                    Strided::row_major(q_latent.as_ptr(), kv_lora),
                    Strided::column_major(keys_ptr, row_len),
                    false,
                );
                // scores += q_rope . k_pe^T
                gemm_f32(
                    (rows, count, rope),
                    Strided::row_major(scores.as_mut_ptr(), page_tokens),
                    Strided::row_major(q_rope.as_ptr(), rope),
                    Strided::column_major(keys_ptr.add(kv_lora), row_len),
                    true,
                );
            }
        }
        // Online softmax per row over the keys its token may see; masked keys weigh 0.
        for r in 0..rows {
            let position = queries.first_position + task.first_token + r / heads;
            let visible = (position + 1).saturating_sub(first_key).min(count);
            let row_scores = &mut scores[r * page_tokens..][..count];
            if visible == 0 {
                row_scores.fill(0.0);
                continue;
            }
            let mut page_max = f32::NEG_INFINITY;
            for s in &mut row_scores[..visible] {
                *s *= softmax_scale;
                page_max = page_max.max(*s);
            }
            let new_max = max[r].max(page_max);
            if max[r] != new_max {
                let rescale = (max[r] - new_max).exp();
                scale(rescale, &mut acc[r * kv_lora..][..kv_lora]);
                sum[r] *= rescale;
                max[r] = new_max;
            }
            sum[r] += exp_shifted_sum(&mut row_scores[..visible], new_max);
            row_scores[visible..].fill(0.0);
        }
        if in_place {
            accumulate_latents(&operands, &scores, page_tokens, &mut acc);
        } else {
            // SAFETY: as above; `acc` holds `rows x kv_lora`.
            unsafe {
                // acc += weights . c
                gemm_f32(
                    (rows, kv_lora, count),
                    Strided::row_major(acc.as_mut_ptr(), kv_lora),
                    Strided::row_major(scores.as_ptr(), page_tokens),
                    Strided::row_major(keys.pages[page].as_ptr(), row_len),
                    true,
                );
            }
        }
    }
    (0..task.tokens)
        .map(|t| {
            let rows = t * heads..(t + 1) * heads;
            Partial {
                max: max[rows.clone()].to_vec(),
                sum: sum[rows.clone()].to_vec(),
                acc: acc[rows.start * kv_lora..rows.end * kv_lora].to_vec(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// Dense softmax in f64 over contiguous keys: the definition, not an algorithm.
    // It takes the kernel's own arguments, one by one, so a test reads like the call it checks.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q_latent: &[f32],
        q_rope: &[f32],
        keys: &[f32],
        tokens: usize,
        heads: usize,
        kv_lora: usize,
        rope: usize,
        first: usize,
        scale: f32,
    ) -> Vec<f64> {
        let row = kv_lora + rope;
        let mut out = vec![0f64; tokens * heads * kv_lora];
        for t in 0..tokens {
            for h in 0..heads {
                let ql = &q_latent[(t * heads + h) * kv_lora..][..kv_lora];
                let qr = &q_rope[(t * heads + h) * rope..][..rope];
                let n = first + t + 1;
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let k = &keys[j * row..][..row];
                        let s: f64 = ql
                            .iter()
                            .zip(&k[..kv_lora])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            + qr.iter()
                                .zip(&k[kv_lora..])
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>();
                        s * scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    for c in 0..kv_lora {
                        out[(t * heads + h) * kv_lora + c] += w / total * keys[j * row + c] as f64;
                    }
                }
            }
        }
        out
    }

    fn check(
        tokens: usize,
        heads: usize,
        kv_lora: usize,
        rope: usize,
        first: usize,
        page_tokens: usize,
        threads: usize,
    ) {
        let row = kv_lora + rope;
        let total = first + tokens;
        let keys = values(total * row, 1);
        // Pages are separate allocations, with junk past the filled rows of the last page.
        let pages: Vec<Vec<f32>> = keys
            .chunks(page_tokens * row)
            .map(|chunk| {
                let mut page = chunk.to_vec();
                page.resize(page_tokens * row, 1e30);
                page
            })
            .collect();
        let table: Vec<&[f32]> = pages.iter().map(Vec::as_slice).collect();
        let q_latent = values(tokens * heads * kv_lora, 2);
        let q_rope = values(tokens * heads * rope, 3);
        let scale = 0.3;
        let mut out = vec![0f32; tokens * heads * kv_lora];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            absorbed_attention(
                &LatentQueries {
                    latent: &q_latent,
                    rope: &q_rope,
                    tokens,
                    heads,
                    first_position: first,
                },
                &LatentPages {
                    pages: &table,
                    page_tokens,
                    kv_lora,
                    rope,
                },
                scale,
                &mut out,
            )
        });
        let expected = reference(
            &q_latent, &q_rope, &keys, tokens, heads, kv_lora, rope, first, scale,
        );
        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 1e-5,
                "tokens {tokens} first {first} page {page_tokens} threads {threads}: [{i}] {a} vs {b}"
            );
        }
    }

    #[test]
    fn decode_over_pages_matches_dense_softmax() {
        for first in [0, 1, 6, 7, 8, 31, 100] {
            for threads in [1, 2, 5] {
                check(1, 3, 16, 4, first, 8, threads);
            }
        }
    }

    /// Sizes in whole 16-float vectors take the in-place page products where the CPU has them
    /// (a decode step's few rows), and the packed products past `MAX_ROWS` rows.
    #[test]
    fn vector_sized_heads_match_dense_softmax() {
        for first in [0, 5, 31, 32, 70] {
            for (heads, threads) in [(1, 1), (3, 2), (16, 2), (5, 3)] {
                check(1, heads, 80, 16, first, 32, threads);
            }
        }
        check(3, 16, 32, 32, 9, 8, 2);
        check(6, 16, 32, 16, 40, 16, 1);
    }

    #[test]
    fn a_prefill_span_sees_the_cache_and_its_own_causal_part() {
        check(5, 2, 12, 6, 0, 4, 2);
        check(9, 2, 12, 6, 13, 4, 3);
        check(32, 4, 8, 2, 32, 32, 2);
        check(3, 1, 8, 2, 0, 1, 4);
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let (kv_lora, rope) = (8, 2);
        let keys: Vec<f32> = (0..4 * (kv_lora + rope))
            .map(|i| if i % 10 < 8 { 50.0 + i as f32 } else { 1.0 })
            .collect();
        let table: Vec<&[f32]> = keys.chunks(2 * (kv_lora + rope)).collect();
        let q = vec![10.0f32; kv_lora];
        let qr = vec![1.0f32; rope];
        let mut out = vec![0f32; kv_lora];
        absorbed_attention(
            &LatentQueries {
                latent: &q,
                rope: &qr,
                tokens: 1,
                heads: 1,
                first_position: 3,
            },
            &LatentPages {
                pages: &table,
                page_tokens: 2,
                kv_lora,
                rope,
            },
            1.0,
            &mut out,
        );
        assert!(out.iter().all(|x| x.is_finite()));
        // Key 3 dominates completely.
        assert!((out[0] - keys[3 * 10]).abs() < 1e-3, "{out:?}");
    }
}

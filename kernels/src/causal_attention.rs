//! Multi-head latent attention in its expanded form for a prompt on the CPU: the keys' and
//! values' per-head parts come from W_UKV (the caller's `kv_b` product), and every query sees
//! the keys at or before its own position.
//!
//! For query token i at position `first_position + i` and head h, over keys j <= that position:
//!
//!   s_j = scale * (q_nope . k_nope_j + q_rope . k_rope_j),   out = sum_j softmax(s)_j * v_j
//!
//! The work goes in tasks of one head and a block of query tokens: two matrix products give the
//! block's scores over the keys its last token may see, one pass per row masks, scales and
//! normalises them, and a third product weighs the values. Nothing is materialised per head
//! beyond the block's scores: the operands are read where they lie, through strides (the
//! `kv_b` rows hold every head's key and value side by side), and no mask is built.

use rayon::prelude::*;

use crate::strided_gemm::{Strided, gemm_f32};

/// The operands of one prompt's attention in one layer, as the projections leave them.
pub struct ExpandedAttention<'a> {
    /// [heads, tokens, nope]
    pub q_nope: &'a [f32],
    /// [heads, tokens, rope] (rotary embedding applied)
    pub q_rope: &'a [f32],
    /// [keys, heads, nope + v_dim]: key j's no-position part and value for every head.
    pub kv: &'a [f32],
    /// [keys, rope] (rotary embedding applied), shared by every head
    pub k_rope: &'a [f32],
    pub heads: usize,
    pub tokens: usize,
    pub nope: usize,
    pub rope: usize,
    pub v_dim: usize,
    /// Position of query token 0; token i sees keys 0..=first_position + i, and there are
    /// `first_position + tokens` keys.
    pub first_position: usize,
}

/// Query tokens per task: enough rows for efficient matrix products (gemm packs each block's
/// keys once), while 16 heads still give every core several tasks. Measured (lite:4 Q4_K_M,
/// `bench prefill`, 2 threads, tok/s): 512 tokens: 32 rows 454-474, 64 rows 479-487, 128 rows
/// 499-501; 2048 tokens: 351-369, 391-394, 398.
const BLOCK_TOKENS: usize = 128;

/// Writes the attention output, [tokens, heads, v_dim] (token-major: the output projection's
/// input), into `out`.
///
/// Panics if slice lengths disagree with the sizes given (callers build them from one config).
pub fn expanded_attention(a: &ExpandedAttention, softmax_scale: f32, out: &mut [f32]) {
    let (heads, tokens) = (a.heads, a.tokens);
    let keys = a.first_position + tokens;
    let kv_row = heads * (a.nope + a.v_dim);
    assert_eq!(
        a.q_nope.len(),
        heads * tokens * a.nope,
        "no-position queries"
    );
    assert_eq!(a.q_rope.len(), heads * tokens * a.rope, "rotary queries");
    assert_eq!(a.kv.len(), keys * kv_row, "keys and values");
    assert_eq!(a.k_rope.len(), keys * a.rope, "rotary keys");
    assert_eq!(out.len(), tokens * heads * a.v_dim, "output");

    let tasks: Vec<(usize, usize)> = (0..heads)
        .flat_map(|h| (0..tokens).step_by(BLOCK_TOKENS).map(move |t| (h, t)))
        .collect();
    let blocks: Vec<(usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(h, first)| (h, first, attend_block(a, softmax_scale, h, first)))
        .collect();
    for (h, first, block) in blocks {
        for (offset, row) in block.chunks_exact(a.v_dim).enumerate() {
            let token = first + offset;
            out[(token * heads + h) * a.v_dim..][..a.v_dim].copy_from_slice(row);
        }
    }
}

/// Head `h`'s output for query tokens `first..first + BLOCK_TOKENS` (fewer at the end), as
/// [rows, v_dim].
fn attend_block(a: &ExpandedAttention, softmax_scale: f32, h: usize, first: usize) -> Vec<f32> {
    let rows = BLOCK_TOKENS.min(a.tokens - first);
    // Keys the block's last token sees; earlier rows see fewer.
    let visible = a.first_position + first + rows;
    let kv_row = a.heads * (a.nope + a.v_dim);
    let q_nope = &a.q_nope[(h * a.tokens + first) * a.nope..][..rows * a.nope];
    let q_rope = &a.q_rope[(h * a.tokens + first) * a.rope..][..rows * a.rope];
    let head_kv = &a.kv[h * (a.nope + a.v_dim)..];
    let mut scores = vec![0f32; rows * visible];
    let mut out = vec![0f32; rows * a.v_dim];
    // SAFETY: every operand lies inside its slice. Scores: `rows x visible` at row stride
    // `visible`. Queries: `rows` rows of `nope` / `rope` floats. Keys j < visible <= keys: the
    // no-position part of head h at kv[j kv_row + h (nope + v_dim) + c] for c < nope, the
    // rotary part at k_rope[j rope + c], the value at the no-position part's offset + nope + c
    // for c < v_dim; the last one read, j = visible - 1, ends inside `kv`.
    unsafe {
        // scores = q_nope . k_nope^T
        gemm_f32(
            (rows, visible, a.nope),
            Strided::row_major(scores.as_mut_ptr(), visible),
            Strided::row_major(q_nope.as_ptr(), a.nope),
            Strided::column_major(head_kv.as_ptr(), kv_row),
            false,
        );
        // scores += q_rope . k_rope^T
        gemm_f32(
            (rows, visible, a.rope),
            Strided::row_major(scores.as_mut_ptr(), visible),
            Strided::row_major(q_rope.as_ptr(), a.rope),
            Strided::column_major(a.k_rope.as_ptr(), a.rope),
            true,
        );
    }
    // Each row over the keys its token sees; the others weigh 0.
    for (r, row) in scores.chunks_exact_mut(visible).enumerate() {
        let seen = a.first_position + first + r + 1;
        let (seen_scores, masked) = row.split_at_mut(seen);
        let max = seen_scores
            .iter()
            .fold(f32::NEG_INFINITY, |m, &s| m.max(s * softmax_scale));
        let mut sum = 0f32;
        for s in seen_scores.iter_mut() {
            *s = (*s * softmax_scale - max).exp();
            sum += *s;
        }
        let inverse = 1.0 / sum;
        for s in seen_scores.iter_mut() {
            *s *= inverse;
        }
        masked.fill(0.0);
    }
    // SAFETY: as above; `out` holds `rows x v_dim`.
    unsafe {
        // out = probabilities . v
        gemm_f32(
            (rows, a.v_dim, visible),
            Strided::row_major(out.as_mut_ptr(), a.v_dim),
            Strided::row_major(scores.as_ptr(), visible),
            Strided::row_major(head_kv.as_ptr().add(a.nope), kv_row),
            false,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// The definition in f64, one query and head at a time: [tokens, heads, v_dim].
    fn reference(a: &ExpandedAttention, scale: f32) -> Vec<f64> {
        let (heads, nope, rope, v_dim) = (a.heads, a.nope, a.rope, a.v_dim);
        let kv_row = heads * (nope + v_dim);
        let mut out = vec![0f64; a.tokens * heads * v_dim];
        for t in 0..a.tokens {
            for h in 0..heads {
                let qn = &a.q_nope[(h * a.tokens + t) * nope..][..nope];
                let qr = &a.q_rope[(h * a.tokens + t) * rope..][..rope];
                let seen = a.first_position + t + 1;
                let scores: Vec<f64> = (0..seen)
                    .map(|j| {
                        let kn = &a.kv[j * kv_row + h * (nope + v_dim)..][..nope];
                        let kr = &a.k_rope[j * rope..][..rope];
                        let dot = |q: &[f32], k: &[f32]| {
                            q.iter()
                                .zip(k)
                                .map(|(&x, &y)| x as f64 * y as f64)
                                .sum::<f64>()
                        };
                        scale as f64 * (dot(qn, kn) + dot(qr, kr))
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    let v = &a.kv[j * kv_row + h * (nope + v_dim) + nope..][..v_dim];
                    for (o, &x) in out[(t * heads + h) * v_dim..][..v_dim].iter_mut().zip(v) {
                        *o += w / sum * x as f64;
                    }
                }
            }
        }
        out
    }

    /// Sizes that cut blocks unevenly (a block of 128 and one of 33), with and without keys
    /// cached before the prompt, one and three heads.
    #[test]
    fn matches_the_definition() {
        for (heads, tokens, first_position) in [(1, 1, 0), (3, 161, 0), (2, 5, 11), (2, 140, 7)] {
            let (nope, rope, v_dim) = (16, 8, 12);
            let keys = first_position + tokens;
            let q_nope = values(heads * tokens * nope, 1);
            let q_rope = values(heads * tokens * rope, 2);
            let kv = values(keys * heads * (nope + v_dim), 3);
            let k_rope = values(keys * rope, 4);
            let a = ExpandedAttention {
                q_nope: &q_nope,
                q_rope: &q_rope,
                kv: &kv,
                k_rope: &k_rope,
                heads,
                tokens,
                nope,
                rope,
                v_dim,
                first_position,
            };
            let scale = 0.3;
            let mut out = vec![f32::NAN; tokens * heads * v_dim];
            expanded_attention(&a, scale, &mut out);
            for (i, (&ours, want)) in out.iter().zip(reference(&a, scale)).enumerate() {
                assert!(
                    (ours as f64 - want).abs() < 1e-5,
                    "{heads} heads, {tokens} tokens after {first_position}: value {i}: {ours} vs {want}"
                );
            }
        }
    }
}

//! A prompt's routed tokens regrouped by expert, and back. Each of a token's `top_k` choices
//! becomes one row of the experts' grouped matmul ([`crate::grouped_matmul`]): expert 0's rows
//! first, then expert 1's. After the experts ran, each token's output is the weighted sum of its
//! choices' rows.
//!
//! The CPU reference of `moe_expert_rows` and `moe_combine` (`kernels/cuda/moe_expert_rows.cu`).
//! The GPU places an expert's rows in whatever order its threads arrive; nothing downstream
//! depends on that order (each row of a grouped matmul is its own sum), so the GPU is held to the
//! same offsets and to the same row for each choice's token, not to the same order.

/// Rows of one grouped-matmul tile (`TILE_ROWS` in moe_grouped_matmul.cu): an expert's rows
/// start a new tile.
pub const EXPERT_TILE_ROWS: usize = 64;

/// Where each choice's row is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertRows {
    /// Expert e's rows are `row_offsets[e]..row_offsets[e + 1]` (experts + 1 entries).
    pub row_offsets: Vec<u32>,
    /// Expert e's row tiles are `tile_offsets[e]..tile_offsets[e + 1]` (experts + 1 entries).
    pub tile_offsets: Vec<u32>,
    /// The token each row comes from.
    pub row_token: Vec<u32>,
    /// The row of each choice: token t's j-th choice is at `t * top_k + j`.
    pub choice_row: Vec<u32>,
}

/// The rows of `chosen` (each token's `top_k` experts, token after token), an expert's rows in
/// token order.
///
/// Panics if an expert is not below `experts` (callers have `chosen` from a routing over them).
pub fn expert_rows(chosen: &[u32], experts: usize, top_k: usize) -> ExpertRows {
    assert!(top_k > 0 && chosen.len().is_multiple_of(top_k));
    let mut counts = vec![0u32; experts];
    for &expert in chosen {
        counts[expert as usize] += 1;
    }
    let mut row_offsets = Vec::with_capacity(experts + 1);
    let mut rows = 0u32;
    for &count in &counts {
        row_offsets.push(rows);
        rows += count;
    }
    row_offsets.push(rows);
    let tile_offsets = tile_offsets(counts.iter().map(|&count| count as usize));

    let mut cursor = row_offsets[..experts].to_vec();
    let mut row_token = vec![0u32; chosen.len()];
    let choice_row = chosen
        .iter()
        .enumerate()
        .map(|(choice, &expert)| {
            let row = cursor[expert as usize];
            cursor[expert as usize] += 1;
            row_token[row as usize] = (choice / top_k) as u32;
            row
        })
        .collect();
    ExpertRows {
        row_offsets,
        tile_offsets,
        row_token,
        choice_row,
    }
}

/// Where each expert's row tiles start (experts + 1 entries), from each expert's row count: an
/// expert's rows start a new tile of [`EXPERT_TILE_ROWS`].
pub fn tile_offsets(rows_per_expert: impl IntoIterator<Item = usize>) -> Vec<u32> {
    let mut offsets = vec![0u32];
    for rows in rows_per_expert {
        let tiles = rows.div_ceil(EXPERT_TILE_ROWS) as u32;
        offsets.push(offsets.last().copied().unwrap_or(0) + tiles);
    }
    offsets
}

/// The most row tiles `choices` choices over `experts` experts can take, whatever the routing:
/// what a launch sizes its grid for before the routing is known. An expert with c rows takes
/// 1 + (c - 1) / 64 tiles, so m experts with rows take at most m + (choices - m) / 64, largest
/// when as many experts as can have rows do.
pub fn most_row_tiles(choices: usize, experts: usize) -> usize {
    let with_rows = choices.min(experts);
    with_rows + (choices - with_rows) / EXPERT_TILE_ROWS
}

/// `out[t] = base[t] + sum over j of weights[t * top_k + j] * rows[choice_row[t * top_k + j]]`,
/// each row `width` wide, the choices added best first (their order in `choice_row`); `base`
/// (the shared experts' output, or none) is added first.
pub fn combine_expert_rows(
    rows: &[f32],
    choice_row: &[u32],
    weights: &[f32],
    top_k: usize,
    base: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(top_k > 0 && choice_row.len().is_multiple_of(top_k));
    assert_eq!(choice_row.len(), weights.len());
    let tokens = choice_row.len() / top_k;
    if tokens == 0 {
        return;
    }
    let width = out.len() / tokens;
    assert_eq!(out.len(), tokens * width);
    for (token, out) in out.chunks_exact_mut(width.max(1)).enumerate() {
        match base {
            Some(base) => out.copy_from_slice(&base[token * width..(token + 1) * width]),
            None => out.fill(0.0),
        }
        for choice in token * top_k..(token + 1) * top_k {
            let row = choice_row[choice] as usize;
            let weight = weights[choice];
            for (o, v) in out.iter_mut().zip(&rows[row * width..(row + 1) * width]) {
                *o += weight * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_become_rows_grouped_by_expert_in_token_order() {
        // Three tokens, two choices each, over four experts (expert 2 idle).
        let chosen = [3, 0, 0, 1, 3, 0];
        let rows = expert_rows(&chosen, 4, 2);
        assert_eq!(rows.row_offsets, [0, 3, 4, 4, 6]);
        assert_eq!(rows.tile_offsets, [0, 1, 2, 2, 3]);
        // Expert 0: tokens 0, 1, 2; expert 1: token 1; expert 3: tokens 0, 2.
        assert_eq!(rows.row_token, [0, 1, 2, 1, 0, 2]);
        assert_eq!(rows.choice_row, [4, 0, 1, 3, 5, 2]);
    }

    #[test]
    fn an_expert_past_one_tile_takes_two() {
        let chosen: Vec<u32> = (0..65).map(|_| 1).chain([0]).collect();
        let rows = expert_rows(&chosen, 2, 1);
        assert_eq!(rows.row_offsets, [0, 1, 66]);
        assert_eq!(rows.tile_offsets, [0, 1, 3]);
    }

    #[test]
    fn the_tile_bound_holds_for_any_routing() {
        let mut state = 7u64;
        for (tokens, top_k, experts) in [(1, 6, 64), (3, 2, 4), (200, 6, 64), (1000, 8, 16)] {
            for _ in 0..50 {
                let chosen: Vec<u32> = (0..tokens * top_k)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        // Skewed: most choices on a few experts, so some cross tile edges.
                        let draw = (state >> 33) as usize;
                        (if draw.is_multiple_of(3) {
                            draw % experts
                        } else {
                            draw % 2
                        }) as u32
                    })
                    .collect();
                let tiles = *expert_rows(&chosen, experts, top_k)
                    .tile_offsets
                    .last()
                    .unwrap() as usize;
                assert!(tiles <= most_row_tiles(chosen.len(), experts));
            }
        }
        // The bound is reached: one row on each of 64 experts, then 64 more on one of them.
        let chosen: Vec<u32> = (0..64).chain(std::iter::repeat_n(0, 64)).collect();
        let tiles = *expert_rows(&chosen, 64, 1).tile_offsets.last().unwrap() as usize;
        assert_eq!(tiles, most_row_tiles(128, 64));
    }

    #[test]
    fn combining_weights_each_choice_and_adds_the_base() {
        // Two tokens, top_k 2, width 2; rows as expert_rows placed them.
        let rows = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0, 0.5, 0.25];
        let choice_row = [2, 0, 1, 3];
        let weights = [0.5, 2.0, 1.0, 4.0];
        let base = [1.0, 1.0, -1.0, -1.0];
        let mut out = [0f32; 4];
        combine_expert_rows(&rows, &choice_row, &weights, 2, Some(&base), &mut out);
        assert_eq!(
            out,
            [
                1.0 + 50.0 + 2.0,
                1.0 + 100.0 + 4.0,
                -1.0 + 10.0 + 2.0,
                -1.0 + 20.0 + 1.0
            ]
        );
        combine_expert_rows(&rows, &choice_row, &weights, 2, None, &mut out);
        assert_eq!(out, [52.0, 104.0, 12.0, 21.0]);
    }
}

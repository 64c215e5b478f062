//! Expert selection for mixture-of-experts routing, on one token's router scores.
//!
//! Two rules: plain top-k over all experts, and group-limited top-k (score each group of
//! experts by its best member, keep the best `keep_groups` groups, then top-k inside them).
//! [`route_token`] is a token's whole routing (softmax, selection, weights) and the CPU
//! reference of the GPU kernel `moe_route` (`kernels/cuda/moe_routing.cu`).

/// How experts are grouped before selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupLimit {
    None,
    /// `groups` equal groups of consecutive experts; only the best `keep_groups` may be chosen.
    Groups {
        groups: usize,
        keep_groups: usize,
    },
}

/// Writes the `top_k` chosen experts of one token into `chosen` as (expert, score) pairs,
/// best first. `scores` are the router's probabilities for every expert.
///
/// Ties go to the lower expert index. Panics if `top_k` exceeds the experts that can be chosen
/// (callers validate this against the model config once, at load).
pub fn select_experts(
    scores: &[f32],
    top_k: usize,
    limit: GroupLimit,
    chosen: &mut Vec<(usize, f32)>,
) {
    chosen.clear();
    match limit {
        GroupLimit::None => {
            for (expert, &score) in scores.iter().enumerate() {
                insert_top(chosen, top_k, expert, score);
            }
        }
        GroupLimit::Groups {
            groups,
            keep_groups,
        } => {
            let per_group = scores.len() / groups;
            let mut kept = best_groups(scores, groups, keep_groups);
            kept.sort_unstable();
            for group in kept {
                let first = group * per_group;
                for (offset, &score) in scores[first..first + per_group].iter().enumerate() {
                    insert_top(chosen, top_k, first + offset, score);
                }
            }
        }
    }
    assert_eq!(
        chosen.len(),
        top_k,
        "top_k exceeds the experts that can be chosen"
    );
}

/// What the chosen experts' scores become (DeepSeek-V2's `norm_topk_prob` and
/// `routed_scaling_factor`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weighting {
    /// Divided by their sum (plus 1e-20, as the reference implementation).
    Normalize,
    /// Multiplied by a factor.
    Scale(f32),
}

/// One token's routing from the router's logits: softmax over the experts (`exp(x - max) /
/// sum`), [`select_experts`], then `weighting`. `chosen` gets (expert, weight), best first.
pub fn route_token(
    logits: &[f32],
    top_k: usize,
    limit: GroupLimit,
    weighting: Weighting,
    chosen: &mut Vec<(usize, f32)>,
) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    select_experts(&probs, top_k, limit, chosen);
    match weighting {
        Weighting::Normalize => {
            let total: f32 = chosen.iter().map(|&(_, w)| w).sum::<f32>() + 1e-20;
            chosen.iter_mut().for_each(|(_, w)| *w /= total);
        }
        Weighting::Scale(factor) => chosen.iter_mut().for_each(|(_, w)| *w *= factor),
    }
}

/// The `keep` best groups (a group's score is its best expert), best first.
fn best_groups(scores: &[f32], groups: usize, keep: usize) -> Vec<usize> {
    let per_group = scores.len() / groups;
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(keep + 1);
    for (group, members) in scores.chunks_exact(per_group).take(groups).enumerate() {
        let group_score = members.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        insert_top(&mut best, keep, group, group_score);
    }
    best.into_iter().map(|(group, _)| group).collect()
}

/// Keeps `list` as the best `k` (index, score) pairs seen so far, best first.
fn insert_top(list: &mut Vec<(usize, f32)>, k: usize, index: usize, score: f32) {
    let position = list
        .iter()
        .position(|&(_, s)| score > s)
        .unwrap_or(list.len());
    if position < k {
        if list.len() == k {
            list.pop();
        }
        list.insert(position, (index, score));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(scores: &[f32], k: usize, limit: GroupLimit) -> Vec<usize> {
        let mut chosen = Vec::new();
        select_experts(scores, k, limit, &mut chosen);
        chosen.into_iter().map(|(e, _)| e).collect()
    }

    #[test]
    fn greedy_takes_the_largest_scores_best_first() {
        let scores = [0.1, 0.4, 0.05, 0.3, 0.15];
        assert_eq!(pick(&scores, 3, GroupLimit::None), vec![1, 3, 4]);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        assert_eq!(
            pick(&[0.25, 0.25, 0.25, 0.25], 2, GroupLimit::None),
            vec![0, 1]
        );
    }

    #[test]
    fn group_limit_keeps_groups_by_their_best_expert() {
        // Groups of 2: g0 = {0.30, 0.00}, g1 = {0.20, 0.19}, g2 = {0.01, 0.30}.
        // Best experts per group: 0.30, 0.20, 0.30 -> keep g0 and g2.
        // Greedy would take 0.30, 0.30, 0.20; group-limited must skip g1 and take 0.01 instead.
        let scores = [0.30, 0.00, 0.20, 0.19, 0.01, 0.30];
        let limit = GroupLimit::Groups {
            groups: 3,
            keep_groups: 2,
        };
        assert_eq!(pick(&scores, 3, limit), vec![0, 5, 4]);
        assert_eq!(pick(&scores, 3, GroupLimit::None), vec![0, 5, 2]);
    }

    #[test]
    fn a_token_is_routed_on_its_softmax_and_weighted() {
        // logits ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4.
        let logits: Vec<f32> = [1f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
        let mut chosen = Vec::new();
        route_token(
            &logits,
            2,
            GroupLimit::None,
            Weighting::Scale(2.0),
            &mut chosen,
        );
        let expected = [(3, 0.8), (2, 0.6)];
        for ((expert, weight), (want_expert, want_weight)) in chosen.iter().zip(expected) {
            assert_eq!(*expert, want_expert);
            assert!((weight - want_weight).abs() < 1e-6, "{chosen:?}");
        }
        route_token(
            &logits,
            2,
            GroupLimit::None,
            Weighting::Normalize,
            &mut chosen,
        );
        // 0.4 / 0.7 and 0.3 / 0.7.
        assert!((chosen[0].1 - 4.0 / 7.0).abs() < 1e-6, "{chosen:?}");
        assert!((chosen[1].1 - 3.0 / 7.0).abs() < 1e-6, "{chosen:?}");
        // Groups of two: {0.1, 0.2} and {0.3, 0.4}; keeping one group leaves 3 then 2.
        let limit = GroupLimit::Groups {
            groups: 2,
            keep_groups: 1,
        };
        route_token(&logits, 2, limit, Weighting::Scale(1.0), &mut chosen);
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), vec![3, 2]);
    }

    #[test]
    fn scores_are_returned_with_their_experts() {
        let mut chosen = Vec::new();
        select_experts(&[0.5, 0.2, 0.3], 2, GroupLimit::None, &mut chosen);
        assert_eq!(chosen, vec![(0, 0.5), (2, 0.3)]);
    }
}

//! Choosing the next token from logits: greedy, or temperature with top-k and top-p, from a
//! seeded generator (same seed + same prompt = same text).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Checks the ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be 0 or more, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: SplitMix64(params.seed),
            candidates: Vec::new(),
        }
    }

    /// The next token id from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 || self.params.top_k == 1 {
            return argmax(logits);
        }
        let inverse_temperature = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inverse_temperature)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        // Most likely first; ties to the lower id so results do not depend on sort stability.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let max = self.candidates[0].1;
        let mut total = 0.0f64;
        for candidate in &mut self.candidates {
            candidate.1 = (candidate.1 - max).exp();
            total += candidate.1 as f64;
        }
        // Top-p over the sorted probabilities; always keep the first.
        let mut kept = self.candidates.len();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0f64;
            for (i, candidate) in self.candidates.iter().enumerate() {
                cumulative += candidate.1 as f64 / total;
                if cumulative >= self.params.top_p as f64 {
                    kept = i + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = self.candidates[..kept].iter().map(|c| c.1 as f64).sum();
        let mut target = self.rng.next_unit() * kept_total;
        for candidate in &self.candidates[..kept] {
            target -= candidate.1 as f64;
            if target < 0.0 {
                return candidate.0;
            }
        }
        self.candidates[kept - 1].0
    }
}

/// Index of the largest logit, the lowest index on ties (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// A small, portable generator: identical streams on every platform for a given seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(params);
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(logits) as usize] += 1;
        }
        counts
    }

    fn warm(top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_largest_and_the_lowest_index_on_ties() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(
            Sampler::new(SamplingParams::greedy()).sample(&[0.0, 0.5, 0.2]),
            1
        );
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(
            counts(warm(0, 1.0, 7), &logits, 200),
            counts(warm(0, 1.0, 7), &logits, 200)
        );
        assert_ne!(
            counts(warm(0, 1.0, 7), &logits, 200),
            counts(warm(0, 1.0, 8), &logits, 200)
        );
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // Probabilities e^0, e^1, e^2 normalised: 0.090, 0.245, 0.665.
        let c = counts(warm(0, 1.0, 1), &[0.0, 1.0, 2.0], 20_000);
        let expected = [0.090, 0.245, 0.665];
        for (n, p) in c.iter().zip(expected) {
            assert!((*n as f64 / 20_000.0 - p).abs() < 0.015, "{c:?}");
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0, 1.0, 2.0, 3.0];
        let c = counts(warm(2, 1.0, 3), &logits, 2000);
        assert_eq!((c[0], c[1]), (0, 0), "top-2 keeps ids 2 and 3 only: {c:?}");
        // Probabilities 0.032, 0.087, 0.237, 0.644: top_p 0.7 keeps ids 3 and 2.
        let c = counts(warm(0, 0.7, 3), &logits, 2000);
        assert_eq!((c[0], c[1]), (0, 0), "{c:?}");
        assert!(c[2] > 0 && c[3] > 0);
        // top_p below the first probability keeps just the best.
        assert_eq!(counts(warm(0, 0.1, 3), &logits, 100)[3], 100);
    }

    #[test]
    fn low_temperature_concentrates_on_the_best() {
        let params = SamplingParams {
            temperature: 0.05,
            top_k: 0,
            top_p: 1.0,
            seed: 5,
        };
        assert_eq!(counts(params, &[0.0, 1.0, 2.0], 500)[2], 500);
    }

    #[test]
    fn invalid_parameters_are_named() {
        let bad = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::greedy()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::greedy()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
    }
}

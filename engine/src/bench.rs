//! Throughput measurements of a loaded model: prefill and decode tokens per second and the
//! weight bandwidth decode achieves. Used by `deepseek-lsp bench`; prints nothing itself.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::generation::{GenerationStats, PromptInput, Request};
use crate::model::{Logits, Model};
use crate::worker::{Engine, EngineOptions};

/// What one benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Tokens processed in the timed part.
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub ms_per_token: f64,
    /// Weight bytes a decoded token reads x tokens per second (decode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_gb_per_second: Option<f64>,
    /// Tokens already in the cache when the timed part started.
    pub context_tokens: usize,
}

impl Throughput {
    fn new(tokens: usize, context_tokens: usize, seconds: f64) -> Self {
        Self {
            tokens,
            seconds,
            tokens_per_second: tokens as f64 / seconds,
            ms_per_token: seconds * 1e3 / tokens as f64,
            weight_gb_per_second: None,
            context_tokens,
        }
    }
}

/// Deterministic prompt ids spread over the vocabulary.
pub fn prompt_ids(model: &Model, len: usize) -> Vec<u32> {
    let vocab = model.config().vocab_size as u64;
    (0..len as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect()
}

/// Prefills `prompt_len` tokens on an empty cache, `repeats` times; reports the fastest run.
pub fn prefill(model: &Model, prompt_len: usize, repeats: usize) -> Result<Throughput> {
    let ids = prompt_ids(model, prompt_len);
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let mut cache = model.new_cache();
        let started = Instant::now();
        model.forward(&ids, &mut cache, Logits::Last)?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(Throughput::new(prompt_len, 0, best))
}

/// Prefills `prompt_len` tokens, then decodes `tokens` greedily one at a time (timed).
pub fn decode(model: &Model, prompt_len: usize, tokens: usize) -> Result<Throughput> {
    let ids = prompt_ids(model, prompt_len.max(1));
    let mut cache = model.new_cache();
    let logits = model.forward(&ids, &mut cache, Logits::Last)?;
    let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    let started = Instant::now();
    for _ in 0..tokens {
        let logits = model.forward(&[next], &mut cache, Logits::Last)?;
        next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    }
    let mut throughput = Throughput::new(tokens, ids.len(), started.elapsed().as_secs_f64());
    throughput.weight_gb_per_second =
        Some(model.weight_bytes_per_token() as f64 * throughput.tokens_per_second / 1e9);
    Ok(throughput)
}

/// Time to first token and decode speed through the resident engine, cold and then warm.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationFigures {
    /// A `prompt_len` prompt on an empty cache, then `tokens` generated.
    pub cold: GenerationStats,
    /// The same prompt with one more token at the end (a keystroke): the prefix comes from cache.
    pub warm: GenerationStats,
    /// cold time to first token / warm time to first token.
    pub time_to_first_token_ratio: f64,
}

/// Runs two requests through an [`Engine`] that owns `model` (no tokenizer: prompts are ids).
pub fn generation(
    model: Model,
    options: EngineOptions,
    prompt_len: usize,
    tokens: usize,
) -> Result<GenerationFigures> {
    let mut ids = prompt_ids(&model, prompt_len.max(1));
    let engine = Engine::start_with(model, None, options);
    let run = |ids: Vec<u32>| {
        engine
            .submit(Request::new(PromptInput::Tokens(ids), tokens))
            .wait()
            .map(|(_, s)| s)
    };
    let cold = run(ids.clone())?;
    ids.push(ids[0]);
    let warm = run(ids)?;
    Ok(GenerationFigures {
        time_to_first_token_ratio: cold.time_to_first_token_ms / warm.time_to_first_token_ms,
        cold,
        warm,
    })
}

/// What `keystroke` measured.
#[derive(Debug, Clone, Serialize)]
pub struct KeystrokeFigures {
    pub context_tokens: usize,
    pub edits: usize,
    /// Tokens each edit rewrites just before the cursor (a line).
    pub edit_tokens: usize,
    /// Tokens after the cursor, as a fill-in-the-middle prompt carries them.
    pub suffix_tokens: usize,
    pub cold_time_to_first_token_ms: f64,
    pub warm_time_to_first_token_ms_median: f64,
    pub warm_time_to_first_token_ms_p90: f64,
    /// Median warm time to first token / cold time to first token.
    pub warm_over_cold: f64,
    /// Mean share of each warm prompt served from the prefix cache.
    pub reused_fraction: f64,
    pub warm_tokens_computed_median: f64,
    /// Latent rows (over all layers) copied from host memory to the GPU per warm keystroke, on
    /// average; 0 on the CPU. Pages of a cached prefix stay on the device, so this counts only
    /// pages it has not seen.
    pub warm_rows_copied_to_device_mean: f64,
}

/// Simulates editing near the end of a long file: a `context`-token prompt runs cold, then each of
/// `edits` rewrites the `edit_tokens` before the cursor (a one-line edit), leaving the last
/// `suffix_tokens` after the cursor as they were, and asks for `tokens` new tokens.
pub fn keystroke(
    model: Model,
    options: EngineOptions,
    context: usize,
    edits: usize,
    tokens: usize,
) -> Result<KeystrokeFigures> {
    let edit_tokens = 12.min(context / 4).max(1);
    let suffix_tokens = 32.min(context / 4);
    let cursor = context - suffix_tokens;
    let vocab = model.config().vocab_size as u32;
    let base = prompt_ids(&model, context);
    let engine = Engine::start_with(model, None, options);
    let run = |prompt: Vec<u32>| {
        engine
            .submit(Request::new(PromptInput::Tokens(prompt), tokens))
            .wait()
            .map(|(_, s)| s)
    };

    let cold = run(base.clone())?;
    let copied_before = engine.counters().cache.rows_copied_to_device;
    let mut warm = Vec::with_capacity(edits);
    for edit in 0..edits {
        let mut prompt = base[..cursor - edit_tokens].to_vec();
        prompt.extend((0..edit_tokens as u32).map(|i| (i * 31 + edit as u32 * 977 + 11) % vocab));
        prompt.extend_from_slice(&base[cursor..]);
        warm.push(run(prompt)?);
    }
    let mut ttft: Vec<f64> = warm.iter().map(|s| s.time_to_first_token_ms).collect();
    ttft.sort_by(f64::total_cmp);
    let mut computed: Vec<f64> = warm.iter().map(|s| s.computed_tokens as f64).collect();
    computed.sort_by(f64::total_cmp);
    let median = percentile(&ttft, 0.5);
    Ok(KeystrokeFigures {
        context_tokens: context,
        edits,
        edit_tokens,
        suffix_tokens,
        cold_time_to_first_token_ms: cold.time_to_first_token_ms,
        warm_time_to_first_token_ms_median: median,
        warm_time_to_first_token_ms_p90: percentile(&ttft, 0.9),
        warm_over_cold: median / cold.time_to_first_token_ms,
        reused_fraction: warm
            .iter()
            .map(|s| s.cached_tokens as f64 / s.prompt_tokens as f64)
            .sum::<f64>()
            / warm.len().max(1) as f64,
        warm_tokens_computed_median: percentile(&computed, 0.5),
        warm_rows_copied_to_device_mean: (engine.counters().cache.rows_copied_to_device
            - copied_before) as f64
            / edits.max(1) as f64,
    })
}

/// The value at quantile `q` of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The memory bandwidth decode on `device` is bounded by, in GB/s: on the CPU, the read
/// bandwidth over a `bytes` buffer ([`memory_read_gb_per_second`]); on a GPU, the bytes read and
/// written per second by a device-to-device copy of `bytes` (best of five, after one unmeasured
/// copy), which is how HBM bandwidth is quoted.
pub fn device_bandwidth_gb_per_second(device: &candle_core::Device, bytes: usize) -> Result<f64> {
    if device.is_cpu() {
        return Ok(memory_read_gb_per_second(bytes));
    }
    let source = candle_core::Tensor::zeros(bytes / 4, candle_core::DType::F32, device)?;
    let mut best = f64::INFINITY;
    for round in 0..6 {
        device.synchronize()?;
        let started = Instant::now();
        let copy = source.copy()?;
        device.synchronize()?;
        if round > 0 {
            best = best.min(started.elapsed().as_secs_f64());
        }
        drop(copy);
    }
    Ok(2.0 * (bytes / 4 * 4) as f64 / best / 1e9)
}

/// The machine's read bandwidth over a `bytes` buffer on all worker threads (best of three), in
/// GB/s: the bound decode's `weight_gb_per_second` is measured against.
pub fn memory_read_gb_per_second(bytes: usize) -> f64 {
    kernels::bandwidth::read_gb_per_second(bytes, 3)
}

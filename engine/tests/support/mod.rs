//! Shared by the engine's integration tests: the golden fixtures and their generation
//! references, and helpers to drive requests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::{Engine, GenerationEvent, LoadOptions, Logits, Model, Prompt, PromptInput, Request};
use serde::Deserialize;

/// `engine/tests/fixtures/NAME`, or `$ENGINE_FIXTURES/NAME` where a prebuilt test binary runs
/// away from the checkout it was built in (tools/gpu_check.sh).
pub fn fixture(name: &str) -> PathBuf {
    std::env::var_os("ENGINE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join(name)
}

pub fn gguf_fixture(name: &str) -> PathBuf {
    fixture("gguf").join(name)
}

/// A reference implementation's logits for a fixture's input ids.
pub struct ReferenceLogits {
    pub input_ids: Vec<u32>,
    /// [T, vocab]
    pub logits: Vec<Vec<f32>>,
}

/// The `input_ids` and `logits` of a reference file (tools/make_golden.py and the
/// tools/gguf_convert scripts write them).
pub fn reference_logits(path: &std::path::Path) -> ReferenceLogits {
    let t: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    ReferenceLogits {
        input_ids: t["input_ids"]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect(),
        logits: t["logits"].to_vec2::<f32>().unwrap(),
    }
}

/// Loaded normally, a Q8_0 file's weights stay Q8_0 and meet inputs rounded to 8 bits per block
/// of 32, as llama.cpp multiplies them. That second rounding is the same size as the weights'
/// own, which moved the lite fixture's logits by 0.29 (gguf.rs): the bar for any position. And
/// per position, typically, we must stay as close to torch on the same weights as llama.cpp
/// itself does (its logits for this file: tools/gguf_convert/llama_cpp_logits.py).
pub const Q8_0_IN_PLACE_TOLERANCE: f32 = 0.29;

/// A GGUF file's weights all handed out dense (dequantized to f32), so a model built from them
/// computes exactly what torch computes on the same dequantized weights.
pub struct DenseOnly(pub engine::gguf::GgufWeights);

impl engine::weights::WeightSource for DenseOnly {
    fn tensor(&self, name: &str, shape: &[usize]) -> engine::Result<candle_core::Tensor> {
        self.0.tensor(name, shape)
    }

    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// The model a GGUF file holds, every weight dequantized to f32 (see [`DenseOnly`]).
pub fn dense_model(path: &std::path::Path) -> Model {
    let (config, weights) = engine::gguf::open_weights(path).unwrap();
    let device = candle_core::Device::Cpu;
    Model::load(
        config,
        &DenseOnly(weights),
        candle_core::DType::F32,
        &device,
    )
    .unwrap()
}

/// The median over positions of each position's largest logit error.
pub fn median_row_error(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> f32 {
    let mut rows: Vec<f32> = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| max_abs_error(a, b))
        .collect();
    rows.sort_by(f32::total_cmp);
    rows[rows.len() / 2]
}

#[derive(Deserialize)]
pub struct Case {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub suffix: String,
    #[serde(default)]
    pub system: String,
    #[serde(default)]
    pub user: String,
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub output_text: String,
    pub ended_with_eos: bool,
}

#[derive(Deserialize)]
pub struct Reference {
    pub fim: Case,
    pub chat: Case,
}

pub fn reference(name: &str) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("generation.json")).unwrap())
        .unwrap()
}

pub fn engine(name: &str) -> Engine {
    Engine::load(&fixture(name), &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn fim_prompt(case: &Case) -> Prompt {
    Prompt::fill_in_middle(&[], &case.prefix, &case.suffix)
}

pub fn chat_prompt(case: &Case) -> Prompt {
    Prompt::chat(Some(&case.system), &case.user)
}

pub fn request(prompt: Prompt, max_new_tokens: usize) -> Request {
    Request::new(PromptInput::Prompt(prompt), max_new_tokens)
}

pub fn long_running(engine: &Engine, key: Option<&str>) -> engine::Generation {
    let r = reference("lite");
    let mut req = request(fim_prompt(&r.fim), 1_000_000);
    req.supersedes = key.map(str::to_string);
    let mut generation = engine.submit(req);
    while !matches!(generation.blocking_next(), Some(GenerationEvent::Text(_))) {}
    generation
}

pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The largest |a - b| over two rows of logits; NaN when either holds a NaN (so a tolerance
/// check fails instead of skipping it, as `f32::max` would).
pub fn max_abs_error(a: &[f32], b: &[f32]) -> f32 {
    kernels::test_values::worst_and_largest(a, b).0
}

/// `prompt` followed by `model`'s greedy choices (argmax of each step's logits, decoded on one
/// cache) until the sequence holds `total` ids.
pub fn greedy_continuation(model: &Model, prompt: &[u32], total: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut sequence = prompt.to_vec();
    let mut input = sequence.clone();
    while sequence.len() < total {
        let logits = model.forward(&input, &mut cache, Logits::Last).unwrap();
        let next = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        sequence.push(next);
        input = vec![next];
    }
    sequence
}

/// Every position's logits of `ids` run as one prompt.
pub fn all_logits(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let logits = model.forward(ids, &mut cache, Logits::All).unwrap();
    logits.to_vec2::<f32>().unwrap()
}

/// Every position's logits of `ids` decoded one token at a time.
pub fn token_by_token_logits(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    ids.iter()
        .map(|&id| {
            let logits = model.forward(&[id], &mut cache, Logits::Last).unwrap();
            logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

/// The largest |ours - reference| over all rows.
pub fn max_error(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "row count");
    ours.iter()
        .zip(reference)
        .map(|(a, b)| max_abs_error(a, b))
        .fold(
            0.0,
            |worst, e| if e.is_nan() || e > worst { e } else { worst },
        )
}

//! The shipped tiny model (models/tiny-coder) against transformers' logits on held-out code
//! (made by tools/train_tiny/golden.py): every sample at every kept position, the same through
//! token-by-token decoding, the fill-in-the-middle prompt our tokenizer builds, and the greedy
//! continuation transformers chose.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use engine::{LoadOptions, Logits, Model, Prompt, TextTokenizer, load_checkpoint};
use support::{greedy_continuation, max_abs_error};

mod support;

/// The bar for the trained checkpoint in f32.
const TOLERANCE: f32 = 1e-3;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-coder")
}

struct Reference {
    input_ids: Vec<Vec<u32>>,
    positions: Vec<usize>,
    /// [sample][position][vocab]
    logits: Vec<Vec<Vec<f32>>>,
    fim_prefix: String,
    fim_suffix: String,
    greedy_ids: Vec<u32>,
    prompt_len: usize,
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-coder/reference.safetensors");
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ids = |t: &Tensor| -> Vec<u32> {
        t.to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    };
    let text = |t: &Tensor| String::from_utf8(t.to_vec1::<u8>().unwrap()).unwrap();
    let samples = t["input_ids"].dim(0).unwrap();
    Reference {
        input_ids: (0..samples)
            .map(|s| ids(&t["input_ids"].get(s).unwrap()))
            .collect(),
        positions: ids(&t["positions"])
            .into_iter()
            .map(|p| p as usize)
            .collect(),
        logits: t["logits"].to_vec3::<f32>().unwrap(),
        fim_prefix: text(&t["fim_prefix"]),
        fim_suffix: text(&t["fim_suffix"]),
        greedy_ids: ids(&t["greedy_ids"]),
        prompt_len: t["prompt_len"].to_vec1::<i64>().unwrap()[0] as usize,
    }
}

fn tiny_coder() -> Model {
    // The weights are f16 on disk; the comparison runs in f32 like the reference.
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(candle_core::DType::F32),
    };
    load_checkpoint(&model_dir(), &options).unwrap_or_else(|e| panic!("models/tiny-coder: {e}"))
}

/// Checks every kept row and returns the largest error (printed for the record).
fn assert_rows_close(what: &str, ours: &[Vec<f32>], reference: &[Vec<f32>]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "{what}: rows");
    let mut worst = 0f32;
    for (row, (a, b)) in ours.iter().zip(reference).enumerate() {
        let error = max_abs_error(a, b);
        assert!(
            error <= TOLERANCE,
            "{what}, kept row {row}: max abs error {error:e} exceeds {TOLERANCE:e}"
        );
        worst = worst.max(error);
    }
    worst
}

fn kept_rows(all: &Tensor, positions: &[usize]) -> Vec<Vec<f32>> {
    let all = all.to_vec2::<f32>().unwrap();
    positions.iter().map(|&p| all[p].clone()).collect()
}

#[test]
fn held_out_samples_match_transformers() {
    let model = tiny_coder();
    let r = reference();
    for (sample, ids) in r.input_ids.iter().enumerate() {
        let mut cache = model.new_cache();
        let logits = model.forward(ids, &mut cache, Logits::All).unwrap();
        let error = assert_rows_close(
            &format!("sample {sample}"),
            &kept_rows(&logits, &r.positions),
            &r.logits[sample],
        );
        println!("sample {sample}: max abs error {error:e}");
    }
}

#[test]
fn token_by_token_decoding_matches_too() {
    let model = tiny_coder();
    let r = reference();
    let ids = &r.input_ids[1];
    let mut cache = model.new_cache();
    let mut rows = Vec::new();
    for &id in ids {
        let logits = model.forward(&[id], &mut cache, Logits::Last).unwrap();
        rows.push(logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
    }
    let kept: Vec<Vec<f32>> = r.positions.iter().map(|&p| rows[p].clone()).collect();
    let error = assert_rows_close("token by token", &kept, &r.logits[1]);
    println!("token by token: max abs error {error:e}");
}

#[test]
fn our_fill_in_the_middle_prompt_and_greedy_continuation_match() {
    let model = tiny_coder();
    let r = reference();
    let tokenizer = TextTokenizer::from_dir(&model_dir(), model.config().vocab_size).unwrap();
    let prompt = Prompt::fill_in_middle(&[], &r.fim_prefix, &r.fim_suffix);
    let ids = tokenizer.encode_prompt(&prompt).unwrap();
    assert_eq!(
        ids,
        r.greedy_ids[..r.prompt_len],
        "the FIM prompt's ids differ from the Python tokenizer's"
    );
    let sequence = greedy_continuation(&model, &ids, r.greedy_ids.len());
    assert_eq!(
        sequence, r.greedy_ids,
        "greedy continuation differs from transformers"
    );
}

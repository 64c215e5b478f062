//! The GGUF writer and the synthetic Lite-shaped files: what is written reads back the same
//! through the engine's own reader (metadata of every type, tensors, alignment, the config, the
//! types llama-quantize would choose, the tokenizer), and the model it holds runs.
//!
//! Optionally, llama.cpp loads the same file: set LLAMA_VENV to a virtualenv with
//! llama-cpp-python (benches/llama_cpp_peer.sh makes one); without it that test says it skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::gguf::writer::{GgufWriter, TensorSpec};
use engine::gguf::{self, GgufFile, MetadataValue};
use engine::synthetic::{SyntheticQuant, lite_small_config, write_synthetic_gguf};
use engine::{LoadOptions, Logits, ModelConfig, load_checkpoint};
use kernels::quant::GgmlType;

mod support;

fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

fn every_metadata_type() -> Vec<(String, MetadataValue)> {
    use MetadataValue as V;
    let entries = [
        ("u8", V::U8(200)),
        ("i8", V::I8(-100)),
        ("u16", V::U16(60_000)),
        ("i16", V::I16(-30_000)),
        ("u32", V::U32(4_000_000_000)),
        ("i32", V::I32(-2_000_000_000)),
        ("u64", V::U64(u64::MAX - 1)),
        ("i64", V::I64(i64::MIN + 1)),
        ("f32", V::F32(0.1)),
        ("f64", V::F64(-1e300)),
        ("bool", V::Bool(true)),
        ("string", V::String("ĠΩ\n".into())),
        ("array", V::Array(vec![V::I32(3), V::I32(-4)])),
        (
            "nested",
            V::Array(vec![
                V::Array(vec![V::String("a".into())]),
                V::Array(vec![V::String("b".into()), V::String("".into())]),
            ]),
        ),
        // Not the default: tensors must land on 64-byte boundaries.
        ("general.alignment", V::U32(64)),
    ];
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[test]
fn the_writer_round_trips_every_metadata_type_and_aligns_the_data() {
    let metadata = every_metadata_type();
    let tensors = [
        TensorSpec::new("odd.f32", &[3], GgmlType::F32),
        TensorSpec::new("q8.blocks", &[2, 64], GgmlType::Q8_0),
        TensorSpec::new("k.blocks", &[3, 1, 256], GgmlType::Q4K),
    ];
    let (_dir, path) = temp_path("round-trip.gguf");
    let mut writer = GgufWriter::create(&path, &metadata, &tensors).unwrap();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let len = t.byte_len().unwrap() as usize;
            (0..len).map(|b| (b * 7 + i) as u8).collect()
        })
        .collect();
    for bytes in &data {
        // In uneven pieces, as a streaming caller would.
        let (first, rest) = bytes.split_at(bytes.len() / 3);
        writer.write_tensor_data(first).unwrap();
        writer.write_tensor_data(rest).unwrap();
    }
    assert_eq!(writer.next_tensor(), None);
    writer.finish().unwrap();

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    for (key, value) in &metadata {
        assert_eq!(file.metadata(key), Some(value), "{key}");
    }
    assert_eq!(file.metadata_keys().count(), metadata.len());
    let data_start = file.tensors()[0].file_range().start;
    for ((spec, bytes), info) in tensors.iter().zip(&data).zip(file.tensors()) {
        assert_eq!(info.name(), spec.name);
        assert_eq!(info.dims(), spec.dims.as_slice());
        assert_eq!(info.tensor_type(), spec.ty);
        assert_eq!(file.tensor_bytes(info), bytes.as_slice(), "{}", spec.name);
        assert_eq!(
            (info.file_range().start - data_start) % 64,
            0,
            "{}",
            spec.name
        );
    }
    assert_eq!(data_start % 64, 0);
}

fn write_error(metadata: &[(String, MetadataValue)], tensors: &[TensorSpec]) -> String {
    match GgufWriter::new(Vec::new(), metadata, tensors) {
        Ok(_) => panic!("written but should not have been"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_writer_refuses_what_gguf_cannot_say() {
    use MetadataValue as V;
    let entry = |key: &str, value| vec![(key.to_string(), value)];
    assert!(
        write_error(&entry("empty", V::Array(vec![])), &[]).contains("`empty` is an empty array")
    );
    assert!(
        write_error(&entry("mixed", V::Array(vec![V::U8(1), V::I8(1)])), &[])
            .contains("`mixed` mixes uint8 and int8 elements")
    );
    assert!(
        write_error(&entry("general.alignment", V::U32(48)), &[])
            .contains("must be a power of two")
    );
    let mut twice = entry("k", V::U8(1));
    twice.extend(entry("k", V::U8(2)));
    assert!(write_error(&twice, &[]).contains("`k` appears twice"));
    let partial = TensorSpec::new("t", &[2, 40], GgmlType::Q8_0);
    assert!(
        write_error(&[], &[partial])
            .contains("`t` (Q8_0 [40, 2]) does not hold whole Q8_0 blocks of 32")
    );

    let tensors = [
        TensorSpec::new("a", &[8], GgmlType::F32),
        TensorSpec::new("b", &[8], GgmlType::F16),
    ];
    let mut writer = GgufWriter::new(Vec::new(), &[], &tensors).unwrap();
    let too_much = writer.write_tensor_data(&[0; 33]).unwrap_err().to_string();
    assert!(
        too_much.contains("33 bytes for tensor `a`, which has only 32 of its 32 bytes left"),
        "{too_much}"
    );
    writer.write_tensor_data(&[0; 32]).unwrap();
    assert_eq!(writer.next_tensor(), Some("b"));
    let missing = writer.finish().unwrap_err().to_string();
    assert!(
        missing.contains("tensor `b` and 0 after it have no data"),
        "{missing}"
    );
}

/// What reading a GGUF file gives back for `config`: its floats went through f32, and YaRN's
/// mscale through llama.cpp's log multiplier (0.1 * mscale_all_dim).
fn as_gguf_stores_it(config: &ModelConfig) -> ModelConfig {
    let f32_round = |x: f64| x as f32 as f64;
    let mut c = config.clone();
    c.rms_norm_eps = f32_round(c.rms_norm_eps);
    c.rope.theta = f32_round(c.rope.theta);
    if let Some(yarn) = c.rope.yarn.as_mut() {
        yarn.factor = f32_round(yarn.factor);
        yarn.beta_fast = f32_round(yarn.beta_fast);
        yarn.beta_slow = f32_round(yarn.beta_slow);
        let stored = |m: f64| ((0.1 * m) as f32 / 0.1f32) as f64;
        yarn.mscale = yarn.mscale.map(stored);
        yarn.mscale_all_dim = yarn.mscale_all_dim.map(stored);
    }
    if let Some(moe) = c.moe.as_mut() {
        moe.routed_scaling_factor = f32_round(moe.routed_scaling_factor);
    }
    c
}

fn synthetic_file(layers: usize, quant: SyntheticQuant) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = temp_path("synthetic.gguf");
    write_synthetic_gguf(&path, &lite_small_config(layers), quant, 0).unwrap();
    (dir, path)
}

/// A synthetic lite-small file of `layers` layers whose config reads back as written and whose
/// `general.file_type` is llama.cpp's number for the mix.
fn synthetic_file_read_back(
    layers: usize,
    quant: SyntheticQuant,
    file_type: u32,
) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = synthetic_file(layers, quant);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        gguf::model_config(&file).unwrap(),
        as_gguf_stores_it(&lite_small_config(layers))
    );
    assert_eq!(
        file.metadata("general.file_type"),
        Some(&MetadataValue::U32(file_type))
    );
    (dir, path)
}

fn tensor_types(path: &Path) -> BTreeMap<String, String> {
    let file = GgufFile::open(path).unwrap();
    file.tensors()
        .iter()
        .map(|t| (t.name().to_string(), t.tensor_type().name().to_string()))
        .collect()
}

/// Runs the file's model on a short prompt: every logit finite, and of a size a trained model's
/// logits have (random weights with the wrong scales give zeros or overflow).
fn assert_the_model_runs(path: &Path) {
    let model = load_checkpoint(path, &LoadOptions::default()).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 512).collect();
    let mut cache = model.new_cache();
    let logits = model.forward(&ids, &mut cache, Logits::All).unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    assert_eq!(rows.len(), ids.len());
    for row in &rows {
        assert!(row.iter().all(|x| x.is_finite()));
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let std = (row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n).sqrt();
        assert!((0.1..10.0).contains(&std), "logit spread {std}");
    }
}

#[test]
fn a_q8_0_file_reads_back_as_written_and_runs() {
    let (_dir, path) = synthetic_file_read_back(2, SyntheticQuant::Q8_0, 7);
    for (name, ty) in tensor_types(&path) {
        // Norms and the router stay F32 in every llama-quantize file; the rest is Q8_0 (every
        // row of this shape is whole 32-value blocks).
        let expected = if name.ends_with("norm.weight") || name.contains("ffn_gate_inp") {
            "F32"
        } else {
            "Q8_0"
        };
        assert_eq!(ty, expected, "{name}");
    }
    assert_the_model_runs(&path);
}

#[test]
fn a_q4_k_m_file_has_the_types_llama_quantize_gives_and_runs() {
    let (_dir, path) = synthetic_file_read_back(3, SyntheticQuant::Q4KM, 15);
    // 3 layers: llama-quantize gives ffn_down more bits in layer 2 only (the last eighth).
    // Rows of 32 (nope), 128 (expert width) and 320 (dense width) values are not whole Q4_K
    // blocks: Q4_K falls back to Q5_0 and Q6_K to Q8_0, as in Lite's files.
    let attention = [
        ("attn_norm", "F32"),
        ("attn_q", "Q4_K"),
        ("attn_kv_a_mqa", "Q4_K"),
        ("attn_kv_a_norm", "F32"),
        ("attn_k_b", "Q5_0"),
        ("attn_v_b", "Q4_K"),
        ("attn_output", "Q4_K"),
        ("ffn_norm", "F32"),
    ];
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut expect = |name: String, ty: &str| expected.insert(name, ty.to_string());
    for layer in 0..3 {
        for (part, ty) in attention {
            expect(format!("blk.{layer}.{part}.weight"), ty);
        }
    }
    for (part, ty) in [
        ("ffn_gate", "Q4_K"),
        ("ffn_up", "Q4_K"),
        ("ffn_down", "Q5_0"),
    ] {
        expect(format!("blk.0.{part}.weight"), ty);
    }
    for (layer, down_exps, down_shexp) in [(1, "Q5_0", "Q4_K"), (2, "Q8_0", "Q6_K")] {
        for (part, ty) in [
            ("ffn_gate_inp", "F32"),
            ("ffn_gate_exps", "Q4_K"),
            ("ffn_up_exps", "Q4_K"),
            ("ffn_down_exps", down_exps),
            ("ffn_gate_shexp", "Q4_K"),
            ("ffn_up_shexp", "Q4_K"),
            ("ffn_down_shexp", down_shexp),
        ] {
            expect(format!("blk.{layer}.{part}.weight"), ty);
        }
    }
    expect("token_embd.weight".into(), "Q4_K");
    expect("output_norm.weight".into(), "F32");
    expect("output.weight".into(), "Q6_K");
    assert_eq!(tensor_types(&path), expected);
    assert_the_model_runs(&path);
}

#[test]
fn the_bytes_depend_on_the_seed_only() {
    let config = lite_small_config(2);
    let (_dir, path) = temp_path("a.gguf");
    let write = |seed| {
        write_synthetic_gguf(&path, &config, SyntheticQuant::Q4KM, seed).unwrap();
        std::fs::read(&path).unwrap()
    };
    let first = write(1);
    assert_eq!(write(1), first);
    assert_ne!(write(2), first);
}

#[test]
fn the_vocabulary_encodes_and_decodes_text() {
    let (_dir, path) = synthetic_file(1, SyntheticQuant::Q8_0);
    let model = gguf::open(&path).unwrap();
    let tokenizer = model.tokenizer;
    let text = "fn the_answer() {\n    42 // ünïcode\n}";
    let ids = tokenizer.encode_text(text).unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    // The merges apply: " the" is one token, four spaces one more.
    assert!(ids.len() < text.len(), "{} ids", ids.len());
    let special = tokenizer.special_ids();
    assert!(special.bos.is_some() && special.eos.is_some() && special.fim.is_some());
    // Every id decodes, fillers included.
    assert_eq!(tokenizer.decode(&[511]).unwrap(), "[FILLER511]");
}

/// llama.cpp's logits for `ids` on the file at `path`, one row per position.
fn llama_cpp_logits(python: &Path, path: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let script = r#"
import json, sys
import numpy as np
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, logits_all=True, verbose=False)
llm.eval(json.loads(sys.argv[2]))
print(json.dumps(np.array(llm.scores[: llm.n_tokens]).tolist()))
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script])
        .arg(path)
        .arg(format!("{ids:?}"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        output.status.success(),
        "llama.cpp could not run {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let mean = |x: &[f32]| x.iter().sum::<f32>() / x.len() as f32;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    ab / (aa * bb).sqrt()
}

/// llama.cpp's own loader and forward pass on the synthetic files, when a virtualenv with
/// llama-cpp-python is given: it loads them (so the metadata, names, shapes and tokenizer are
/// what llama.cpp expects), and computes logits like ours (so the block layouts and the split
/// kv_b mean the same to both).
#[test]
fn llama_cpp_runs_the_synthetic_files_as_we_do() {
    let Some(venv) = std::env::var_os("LLAMA_VENV") else {
        eprintln!("skipped: set LLAMA_VENV to a virtualenv with llama-cpp-python to run it");
        return;
    };
    let python = Path::new(&venv).join("bin/python");
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 512).collect();
    for quant in [SyntheticQuant::Q8_0, SyntheticQuant::Q4KM] {
        let (_dir, path) = synthetic_file(3, quant);
        let theirs = llama_cpp_logits(&python, &path, &ids);
        let model = load_checkpoint(&path, &LoadOptions::default()).unwrap();
        let mut cache = model.new_cache();
        let ours = model.forward(&ids, &mut cache, Logits::All).unwrap();
        let ours = ours.to_vec2::<f32>().unwrap();
        let correlations: Vec<f32> = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| correlation(a, b))
            .collect();
        let worst_error = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| support::max_abs_error(a, b))
            .fold(0f32, f32::max);
        eprintln!(
            "{quant}: correlation per position {correlations:?}, max |ours - llama.cpp| {worst_error}"
        );
        assert!(
            correlations.iter().all(|&c| c > 0.999),
            "{quant}: {correlations:?}"
        );
    }
}

/// Loaded on the CPU, a quantized file's weights stay as the file stores them: resident weight
/// bytes are the file's tensor bytes (the token embedding too: its rows are converted per
/// lookup), plus only MLA's kv_b (rebuilt in f32 from the halves these files split it into)
/// and its per-head W_UK^T and W_UV in Q8_0 (34 bytes per 32 values).
#[test]
fn quantized_weights_stay_in_the_files_format_in_memory() {
    for quant in [SyntheticQuant::Q8_0, SyntheticQuant::Q4KM] {
        let (_dir, path) = synthetic_file(2, quant);
        let file = GgufFile::open(&path).unwrap();
        let stored: usize = file.tensors().iter().map(|t| t.byte_len()).sum();
        let model = load_checkpoint(&path, &LoadOptions::default()).unwrap();
        let c = model.config();
        let kv_b_values = c.num_hidden_layers
            * c.num_attention_heads
            * (c.qk_nope_head_dim + c.v_head_dim)
            * c.kv_lora_rank;
        // kv_b rebuilt in f32 for the prompt's expanded form; the absorbed form multiplies the
        // file's own attn_k_b / attn_v_b blocks, already counted in `stored`.
        let allowed = stored + kv_b_values * 4;
        assert!(
            model.weight_bytes() <= allowed,
            "{quant:?}: {} bytes resident, {stored} stored, at most {allowed} expected",
            model.weight_bytes()
        );
    }
}

/// A decode step takes another road through MLA than the prompt does: the file's own attn_k_b
/// and attn_v_b blocks per head with 8-bit inputs (absorbed form, as llama.cpp multiplies them)
/// against kv_b rebuilt from them in f32 and expanded (the prompt's form, which is compared with
/// llama.cpp above), and the fused expert pass. Random weights make attention nearly one-hot, so
/// any rounding moves some logits far: measured on these files, the last position's correlation
/// is 0.9985 (Q8_0) and 0.9995 (Q4_K_M), its largest error 5.6% and 2.5% of the largest logit;
/// with the halves rebuilt in f32 it was 0.99997 and 0.8%. A wrong head layout or a dropped term
/// gives correlations far below that.
#[test]
fn decoding_a_token_at_a_time_gives_the_prompts_logits() {
    let ids: Vec<u32> = (0..12).map(|i| (i * 53 + 7) % 512).collect();
    for quant in [SyntheticQuant::Q8_0, SyntheticQuant::Q4KM] {
        let (_dir, path) = synthetic_file(3, quant);
        let model = load_checkpoint(&path, &LoadOptions::default()).unwrap();
        let prompt = support::all_logits(&model, &ids);
        let one_by_one = support::token_by_token_logits(&model, &ids);
        let correlations: Vec<f32> = prompt
            .iter()
            .zip(&one_by_one)
            .map(|(a, b)| correlation(a, b))
            .collect();
        let scale = prompt.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let error = support::max_error(&one_by_one, &prompt);
        eprintln!(
            "{quant}: token by token vs prompt: correlation per position {correlations:?}, \
             max error {error} (largest logit {scale})"
        );
        assert!(
            correlations.iter().all(|&c| c > 0.995),
            "{quant}: {correlations:?}"
        );
        assert!(error <= 0.1 * scale, "{quant}: {error} of {scale}");
    }
}

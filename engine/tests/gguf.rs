//! GGUF files made by llama.cpp's own converter from our fixtures (tests/fixtures/gguf, see its
//! README): the logits against transformers', every weight against the safetensors it came from,
//! the config against config.json, the older and fused layouts, the engine end to end. Broken
//! files and the tokenizer have their own modules.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use engine::gguf::{self, GgufWeights};
use engine::weights::{SafetensorsWeights, WeightSource};
use engine::{
    AttentionForm, Engine, GenerationEvent, LoadOptions, Model, ModelConfig, PromptInput, Request,
    load_checkpoint,
};
use support::{
    DenseOnly, Q8_0_IN_PLACE_TOLERANCE, ReferenceLogits, all_logits, gguf_fixture, max_abs_error,
    max_error, median_row_error, reference_logits, token_by_token_logits,
};

#[path = "gguf/errors.rs"]
mod errors;
mod support;
#[path = "gguf/tokenizer.rs"]
mod tokenizer;
#[path = "gguf/writer.rs"]
mod writer;

/// golden.rs's bar for f32 against transformers.
const F32_TOLERANCE: f32 = 1e-4;

/// transformers' logits for the lite fixture (tools/make_golden.py).
fn lite_reference() -> ReferenceLogits {
    reference_logits(&support::fixture("lite").join("reference.safetensors"))
}

/// transformers' logits for the weights of a GGUF file as gguf-py dequantizes them, its YaRN
/// read as llama.cpp reads it (tools/gguf_convert/dequantized_reference.py).
fn torch_reference(name: &str) -> ReferenceLogits {
    reference_logits(&gguf_fixture(name))
}

fn load(name: &str) -> Model {
    let path = gguf_fixture(name);
    load_checkpoint(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn f32_gguf_logits_match_transformers() {
    let r = lite_reference();
    let mut model = load("lite-f32.gguf");
    let full = max_error(&all_logits(&model, &r.input_ids), &r.logits);
    let decode = max_error(&token_by_token_logits(&model, &r.input_ids), &r.logits);
    println!("lite-f32.gguf: max abs error {full:e} (prefill), {decode:e} (token by token)");
    assert!(full <= F32_TOLERANCE, "prefill: {full:e}");
    assert!(decode <= F32_TOLERANCE, "token by token: {decode:e}");
    for form in [AttentionForm::Expanded, AttentionForm::Absorbed] {
        model.set_attention_form(form);
        let error = max_error(&all_logits(&model, &r.input_ids), &r.logits);
        assert!(error <= F32_TOLERANCE, "{form:?}: {error:e}");
    }
}

/// Q8_0 moves each weight by up to 1/254 of its block's largest; through this random model
/// (a peaked router, so a nudged hidden state can pick another expert) that moves the logits by
/// 0.29 of 3.8, in torch exactly as here. So the file's weights, read and multiplied densely,
/// are held to the f32 bar against torch run on the same dequantized weights, which is what
/// checks the reading; the distance to the unquantized logits is printed for the record.
#[test]
fn q8_0_gguf_logits_match_transformers_on_the_same_weights() {
    let same_weights = torch_reference("lite-q8_0-reference.safetensors");
    let unquantized = lite_reference();
    assert_eq!(same_weights.input_ids, unquantized.input_ids);
    let opened = gguf::open_weights(&gguf_fixture("lite-q8_0.gguf")).unwrap();
    let model = Model::load(opened.0, &DenseOnly(opened.1), DType::F32, &Device::Cpu).unwrap();
    let ids = &same_weights.input_ids;
    let full = all_logits(&model, ids);
    let error = max_error(&full, &same_weights.logits);
    let decode = max_error(&token_by_token_logits(&model, ids), &same_weights.logits);
    println!(
        "lite-q8_0.gguf dense: max abs error {error:e} (prefill), {decode:e} (token by token) \
         against torch on the dequantized weights; {:e} from the unquantized logits",
        max_error(&full, &unquantized.logits)
    );
    assert!(error <= F32_TOLERANCE, "prefill: {error:e}");
    assert!(decode <= F32_TOLERANCE, "token by token: {decode:e}");
}

/// The GPU's road with the file's blocks kept as they are (what a GPU load of a quantized file
/// does): every block-format projection and stacked expert is multiplied by the GPU kernels'
/// products, here through their CPU reference, which decode each value exactly as ggml does and
/// sum in f32. So the logits meet torch on the same dequantized weights at the f32 bar.
#[test]
fn q8_0_gguf_on_the_gpu_road_keeps_its_blocks_and_matches_transformers() {
    let same_weights = torch_reference("lite-q8_0-reference.safetensors");
    let mut model = load("lite-q8_0.gguf");
    let road = model.take_the_device_road().unwrap();
    let (stacked, formats) = (road.stacked_moe_layers, model.stacked_expert_formats());
    println!(
        "{} projections in device blocks; {stacked} MoE layers stacked as {formats:?}",
        road.projections_in_blocks
    );
    assert!(road.projections_in_blocks > 0);
    assert!(stacked > 0 && formats.len() == stacked);
    // This file's expert gate/up are Q8_0 and its down projections F16 (read as f32).
    assert!(formats.iter().all(|&f| f == ("Q8_0", "F32")), "{formats:?}");
    let ids = &same_weights.input_ids;
    let full = max_error(&all_logits(&model, ids), &same_weights.logits);
    let decode = max_error(&token_by_token_logits(&model, ids), &same_weights.logits);
    println!(
        "lite-q8_0.gguf on the GPU road: max abs error {full:e} (prefill), {decode:e} (token by \
         token) against torch on the dequantized weights"
    );
    assert!(full <= F32_TOLERANCE, "prefill: {full:e}");
    assert!(decode <= F32_TOLERANCE, "token by token: {decode:e}");
}

#[test]
fn q8_0_gguf_multiplied_in_place_is_as_close_to_torch_as_llama_cpp_is() {
    let same_weights = torch_reference("lite-q8_0-reference.safetensors");
    let llama_cpp = torch_reference("lite-q8_0-llama-cpp.safetensors");
    let model = load("lite-q8_0.gguf");
    let ids = &same_weights.input_ids;
    assert_eq!(llama_cpp.input_ids, *ids);
    let ours = all_logits(&model, ids);
    let error = max_error(&ours, &same_weights.logits);
    let one_by_one = token_by_token_logits(&model, ids);
    let decode = max_error(&one_by_one, &same_weights.logits);
    // Decoding a token at a time (absorbed attention, one-row products) gives the prompt's
    // logits (expanded attention, batched products) up to float rounding. (This file's down
    // projections are F16, so its MoE layers do not take the fused decode, and its head sizes
    // are not whole Q8_0 blocks, so its W_UK / W_UV stay dense; gguf_synthetic.rs checks both
    // quantized paths.)
    let paths = max_error(&one_by_one, &ours);
    println!("token by token vs prefill: {paths:e}");
    if engine::InstructionSet::tiles_in_use() {
        // The prompt's products ran on the AMX tiles in bf16 and the decode's in int8: the two
        // agree only as closely as each agrees with torch, checked below (gguf_tiles.rs checks
        // the tiles' road on its own).
        println!("the prompt's products ran on the AMX tiles");
    } else {
        assert!(paths <= F32_TOLERANCE, "decode vs prefill: {paths:e}");
    }
    let ours_typical = median_row_error(&ours, &same_weights.logits);
    let theirs_typical = median_row_error(&llama_cpp.logits, &same_weights.logits);
    println!(
        "lite-q8_0.gguf in place against torch on the dequantized weights: max abs error \
         {error:e} (prefill), {decode:e} (token by token), median per position {ours_typical:e}; \
         llama.cpp's: max {:e}, median {theirs_typical:e}; ours against llama.cpp's: max {:e}",
        max_error(&llama_cpp.logits, &same_weights.logits),
        max_error(&ours, &llama_cpp.logits),
    );
    assert!(error <= Q8_0_IN_PLACE_TOLERANCE, "prefill: {error:e}");
    assert!(
        decode <= Q8_0_IN_PLACE_TOLERANCE,
        "token by token: {decode:e}"
    );
    assert!(
        ours_typical <= 1.5 * theirs_typical,
        "median {ours_typical:e} vs llama.cpp's {theirs_typical:e}"
    );
}

/// The V2 shape (q_lora path, group-limited routing). Its config.json has mscale 1.0 beside
/// mscale_all_dim 0.5, which GGUF cannot say; the reference reads the file as llama.cpp does
/// (mscale = mscale_all_dim).
#[test]
fn v2_gguf_logits_match_transformers_reading_the_file_as_llama_cpp_does() {
    let reference = torch_reference("v2-f16-reference.safetensors");
    let model = load("v2-f16.gguf");
    let full = max_error(&all_logits(&model, &reference.input_ids), &reference.logits);
    let decode = max_error(
        &token_by_token_logits(&model, &reference.input_ids),
        &reference.logits,
    );
    println!("v2-f16.gguf: max abs error {full:e} (prefill), {decode:e} (token by token)");
    assert!(full <= F32_TOLERANCE, "prefill: {full:e}");
    assert!(decode <= F32_TOLERANCE, "token by token: {decode:e}");
}

/// Every tensor of a fixture's safetensors, with its name and shape.
fn safetensors_tensors(dir: &Path) -> Vec<(String, Vec<usize>)> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            names.extend(tensors.into_iter().map(|(n, t)| (n, t.dims().to_vec())));
        }
    }
    names.sort();
    names
}

fn values(tensor: Tensor) -> Vec<f32> {
    tensor
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn gguf_weights(name: &str) -> GgufWeights {
    gguf::open_weights(&gguf_fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .1
}

#[test]
fn lossless_gguf_weights_equal_the_safetensors_they_came_from() {
    // lite in f32; v2 (q_lora, f16 weights) in f16: both lossless, so equal bit for bit.
    for (fixture, file) in [("lite", "lite-f32.gguf"), ("v2", "v2-f16.gguf")] {
        let dir = support::fixture(fixture);
        let hf = SafetensorsWeights::open_dir(&dir).unwrap();
        let gguf = gguf_weights(file);
        let tensors = safetensors_tensors(&dir);
        assert!(tensors.len() > 30, "{fixture}: {} tensors", tensors.len());
        for (name, shape) in tensors {
            assert!(gguf.contains(&name), "{file}: no {name}");
            let ours = values(gguf.tensor(&name, &shape).unwrap_or_else(|e| panic!("{e}")));
            let theirs = values(hf.tensor(&name, &shape).unwrap());
            assert!(ours == theirs, "{file}: {name} differs");
        }
    }
}

/// The most a Q8_0 value may differ from the value it was made from: half a step of the
/// block's scale (max/127), plus the scale's own rounding to f16 (2^-11 relative) times the
/// largest quantized value (127).
fn q8_0_bound(block: &[f32]) -> f32 {
    let step = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
    step * (0.5 + 127.0 / 2048.0)
}

/// Checks `ours` against `original` rounded to f16, naming the first difference.
fn assert_f16_rounding(name: &str, original: &[f32], ours: &[f32]) {
    for (i, (&x, &y)) in original.iter().zip(ours).enumerate() {
        assert_eq!(half::f16::from_f32(x).to_f32(), y, "{name}[{i}]");
    }
}

/// Checks each block of 32 of `ours` against the Q8_0 bound of the same block of `original`.
fn assert_q8_0_rounding(name: &str, original: &[f32], ours: &[f32]) {
    for (block, (a, b)) in original.chunks(32).zip(ours.chunks(32)).enumerate() {
        let (bound, error) = (q8_0_bound(a), max_abs_error(a, b));
        assert!(error <= bound, "{name} block {block}: {error} > {bound}");
    }
}

#[test]
fn q8_0_weights_are_their_f32_values_rounded_as_ggml_rounds() {
    let exact = gguf_weights("lite-f32.gguf");
    let quantized = gguf_weights("lite-q8_0.gguf");
    let mut q8_0_tensors = 0;
    for (name, shape) in safetensors_tensors(&support::fixture("lite")) {
        let original = values(exact.tensor(&name, &shape).unwrap());
        let ours = values(quantized.tensor(&name, &shape).unwrap());
        assert_eq!(ours.len(), original.len(), "{name}");
        let Some(raw) = quantized.raw(&name).unwrap() else {
            // kv_b, rebuilt per head from attn_k_b (rows of 16: F16) over attn_v_b (Q8_0):
            // rows of kv_lora = 32 values, 16 + 12 per head.
            assert!(name.ends_with("kv_b_proj.weight"), "{name}");
            for (row, (a, b)) in original.chunks(32).zip(ours.chunks(32)).enumerate() {
                let what = format!("{name} row {row}");
                if row % 28 < 16 {
                    assert_f16_rounding(&what, a, b);
                } else {
                    assert_q8_0_rounding(&what, a, b);
                }
            }
            continue;
        };
        match raw.ty.name() {
            "Q8_0" => {
                q8_0_tensors += 1;
                assert_q8_0_rounding(&name, &original, &ours);
            }
            // Rows that are not whole blocks of 32 fall back to F16.
            "F16" => assert_f16_rounding(&name, &original, &ours),
            "F32" => assert!(ours == original, "{name}"),
            other => panic!("{name}: unexpected {other}"),
        }
    }
    // Embeddings, output, q, kv_a, and the gate and up experts of two layers.
    assert!(q8_0_tensors >= 30, "only {q8_0_tensors} Q8_0 tensors");
}

#[test]
fn the_older_and_fused_layouts_hold_the_same_weights() {
    // lite-q8_0-rewritten.gguf: kv_b whole with the older head-size keys, gate and up experts
    // fused (tools/gguf_convert/rewrite_layouts.py).
    let split = gguf_weights("lite-q8_0.gguf");
    let rewritten = gguf_weights("lite-q8_0-rewritten.gguf");
    assert!(
        rewritten
            .file()
            .tensor_info("blk.1.attn_kv_b.weight")
            .is_some()
    );
    assert!(
        rewritten
            .file()
            .tensor_info("blk.1.ffn_gate_up_exps.weight")
            .is_some()
    );
    assert!(
        rewritten
            .file()
            .tensor_info("blk.1.ffn_gate_exps.weight")
            .is_none()
    );
    for (name, shape) in safetensors_tensors(&support::fixture("lite")) {
        let a = values(split.tensor(&name, &shape).unwrap());
        let b = values(rewritten.tensor(&name, &shape).unwrap());
        assert!(a == b, "{name} differs");
        if name.contains(".experts.") {
            // Quantized experts are sliced in place, in both layouts.
            let (a, b) = (split.raw(&name).unwrap(), rewritten.raw(&name).unwrap());
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(
                (a.ty, &a.shape, a.bytes),
                (b.ty, &b.shape, b.bytes),
                "{name}"
            );
        }
    }
    let kv_b = "model.layers.0.self_attn.kv_b_proj.weight";
    assert!(
        split.raw(kv_b).unwrap().is_none(),
        "rebuilt from attn_k_b and attn_v_b"
    );
    assert_eq!(
        rewritten.raw(kv_b).unwrap().unwrap().shape,
        [4 * (16 + 12), 32]
    );
    let r = lite_reference();
    let logits = |name| all_logits(&load(name), &r.input_ids);
    assert_eq!(
        max_error(
            &logits("lite-q8_0.gguf"),
            &logits("lite-q8_0-rewritten.gguf")
        ),
        0.0
    );
}

#[test]
fn raw_access_gives_the_stored_blocks_of_each_expert() {
    let weights = gguf_weights("lite-q8_0.gguf");
    let stacked = weights.raw_gguf("blk.1.ffn_up_exps.weight").unwrap();
    assert_eq!(stacked.ty.name(), "Q8_0");
    assert_eq!(stacked.shape, [8, 24, 64]);
    let row_bytes = stacked.ty.row_bytes(64).unwrap();
    for expert in [0, 5, 7] {
        let name = format!("model.layers.1.mlp.experts.{expert}.up_proj.weight");
        let raw = weights.raw(&name).unwrap().unwrap();
        assert_eq!(raw.shape, [24, 64]);
        let range = expert * 24 * row_bytes..(expert + 1) * 24 * row_bytes;
        assert_eq!(raw.bytes, &stacked.bytes[range.clone()]);
        // The same bytes through the shared mapping, as weights kept in place would hold them.
        let start = stacked.file_range.start;
        assert_eq!(raw.file_range, start + range.start..start + range.end);
        assert_eq!(
            &weights.shared_file().mapped()[raw.file_range.clone()],
            raw.bytes
        );
    }
    // The split halves of kv_b, in the converter's layouts.
    assert_eq!(
        weights.raw_gguf("blk.0.attn_k_b.weight").unwrap().shape,
        [4, 32, 16]
    );
    assert_eq!(
        weights.raw_gguf("blk.0.attn_v_b.weight").unwrap().shape,
        [4, 12, 32]
    );
}

/// Floats in GGUF metadata are f32: equal means equal after rounding to f32.
fn same(a: f64, b: f64) -> bool {
    a as f32 == b as f32
}

/// Field by field, naming the first that differs.
fn assert_same_config(gguf: &ModelConfig, json: &ModelConfig, what: &str) {
    let fields = [
        ("vocab_size", gguf.vocab_size, json.vocab_size),
        ("hidden_size", gguf.hidden_size, json.hidden_size),
        (
            "intermediate_size",
            gguf.intermediate_size,
            json.intermediate_size,
        ),
        (
            "num_hidden_layers",
            gguf.num_hidden_layers,
            json.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            gguf.num_attention_heads,
            json.num_attention_heads,
        ),
        ("kv_lora_rank", gguf.kv_lora_rank, json.kv_lora_rank),
        (
            "qk_nope_head_dim",
            gguf.qk_nope_head_dim,
            json.qk_nope_head_dim,
        ),
        (
            "qk_rope_head_dim",
            gguf.qk_rope_head_dim,
            json.qk_rope_head_dim,
        ),
        ("v_head_dim", gguf.v_head_dim, json.v_head_dim),
        (
            "max_position_embeddings",
            gguf.max_position_embeddings,
            json.max_position_embeddings,
        ),
    ];
    for (field, a, b) in fields {
        assert_eq!(a, b, "{what}: {field}");
    }
    assert_eq!(gguf.q_lora_rank, json.q_lora_rank, "{what}: q_lora_rank");
    assert_eq!(gguf.moe, json.moe, "{what}: moe");
    assert_eq!(
        (gguf.tie_word_embeddings, gguf.attention_bias, gguf.mlp_bias),
        (json.tie_word_embeddings, json.attention_bias, json.mlp_bias),
        "{what}: tie_word_embeddings, attention_bias, mlp_bias"
    );
    assert!(
        same(gguf.rms_norm_eps, json.rms_norm_eps),
        "{what}: rms_norm_eps"
    );
    assert!(same(gguf.rope.theta, json.rope.theta), "{what}: rope_theta");
    // What the YaRN parameters do: the cos/sin scale and the softmax scale.
    assert!(
        same(gguf.softmax_scale(), json.softmax_scale()),
        "{what}: softmax scale {} vs {}",
        gguf.softmax_scale(),
        json.softmax_scale()
    );
    match (&gguf.rope.yarn, &json.rope.yarn) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            assert!(same(a.factor, b.factor), "{what}: yarn factor");
            assert!(
                same(
                    a.original_max_position_embeddings,
                    b.original_max_position_embeddings
                ),
                "{what}: yarn original_max_position_embeddings"
            );
            assert!(same(a.beta_fast, b.beta_fast) && same(a.beta_slow, b.beta_slow));
            assert_eq!(a.truncate, b.truncate);
            assert!(
                same(a.cos_sin_scale(), b.cos_sin_scale()),
                "{what}: cos/sin scale {} vs {}",
                a.cos_sin_scale(),
                b.cos_sin_scale()
            );
        }
        (a, b) => panic!("{what}: yarn {a:?} vs {b:?}"),
    }
}

fn gguf_config(name: &str) -> ModelConfig {
    let file = gguf::GgufFile::open(&gguf_fixture(name)).unwrap();
    gguf::model_config(&file).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json_config(path: &Path) -> ModelConfig {
    ModelConfig::from_file(&path.join("config.json")).unwrap()
}

#[test]
fn config_from_gguf_equals_config_from_config_json() {
    let lite = json_config(&support::fixture("lite"));
    for name in [
        "lite-f32.gguf",
        "lite-q8_0.gguf",
        "lite-q8_0-rewritten.gguf",
    ] {
        assert_same_config(&gguf_config(name), &lite, name);
    }
    let tiny_coder =
        json_config(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-coder"));
    assert_same_config(
        &gguf_config("tiny-coder-vocab.gguf"),
        &tiny_coder,
        "tiny-coder",
    );

    // The v2 fixture's config has mscale 1.0 beside mscale_all_dim 0.5. GGUF keeps only
    // mscale_all_dim and llama.cpp takes mscale to equal it (true of every DeepSeek-V2
    // release), so cos/sin lose transformers' factor mscale(16, 1) / mscale(16, 0.5).
    let mut v2 = json_config(&support::fixture("v2"));
    let yarn = v2.rope.yarn.as_mut().unwrap();
    assert_eq!((yarn.mscale, yarn.mscale_all_dim), (Some(1.0), Some(0.5)));
    yarn.mscale = Some(0.5);
    assert_same_config(&gguf_config("v2-f16.gguf"), &v2, "v2");
}

#[test]
fn the_engine_runs_a_gguf_file_with_its_own_tokenizer() {
    let engine = Engine::load(&gguf_fixture("lite-f32.gguf"), &LoadOptions::default()).unwrap();
    let tokenizer = engine.tokenizer().unwrap();
    let special = tokenizer.special_ids();
    assert_eq!(
        (special.bos, special.eos, special.fim),
        (Some(0), Some(1), Some((3, 2, 4)))
    );
    // Greedy generation from transformers' prompt ids gives transformers' tokens and text.
    let reference = support::reference("lite");
    let case = &reference.fim;
    let request = Request::new(
        PromptInput::Tokens(case.prompt_ids.clone()),
        case.output_ids.len(),
    );
    let mut generation = engine.submit(request);
    let mut text = String::new();
    let stats = loop {
        match generation.blocking_next().expect("a Finished event") {
            GenerationEvent::Text(delta) => text.push_str(&delta),
            GenerationEvent::Finished(result) => break result.unwrap(),
        }
    };
    assert_eq!(stats.tokens, case.output_ids);
    assert_eq!(text, case.output_text);
}

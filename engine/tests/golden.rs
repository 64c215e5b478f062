//! The forward pass against transformers' own logits for the fixtures in tests/fixtures
//! (made by tools/make_golden.py): every position, every cache path, greedy decoding.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use engine::{AttentionForm, LatentCache, LoadOptions, Logits, Model, load_checkpoint};
use support::{greedy_continuation, max_abs_error};

mod support;

const FIXTURES: [&str; 3] = ["lite", "v2", "branches"];
const TOLERANCE: f32 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Golden {
    model: Model,
    input_ids: Vec<u32>,
    /// [T, vocab]
    logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
    prompt_len: usize,
}

fn ids(tensor: &Tensor) -> Vec<u32> {
    tensor
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

fn golden(name: &str) -> Golden {
    let dir = fixture_dir(name);
    let model =
        load_checkpoint(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Golden {
        model,
        input_ids: ids(&reference["input_ids"]),
        logits: reference["logits"].to_vec2::<f32>().unwrap(),
        greedy_ids: ids(&reference["greedy_ids"]),
        prompt_len: reference["prompt_len"].to_vec1::<i64>().unwrap()[0] as usize,
    }
}

fn rows(logits: &Tensor) -> Vec<Vec<f32>> {
    logits.to_vec2::<f32>().unwrap()
}

/// Largest |ours - reference| over the given rows, with the row where it happens.
fn max_error(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> (f32, usize) {
    assert_eq!(ours.len(), reference.len(), "row count");
    let mut worst = (0.0f32, 0);
    for (position, (a, b)) in ours.iter().zip(reference).enumerate() {
        let error = max_abs_error(a, b);
        assert!(error.is_finite(), "non-finite logit at position {position}");
        if error > worst.0 {
            worst = (error, position);
        }
    }
    worst
}

fn assert_close(name: &str, what: &str, ours: &[Vec<f32>], reference: &[Vec<f32>]) {
    let (error, position) = max_error(ours, reference);
    assert!(
        error <= TOLERANCE,
        "{name}, {what}: max abs error {error:e} at position {position} exceeds {TOLERANCE:e}"
    );
}

/// Runs `chunks` of the input one after another on one cache and gathers every position's logits.
fn run_in_chunks(
    model: &Model,
    ids: &[u32],
    chunk_lengths: &[usize],
) -> (Vec<Vec<f32>>, LatentCache) {
    let mut cache = model.new_cache();
    let mut all = Vec::new();
    let mut start = 0;
    for &len in chunk_lengths {
        let logits = model
            .forward(&ids[start..start + len], &mut cache, Logits::All)
            .unwrap();
        all.extend(rows(&logits));
        start += len;
    }
    assert_eq!(start, ids.len());
    (all, cache)
}

#[test]
fn every_position_matches_transformers() {
    for name in FIXTURES {
        let g = golden(name);
        let (ours, _) = run_in_chunks(&g.model, &g.input_ids, &[g.input_ids.len()]);
        assert_close(name, "full forward", &ours, &g.logits);
    }
}

#[test]
fn expanded_and_absorbed_forms_both_match() {
    for name in FIXTURES {
        let mut g = golden(name);
        for form in [AttentionForm::Expanded, AttentionForm::Absorbed] {
            g.model.set_attention_form(form);
            // One chunk, then a chunk over a cached prefix: both forms see both masks.
            let (ours, _) = run_in_chunks(&g.model, &g.input_ids, &[17, g.input_ids.len() - 17]);
            assert_close(name, &format!("{form:?} form"), &ours, &g.logits);
        }
    }
}

#[test]
fn prefix_then_cached_continuation_matches_the_full_forward() {
    for name in FIXTURES {
        let g = golden(name);
        let t = g.input_ids.len();
        for prefix in [1, 9, t - 1] {
            let (ours, cache) = run_in_chunks(&g.model, &g.input_ids, &[prefix, t - prefix]);
            assert_eq!(cache.len(), t);
            assert_close(
                name,
                &format!("prefix {prefix} then the rest"),
                &ours,
                &g.logits,
            );
        }
    }
}

#[test]
fn token_by_token_decode_matches_the_full_forward() {
    for name in FIXTURES {
        let g = golden(name);
        let (ours, cache) = run_in_chunks(&g.model, &g.input_ids, &vec![1; g.input_ids.len()]);
        assert_eq!(cache.len(), g.input_ids.len());
        assert_close(name, "token by token", &ours, &g.logits);
    }
}

/// The road a GPU load takes, on the CPU: latent rows written to the pages' device slots and
/// committed once per step, attention through the device's ops (our paged-attention op, the
/// expanded form over the slots), each MoE layer's experts stacked (routing plan, grouped
/// matmuls, combine). Our ops run the CUDA kernels' CPU references here; the kernels are held
/// to those on a GPU (kernels/tests/gpu.rs).
#[test]
fn the_device_road_matches_transformers() {
    for name in FIXTURES {
        let mut g = golden(name);
        let (_, on_the_host) = run_in_chunks(&g.model, &g.input_ids, &[17, 23]);
        let moe_layers = g.model.take_the_device_road().unwrap().stacked_moe_layers;
        assert!(moe_layers > 0, "{name}: no MoE layer was stacked");
        let t = g.input_ids.len();
        // The rows a step writes on the device reach the host pages (which the prefix tree
        // shares) by the step's end.
        let (_, on_the_device) = run_in_chunks(&g.model, &g.input_ids, &[17, 23]);
        let pages = |cache: &LatentCache| -> Vec<f32> {
            cache
                .pages()
                .iter()
                .flat_map(|page| page.data().to_vec())
                .collect()
        };
        let moved = max_abs_error(&pages(&on_the_device), &pages(&on_the_host));
        assert!(
            moved <= 1e-5,
            "{name}: the device road's pages differ by {moved:e}"
        );
        for form in [
            AttentionForm::Auto,
            AttentionForm::Expanded,
            AttentionForm::Absorbed,
        ] {
            g.model.set_attention_form(form);
            for chunks in [vec![t], vec![17, t - 17], vec![1; t]] {
                let (ours, _) = run_in_chunks(&g.model, &g.input_ids, &chunks);
                let what = format!(
                    "device road, {form:?}, chunks {:?}",
                    &chunks[..2.min(chunks.len())]
                );
                assert_close(name, &what, &ours, &g.logits);
            }
        }
        // An edit: cut back, other tokens, cut back again, the right tokens one by one.
        g.model.set_attention_form(AttentionForm::Auto);
        let mut cache = g.model.new_cache();
        g.model
            .forward(&g.input_ids[..20], &mut cache, Logits::Last)
            .unwrap();
        cache.truncate(10);
        for &id in g.input_ids[10..20].iter().rev() {
            g.model.forward(&[id], &mut cache, Logits::Last).unwrap();
        }
        cache.truncate(10);
        let rows: Vec<Vec<f32>> = g.input_ids[10..]
            .iter()
            .map(|&id| {
                let logits = g.model.forward(&[id], &mut cache, Logits::Last).unwrap();
                logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        assert_close(name, "device road after two edits", &rows, &g.logits[10..]);
    }
}

#[test]
fn greedy_continuation_is_token_identical() {
    for name in FIXTURES {
        let g = golden(name);
        let sequence =
            greedy_continuation(&g.model, &g.greedy_ids[..g.prompt_len], g.greedy_ids.len());
        assert_eq!(
            sequence, g.greedy_ids,
            "{name}: greedy continuation differs from transformers"
        );
    }
}

#[test]
fn last_position_logits_equal_the_last_row_of_all() {
    let g = golden("v2");
    let mut cache = g.model.new_cache();
    let last = rows(
        &g.model
            .forward(&g.input_ids, &mut cache, Logits::Last)
            .unwrap(),
    );
    assert_eq!(last.len(), 1);
    assert_close("v2", "Logits::Last", &last, &g.logits[g.logits.len() - 1..]);
}

#[test]
fn the_cache_holds_only_the_latent() {
    for name in FIXTURES {
        let g = golden(name);
        let c = g.model.config().clone();
        let per_token = (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * 4;
        assert_eq!(g.model.kv_bytes_per_token(), per_token, "{name}");
        assert!(
            per_token < c.expanded_kv_bytes_per_token(4),
            "{name}: latent must be smaller than expanded K/V"
        );

        let t = g.input_ids.len();
        let page_tokens = cache_page_tokens(&g.model);
        let pages = t.div_ceil(page_tokens);
        // Prefill and token-by-token decode both hold exactly the pages t tokens need, nothing else.
        for chunks in [vec![t], vec![1; t]] {
            let (_, cache) = run_in_chunks(&g.model, &g.input_ids, &chunks);
            assert_eq!(cache.used_bytes(), t * per_token, "{name}: used bytes");
            assert_eq!(cache.pages().len(), pages);
            assert_eq!(
                cache.allocated_bytes(),
                pages * page_tokens * per_token,
                "{name}: allocated bytes"
            );
        }
    }
}

fn cache_page_tokens(model: &Model) -> usize {
    model.new_cache().layout().page_tokens
}

#[test]
fn truncating_the_cache_recomputes_the_same_logits() {
    let g = golden("lite");
    let mut cache = g.model.new_cache();
    g.model
        .forward(&g.input_ids, &mut cache, Logits::All)
        .unwrap();
    cache.truncate(20);
    assert_eq!(cache.len(), 20);
    let rest = rows(
        &g.model
            .forward(&g.input_ids[20..], &mut cache, Logits::All)
            .unwrap(),
    );
    assert_close("lite", "after truncate(20)", &rest, &g.logits[20..]);
}

#[test]
fn f16_compute_stays_close_to_f32() {
    let dir = fixture_dir("lite");
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::F16),
    };
    let model = load_checkpoint(&dir, &options).unwrap();
    // The cache keeps f32 latents whatever the compute dtype.
    assert_eq!(model.kv_bytes_per_token(), (32 + 8) * 3 * 4);
    let g = golden("lite");
    let (ours, _) = run_in_chunks(&model, &g.input_ids, &[g.input_ids.len()]);
    let (error, _) = max_error(&ours, &g.logits);
    let scale = g.logits.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        error < 0.02 * scale,
        "f16 error {error} vs logit scale {scale}"
    );
}

#[test]
fn chunked_prefill_matches_the_full_forward() {
    for name in FIXTURES {
        let mut g = golden(name);
        for chunk in [1, 7, 16] {
            g.model.set_prefill_chunk(chunk);
            let (ours, cache) = run_in_chunks(&g.model, &g.input_ids, &[3, g.input_ids.len() - 3]);
            assert_eq!(cache.len(), g.input_ids.len());
            assert_close(name, &format!("chunks of {chunk}"), &ours, &g.logits);
            let mut cache = g.model.new_cache();
            let last = rows(
                &g.model
                    .forward(&g.input_ids, &mut cache, Logits::Last)
                    .unwrap(),
            );
            assert_close(
                name,
                &format!("last of chunks of {chunk}"),
                &last,
                &g.logits[g.logits.len() - 1..],
            );
        }
    }
}

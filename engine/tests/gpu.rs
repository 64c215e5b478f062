//! The golden fixtures on an NVIDIA GPU, against transformers' logits (tools/make_golden.py).
//! Ignored by default (CI has no GPU). On a machine with one, from a `--features cuda` build:
//!
//! ```sh
//! cargo test -p engine --features cuda --test gpu -- --ignored
//! ```
//!
//! or `tools/gpu_check.sh run`, which carries this suite prebuilt.
//! `DEEPSEEK_LSP_TEST_DEVICE=cpu` runs the same checks on the CPU (to check the checks).

use candle_core::{DType, Device};
use engine::{AttentionForm, LoadOptions, Logits, Model, load_checkpoint};
use support::{ReferenceLogits, all_logits, fixture, max_error, reference_logits};

mod support;

const FIXTURES: [&str; 3] = ["lite", "v2", "branches"];
/// As on the CPU (golden.rs): f32 on any device computes the same sums in other orders.
const F32_TOLERANCE: f32 = 1e-4;

fn gpu() -> Device {
    if std::env::var("DEEPSEEK_LSP_TEST_DEVICE").is_ok_and(|device| device == "cpu") {
        return Device::Cpu;
    }
    Device::new_cuda(0).unwrap_or_else(|e| panic!("no usable GPU (needs --features cuda): {e}"))
}

fn load(name: &str, dtype: DType) -> (Model, ReferenceLogits) {
    let options = LoadOptions {
        device: gpu(),
        dtype: Some(dtype),
    };
    let model = load_checkpoint(&fixture(name), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference = reference_logits(&fixture(name).join("reference.safetensors"));
    (model, reference)
}

/// `chunks` of `ids` one after another on one cache: every position's logits.
fn in_chunks(model: &Model, ids: &[u32], chunks: &[usize]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut rows = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let logits = model
            .forward(&ids[start..start + len], &mut cache, Logits::All)
            .unwrap();
        rows.extend(logits.to_vec2::<f32>().unwrap());
        start += len;
    }
    rows
}

fn assert_close(name: &str, what: &str, ours: &[Vec<f32>], reference: &[Vec<f32>], bar: f32) {
    let error = max_error(ours, reference);
    eprintln!("{name}, {what}: max |error| {error:e}");
    assert!(error <= bar, "{name}, {what}: {error} > {bar}");
}

#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn f32_on_the_gpu_matches_transformers_on_every_path() {
    for name in FIXTURES {
        let (mut model, reference) = load(name, DType::F32);
        let ids = &reference.input_ids;
        let expected = &reference.logits;
        assert_close(
            name,
            "one prompt",
            &all_logits(&model, ids),
            expected,
            F32_TOLERANCE,
        );
        // One token at a time: the absorbed form through our paged kernel, over the rows the
        // cache mirrors on the device (one new row per layer and step).
        let ones = vec![1; ids.len()];
        assert_close(
            name,
            "token by token",
            &in_chunks(&model, ids, &ones),
            expected,
            F32_TOLERANCE,
        );
        for form in [AttentionForm::Expanded, AttentionForm::Absorbed] {
            model.set_attention_form(form);
            let rows = in_chunks(&model, ids, &[17, ids.len() - 17]);
            assert_close(
                name,
                &format!("{form:?}, a span over a cached prefix"),
                &rows,
                expected,
                F32_TOLERANCE,
            );
        }
        model.set_attention_form(AttentionForm::Auto);
    }
}

/// An edit: the cache is cut back and other tokens take the freed positions, then it is cut
/// back again and the right tokens follow. The device's copy of the rows must follow every cut.
#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn rewritten_positions_reach_the_gpu() {
    for name in FIXTURES {
        let (model, reference) = load(name, DType::F32);
        let ids = &reference.input_ids;
        let mut cache = model.new_cache();
        model.forward(&ids[..20], &mut cache, Logits::Last).unwrap();
        cache.truncate(10);
        let other: Vec<u32> = ids[10..20].iter().rev().copied().collect();
        for &id in &other {
            model.forward(&[id], &mut cache, Logits::Last).unwrap();
        }
        cache.truncate(10);
        let rows: Vec<Vec<f32>> = ids[10..]
            .iter()
            .map(|&id| {
                let logits = model.forward(&[id], &mut cache, Logits::Last).unwrap();
                logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        assert_close(
            name,
            "after two edits",
            &rows,
            &reference.logits[10..],
            F32_TOLERANCE,
        );
    }
}

/// bf16 weights and activations (8 significant bits) against the f32 reference. Rounding alone
/// moves logits by a fraction of their scale: f16 (11 bits) on the CPU moved lite's by 1.05e-2
/// of 3.77 and branches' by 9.8e-2 of 33.0, about 0.3%; bf16 rounds 8 times coarser, about
/// 2.4%. A router choosing another expert moves them by the scale itself: f16 moved v2's by
/// 0.447 of 4.0, so its tiny random routers have experts within rounding of each other, and v2
/// is left out here. The bar is 10% of the largest logit, and the greedy choice must agree
/// wherever the reference's top two logits are further apart than that.
#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn bf16_on_the_gpu_stays_close_to_f32() {
    // The CPU has no bf16 compute: there the check runs on f16.
    let reduced = if gpu().is_cpu() {
        DType::F16
    } else {
        DType::BF16
    };
    for name in ["lite", "branches"] {
        let (model, reference) = load(name, reduced);
        let ours = all_logits(&model, &reference.input_ids);
        let scale = reference
            .logits
            .iter()
            .flatten()
            .fold(0f32, |m, x| m.max(x.abs()));
        assert_close(
            name,
            &format!("{reduced:?}"),
            &ours,
            &reference.logits,
            0.1 * scale,
        );
        for (position, (mine, theirs)) in ours.iter().zip(&reference.logits).enumerate() {
            let mut sorted = theirs.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 0.1 * scale {
                assert_eq!(argmax(mine), argmax(theirs), "{name}: position {position}");
            }
        }
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index)
}

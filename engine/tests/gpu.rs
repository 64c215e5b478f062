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
use engine::device::{DeviceChoice, device_name};
use engine::routing_trace::trace_routing;
use engine::{AttentionForm, LoadOptions, Logits, Model, load_checkpoint};
use support::{
    ReferenceLogits, all_logits, fixture, gguf_fixture, max_error, reference_logits,
    token_by_token_logits,
};

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
    let mut model =
        load_checkpoint(&fixture(name), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    // A GPU load takes the device road (experts stacked for our kernels); on the CPU (checking
    // the checks) this puts the same road in place, through the kernels' CPU references.
    let stacked = model.take_the_device_road().unwrap().stacked_moe_layers;
    if matches!(dtype, DType::F32 | DType::BF16) {
        assert!(
            stacked > 0,
            "{name}: the MoE layers did not take the stacked road"
        );
    }
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
        // One token at a time: the absorbed form through our paged kernel, over the rows in the
        // pages' device slots (one new row per layer and step).
        assert_close(
            name,
            "token by token",
            &token_by_token_logits(&model, ids),
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

/// `auto` on a GPU machine: a load that fails on the GPU (a model larger than its memory, say)
/// runs again on the CPU. (Forced onto the CPU to check the checks, `auto` opens the CPU and
/// there is nothing to see.)
#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn auto_loads_on_the_cpu_when_the_gpu_load_fails() {
    if gpu().is_cpu() {
        return;
    }
    let tried = std::cell::RefCell::new(Vec::new());
    let loaded = DeviceChoice::Auto.load(|device| {
        tried.borrow_mut().push(device_name(device));
        if device.is_cpu() {
            Ok("on the CPU")
        } else {
            Err("out of memory".to_string())
        }
    });
    assert_eq!(loaded, Ok("on the CPU"));
    assert_eq!(*tried.borrow(), ["cuda:0", "cpu"]);
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

/// A quantized GGUF on the GPU keeps its blocks (the projections and the stacked experts read
/// them through our block products) and meets torch on the same dequantized weights at the f32
/// bar, prefill and token by token (gguf.rs holds the same road on the CPU).
#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn q8_0_gguf_keeps_its_blocks_on_the_gpu_and_matches_transformers() {
    let options = LoadOptions {
        device: gpu(),
        dtype: Some(DType::F32),
    };
    let mut model = load_checkpoint(&gguf_fixture("lite-q8_0.gguf"), &options).unwrap();
    let road = model.take_the_device_road().unwrap();
    let (stacked, formats) = (road.stacked_moe_layers, model.stacked_expert_formats());
    eprintln!(
        "{} projections in device blocks; {stacked} MoE layers stacked as {formats:?}",
        road.projections_in_blocks
    );
    assert!(road.projections_in_blocks > 0);
    assert!(stacked > 0 && formats.iter().all(|&(gate_up, _)| gate_up == "Q8_0"));
    let reference = reference_logits(&gguf_fixture("lite-q8_0-reference.safetensors"));
    let ids = &reference.input_ids;
    assert_close(
        "lite-q8_0.gguf",
        "prefill",
        &all_logits(&model, ids),
        &reference.logits,
        F32_TOLERANCE,
    );
    assert_close(
        "lite-q8_0.gguf",
        "token by token",
        &token_by_token_logits(&model, ids),
        &reference.logits,
        F32_TOLERANCE,
    );
}

/// bf16 weights and activations (8 significant bits) against the f32 reference, position by
/// position, told apart by routing. Where a router chose other experts than f32 did (some layer,
/// some token), that token's logits move by the logit scale itself: the tiny fixtures' random
/// routers put experts within rounding of each other (f16 on the CPU moved v2's logits 0.447 of
/// 4.0), so such positions are counted, their f32 gaps printed, and they may be at most a quarter
/// of all. Everywhere else only rounding moves the logits: f16 (11 significant bits) moved lite's
/// 1.05e-2 of 3.77 and branches' 9.8e-2 of 33.0, about 0.3% of the largest logit; bf16 rounds 8
/// times coarser, about 2.4%, so the bar is 5% there, and the greedy choice must agree wherever
/// the reference's top two logits are further apart than that.
#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn bf16_on_the_gpu_stays_close_to_f32_where_it_routes_alike() {
    for name in FIXTURES {
        let exact = load_checkpoint(&fixture(name), &LoadOptions::default()).unwrap();
        let (model, reference) = load(name, reduced_dtype());
        assert_close_where_routed_alike(name, &exact, &model, &reference);
    }
}

/// A Q8_0 GGUF in bf16 on the GPU: its blocks stay blocks, and a prompt's rows meet them on
/// tensor cores, x and each dequantized weight rounded to bf16 (as a bf16 copy of the file
/// would hold them), so the bar is bf16's above, against torch on the dequantized weights.
#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn q8_0_gguf_in_bf16_on_the_gpu_stays_close_to_f32_where_it_routes_alike() {
    let path = gguf_fixture("lite-q8_0.gguf");
    let exact = load_checkpoint(&path, &LoadOptions::default()).unwrap();
    let options = LoadOptions {
        device: gpu(),
        dtype: Some(reduced_dtype()),
    };
    let mut model = load_checkpoint(&path, &options).unwrap();
    let road = model.take_the_device_road().unwrap();
    let (blocks, stacked) = (road.projections_in_blocks, road.stacked_moe_layers);
    eprintln!("{blocks} projections in device blocks; {stacked} MoE layers stacked");
    // The experts stack in bf16 (their F32 downs become bf16); f16 stacks are not ours to take.
    assert!(blocks > 0 && (stacked > 0 || reduced_dtype() != DType::BF16));
    let reference = reference_logits(&gguf_fixture("lite-q8_0-reference.safetensors"));
    assert_close_where_routed_alike("lite-q8_0.gguf", &exact, &model, &reference);
}

/// bf16 on a GPU; the CPU has no bf16 compute, so there the reduced checks run on f16.
fn reduced_dtype() -> DType {
    if gpu().is_cpu() {
        DType::F16
    } else {
        DType::BF16
    }
}

/// `model` (in a reduced dtype) against the f32 `reference`, told apart by routing against
/// `exact` (the same weights in f32 on the CPU), as the comment above the bf16 test says.
fn assert_close_where_routed_alike(
    name: &str,
    exact: &Model,
    model: &Model,
    reference: &ReferenceLogits,
) {
    let reduced = model.dtype();
    let ids = &reference.input_ids;
    let (_, exact_routes) = trace_routing(|| all_logits(exact, ids));
    let (ours, routes) = trace_routing(|| all_logits(model, ids));
    assert_eq!(routes.len(), exact_routes.len(), "{name}: router calls");
    // Per token, whether every layer chose the same experts, and where not, the f32 gap
    // between the weakest expert it dropped and the strongest it took instead.
    let mut alike = vec![true; ids.len()];
    let mut gaps = Vec::new();
    for (layer, (exact, reduced)) in exact_routes.iter().zip(&routes).enumerate() {
        for (token, (want, got)) in exact.chosen.iter().zip(&reduced.chosen).enumerate() {
            let logits = &exact.logits[token];
            let dropped = want.iter().filter(|e| !got.contains(e)).map(|&e| logits[e]);
            let added = got.iter().filter(|e| !want.contains(e)).map(|&e| logits[e]);
            let weakest_dropped = dropped.fold(f32::INFINITY, f32::min);
            let strongest_added = added.fold(f32::NEG_INFINITY, f32::max);
            if weakest_dropped.is_finite() {
                alike[token] = false;
                let gap = weakest_dropped - strongest_added;
                eprintln!(
                    "{name}: MoE layer {layer}, token {token} routed elsewhere; f32 router \
                     logits {weakest_dropped} (dropped) vs {strongest_added} (taken): gap {gap}"
                );
                gaps.push(gap);
            }
        }
    }
    // How far rounding moved the router logits where the routes agree: a flip is rounding's
    // doing only where the experts it swapped were closer than twice that.
    let mut moved = 0f32;
    for (exact, reduced) in exact_routes.iter().zip(&routes) {
        for (token, (want, got)) in exact.logits.iter().zip(&reduced.logits).enumerate() {
            if alike[token] {
                moved = moved.max(support::max_abs_error(want, got));
            }
        }
    }
    eprintln!("{name}: router logits moved up to {moved} where routes agree");
    for gap in gaps {
        assert!(gap <= 2.0 * moved, "{name}: a flip across a gap of {gap}");
    }
    let rerouted = alike.iter().filter(|same| !**same).count();
    assert!(
        rerouted * 4 <= ids.len(),
        "{name}: {rerouted} of {} positions routed elsewhere",
        ids.len()
    );
    let scale = reference
        .logits
        .iter()
        .flatten()
        .fold(0f32, |m, x| m.max(x.abs()));
    let keep = |rows: &[Vec<f32>]| -> Vec<Vec<f32>> {
        rows.iter()
            .zip(&alike)
            .filter(|(_, same)| **same)
            .map(|(row, _)| row.clone())
            .collect()
    };
    let (ours, expected) = (keep(&ours), keep(&reference.logits));
    let what = format!("{reduced:?}, {} positions routed alike", ours.len());
    assert_close(name, &what, &ours, &expected, 0.05 * scale);
    for (position, (mine, theirs)) in ours.iter().zip(&expected).enumerate() {
        let mut sorted = theirs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 0.05 * scale {
            assert_eq!(
                argmax(mine),
                argmax(theirs),
                "{name}: kept position {position}"
            );
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

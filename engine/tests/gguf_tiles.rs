//! The AMX tile road end to end through a model, on any CPU: a prompt's products of 32 or more
//! tokens in bf16 on emulated tiles (the same driver, panels and padding as on the CPU's tiles;
//! `kernels` tests the CPU's tiles against the emulated ones where it has them). Its own test
//! binary: the switch to emulated tiles holds for the whole process.

use engine::synthetic::{SyntheticQuant, lite_small_config, write_synthetic_gguf};
use engine::{InstructionSet, LoadOptions, limit_instruction_set, load_checkpoint};
use support::{
    Q8_0_IN_PLACE_TOLERANCE, all_logits, dense_model, gguf_fixture, max_error, median_row_error,
    reference_logits,
};

mod support;

#[test]
fn prompts_on_the_tiles_are_as_close_to_the_f32_truth_as_the_int8_roads() {
    // A Lite-shaped Q4_K_M file too: its matrices are interleaved Q4_K, Q6_K, Q5_0 and Q8_0.
    let dir = tempfile::tempdir().unwrap();
    let synthetic_path = dir.path().join("lite-small-q4_k_m.gguf");
    write_synthetic_gguf(
        &synthetic_path,
        &lite_small_config(3),
        SyntheticQuant::Q4KM,
        0,
    )
    .unwrap();
    let synthetic = load_checkpoint(&synthetic_path, &LoadOptions::default()).unwrap();
    let synthetic_ids: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 512).collect();
    let dense = all_logits(&dense_model(&synthetic_path), &synthetic_ids);
    let same_weights = reference_logits(&gguf_fixture("lite-q8_0-reference.safetensors"));
    let llama_cpp = reference_logits(&gguf_fixture("lite-q8_0-llama-cpp.safetensors"));
    let model = load_checkpoint(&gguf_fixture("lite-q8_0.gguf"), &LoadOptions::default()).unwrap();
    let ids = &same_weights.input_ids;
    assert!(ids.len() >= 32, "a prompt the tiles take");
    limit_instruction_set(InstructionSet::Avx512Vnni);
    let int8 = all_logits(&model, ids);
    let synthetic_int8 = all_logits(&synthetic, &synthetic_ids);
    kernels::quant::emulate_tiles_for_tests();
    let tiles = all_logits(&model, ids);
    let synthetic_tiles = all_logits(&synthetic, &synthetic_ids);
    let moved = max_error(&tiles, &int8);
    let error = max_error(&tiles, &same_weights.logits);
    let typical = median_row_error(&tiles, &same_weights.logits);
    let theirs = median_row_error(&llama_cpp.logits, &same_weights.logits);
    println!(
        "lite-q8_0.gguf prompt on the tiles against torch on the dequantized weights: max abs \
         error {error:e}, median per position {typical:e} (llama.cpp's {theirs:e}); {moved:e} \
         from the int8 road's"
    );
    // The tiles round inputs to bf16 where the int8 road rounds them to 8 bits per block of 32:
    // the logits move (0.11 when first measured), and a road that was not taken would not.
    assert!(moved > 1e-3, "the prompt did not take the tiles: {moved:e}");
    assert!(error <= Q8_0_IN_PLACE_TOLERANCE, "{error:e}");
    assert!(
        typical <= 1.5 * theirs,
        "median {typical:e} vs llama.cpp's {theirs:e}"
    );
    // The synthetic file has no torch reference: f32 products of its dequantized weights are
    // the truth both roads round their inputs against.
    let moved = max_error(&synthetic_tiles, &synthetic_int8);
    let (tiles_error, int8_error) = (
        median_row_error(&synthetic_tiles, &dense),
        median_row_error(&synthetic_int8, &dense),
    );
    println!(
        "synthetic lite-small Q4_K_M against f32 on its dequantized weights: median per position \
         {tiles_error:e} on the tiles, {int8_error:e} on the int8 road (max {:e} and {:e}); \
         {moved:e} apart",
        max_error(&synthetic_tiles, &dense),
        max_error(&synthetic_int8, &dense),
    );
    assert!(moved > 1e-4, "the prompt did not take the tiles: {moved:e}");
    assert!(
        tiles_error <= 1.5 * int8_error,
        "{tiles_error:e} vs {int8_error:e}"
    );
}

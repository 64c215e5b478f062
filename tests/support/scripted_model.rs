//! A DeepSeek-V2 checkpoint whose greedy answer to any prompt is a fixed script, for tests that
//! need a model to say something specific (a review finding, a malformed answer) and then check
//! what the product does with it.
//!
//! Each piece of the script is one added token. Attention and feed-forward write nothing
//! (output projections are zero), so the last hidden state is the current token's embedding and
//! the logits are a lookup table: an ordinary token (embedding e0) predicts piece 1, piece i
//! (embedding e_i) predicts piece i + 1, the last piece predicts end-of-sentence. It is loaded
//! and run by the real engine like any other checkpoint.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

const TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tiny-coder/tokenizer.json"
);
const HIDDEN: usize = 16;

/// Writes config.json, tokenizer.json and model.safetensors to `dir`; the model answers every
/// prompt with `pieces` concatenated, then ends. `window` is its `max_position_embeddings`.
pub fn write(dir: &Path, pieces: &[&str], window: usize) {
    assert!(
        !pieces.is_empty() && pieces.len() < HIDDEN,
        "1..{HIDDEN} pieces"
    );
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(TOKENIZER).unwrap()).unwrap();
    let base_vocab = tokenizer["model"]["vocab"].as_object().unwrap().len();
    let eos = tokenizer["model"]["vocab"]["<｜end▁of▁sentence｜>"]
        .as_u64()
        .unwrap() as usize;
    let added = tokenizer["added_tokens"].as_array_mut().unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        added.push(json!({
            "id": base_vocab + i, "content": piece, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": false,
        }));
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();

    let vocab = base_vocab + pieces.len();
    let config = json!({
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "vocab_size": vocab, "hidden_size": HIDDEN, "intermediate_size": HIDDEN,
        "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
        "q_lora_rank": null, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
        "v_head_dim": 8, "n_routed_experts": null, "max_position_embeddings": window,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "bos_token_id": 0, "eos_token_id": eos, "attention_bias": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut zeros = |name: &str, shape: &[usize]| {
        tensors.push((
            name.to_string(),
            shape.to_vec(),
            vec![0.0; shape.iter().product()],
        ))
    };
    let layer = "model.layers.0";
    zeros(&format!("{layer}.self_attn.q_proj.weight"), &[16, HIDDEN]);
    zeros(
        &format!("{layer}.self_attn.kv_a_proj_with_mqa.weight"),
        &[16, HIDDEN],
    );
    zeros(&format!("{layer}.self_attn.kv_b_proj.weight"), &[16, 8]);
    zeros(&format!("{layer}.self_attn.o_proj.weight"), &[HIDDEN, 8]);
    for projection in ["gate_proj", "up_proj"] {
        zeros(
            &format!("{layer}.mlp.{projection}.weight"),
            &[HIDDEN, HIDDEN],
        );
    }
    zeros(&format!("{layer}.mlp.down_proj.weight"), &[HIDDEN, HIDDEN]);
    let ones = vec![1.0; HIDDEN];
    for norm in [
        format!("{layer}.input_layernorm.weight"),
        format!("{layer}.post_attention_layernorm.weight"),
        "model.norm.weight".to_string(),
    ] {
        tensors.push((norm, vec![HIDDEN], ones.clone()));
    }
    tensors.push((
        format!("{layer}.self_attn.kv_a_layernorm.weight"),
        vec![8],
        vec![1.0; 8],
    ));
    // Ordinary tokens sit on axis 0, piece i on axis i.
    let mut embed = vec![0.0f32; vocab * HIDDEN];
    for token in 0..vocab {
        let axis = token.checked_sub(base_vocab).map_or(0, |i| i + 1);
        embed[token * HIDDEN + axis] = 1.0;
    }
    // The row of the token that follows axis a reads axis a.
    let mut lm_head = vec![0.0f32; vocab * HIDDEN];
    for (axis, next) in (0..=pieces.len()).map(|axis| {
        (
            axis,
            if axis < pieces.len() {
                base_vocab + axis
            } else {
                eos
            },
        )
    }) {
        lm_head[next * HIDDEN + axis] = 1.0;
    }
    tensors.push((
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        embed,
    ));
    tensors.push(("lm_head.weight".into(), vec![vocab, HIDDEN], lm_head));

    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, data)
        })
        .collect();
    let views: HashMap<String, TensorView> = bytes
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

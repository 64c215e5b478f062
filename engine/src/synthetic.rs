//! Models of real published dimensions with seeded random weights, for benchmarks and tests
//! that need the true shapes but cannot ship the checkpoint: in memory ([`random_model`]), or
//! as a GGUF file laid out as llama.cpp's converter and llama-quantize lay out a real one
//! ([`write_synthetic_gguf`]), for measuring the quantized path and llama.cpp on the same file.

mod gguf_file;
mod quant_mix;
mod random_blocks;
mod vocab;

use candle_core::{DType, Device};

use crate::config::{ModelConfig, MoeConfig, RopeConfig, Routing, YarnConfig};
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::weights::RandomWeights;

pub use gguf_file::{SyntheticGguf, write_synthetic_gguf};
pub use quant_mix::SyntheticQuant;

/// DeepSeek-V2-Lite's (and DeepSeek-Coder-V2-Lite's) dimensions with `layers` layers
/// (the first one dense, as in the real model).
pub fn lite_config(layers: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 102_400,
        hidden_size: 2048,
        intermediate_size: 10_944,
        num_hidden_layers: layers,
        num_attention_heads: 16,
        q_lora_rank: None,
        kv_lora_rank: 512,
        qk_nope_head_dim: 128,
        qk_rope_head_dim: 64,
        v_head_dim: 128,
        moe: Some(MoeConfig {
            n_routed_experts: 64,
            n_shared_experts: 2,
            num_experts_per_tok: 6,
            moe_intermediate_size: 1408,
            first_k_dense_replace: 1,
            moe_layer_freq: 1,
            routing: Routing::Greedy,
            norm_topk_prob: false,
            routed_scaling_factor: 1.0,
        }),
        rope: RopeConfig {
            theta: 10_000.0,
            yarn: Some(YarnConfig {
                factor: 40.0,
                original_max_position_embeddings: 4096.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                mscale: Some(0.707),
                mscale_all_dim: Some(0.707),
                attention_factor: None,
                truncate: true,
            }),
        },
        rms_norm_eps: 1e-6,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        max_position_embeddings: 163_840,
    }
}

/// Lite's structure at a small size, for fast tests of the GGUF path: first layer dense,
/// 16 routed experts (top 2; not 8, which llama-quantize treats as Mixtral and quantizes
/// differently) + 2 shared, YaRN, and widths that tile the same way as Lite's under
/// 256-value K-quant blocks. The MoE and dense widths (128, 320) are not whole blocks, as Lite's
/// 1408 and 10944 are not, while the shared experts' (256) are, as Lite's 2816 is; the nope head
/// size (32) is not, as Lite's 128 is not; hidden, latent and attention-output widths (256) are.
pub fn lite_small_config(layers: usize) -> ModelConfig {
    let lite = lite_config(layers);
    ModelConfig {
        vocab_size: 512,
        hidden_size: 256,
        intermediate_size: 320,
        num_attention_heads: 4,
        kv_lora_rank: 256,
        qk_nope_head_dim: 32,
        qk_rope_head_dim: 16,
        v_head_dim: 64,
        moe: lite.moe.map(|moe| MoeConfig {
            n_routed_experts: 16,
            num_experts_per_tok: 2,
            moe_intermediate_size: 128,
            ..moe
        }),
        ..lite
    }
}

/// Parses a synthetic model spec such as `lite:4` (DeepSeek-V2-Lite's dimensions, 4 layers) or
/// `lite-small:2` ([`lite_small_config`]) into its config.
pub fn parse_spec(spec: &str) -> Result<ModelConfig> {
    let usage = || {
        EngineError::InvalidInput(format!(
            "synthetic model `{spec}` not understood; use lite:LAYERS (for example lite:4) or \
             lite-small:LAYERS"
        ))
    };
    let (family, layers) = spec.split_once(':').ok_or_else(usage)?;
    let layers: usize = layers.parse().ok().filter(|&n| n >= 1).ok_or_else(usage)?;
    match family {
        "lite" => Ok(lite_config(layers)),
        "lite-small" => Ok(lite_small_config(layers)),
        _ => Err(usage()),
    }
}

/// A model with `config`'s shapes and seeded random weights.
pub fn random_model(
    config: ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    Model::load(config, &RandomWeights::new(seed), dtype, device)
}

//! The model runtime: DeepSeek-V2 configs and weights, the forward pass, the latent KV cache.
//!
//! Architecture invariant: knows tokens, weights and tensors; knows nothing of LSP or editors.

mod absorbed;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod detokenize;
pub mod device;
mod device_blocks;
mod device_pages;
mod embedding;
pub mod error;
#[cfg(feature = "cuda")]
mod experts_product;
pub mod generation;
pub mod gguf;
#[cfg(feature = "cuda")]
mod gpu_ptx;
mod latent_attention;
pub mod latent_cache;
mod linear;
pub mod model;
mod op_operands;
pub mod page_pool;
pub mod prompt;
pub mod quantized;
pub mod radix_cache;
pub mod rope;
pub mod routing_trace;
pub mod sampling;
mod stacked_experts;
mod stop;
pub mod synthetic;
pub mod tokenizer;
pub mod weight_arena;
pub mod weights;
mod worker;

/// Sets the number of CPU worker threads, if no computation has started yet; returns whether
/// it took effect.
pub fn set_cpu_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .is_ok()
}

/// Re-exported so callers can name devices and dtypes without depending on candle.
pub use candle_core::{DType, Device};
pub use checkpoint::{
    LoadOptions, load_checkpoint, load_checkpoint_and_tokenizer, load_config_and_tokenizer,
};
pub use config::ModelConfig;
pub use device::{DeviceChoice, device_name};
pub use error::{EngineError, Result};
pub use generation::{
    Generation, GenerationEvent, GenerationStats, PromptInput, Request, StopReason,
};
pub use gguf::{GgufFile, GgufModel, GgufWeights};
/// The CPU kernels' instruction sets, and the switch that holds them at a lower one.
pub use kernels::quant::{InstructionSet, TileStatus, limit_instruction_set, tile_status};
pub use latent_cache::LatentCache;
pub use model::{AttentionForm, DeviceRoad, Logits, Model};
pub use prompt::{ContextBlock, Prompt};
pub use sampling::SamplingParams;
pub use tokenizer::TextTokenizer;
pub use worker::{Engine, EngineCounters, EngineOptions};

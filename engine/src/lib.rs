//! The model runtime: DeepSeek-V2 configs and weights, the forward pass, the latent KV cache.
//!
//! Architecture invariant: knows tokens, weights and tensors; knows nothing of LSP or editors.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod latent_cache;
mod linear;
pub mod model;
pub mod rope;
pub mod synthetic;
pub mod weights;

/// Re-exported so callers can name devices and dtypes without depending on candle.
pub use candle_core::{DType, Device};
pub use checkpoint::{LoadOptions, load_checkpoint};
pub use config::ModelConfig;
pub use error::{EngineError, Result};
pub use latent_cache::LatentCache;
pub use model::{AttentionForm, Logits, Model};

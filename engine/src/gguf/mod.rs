//! llama.cpp's GGUF files of the `deepseek2` architecture: the container, the hyper-parameters,
//! the weights under Hugging Face names, and the tokenizer, all from one file.
//!
//! - [`GgufFile`]: the checked, memory-mapped container (any architecture).
//! - [`model_config`]: `deepseek2.*` metadata as a [`ModelConfig`].
//! - [`GgufWeights`]: the tensors as a [`crate::weights::WeightSource`], plus their stored bytes.
//! - [`text_tokenizer`]: `tokenizer.ggml.*` as the engine's tokenizer.
//! - [`GgufWriter`]: writes GGUF files, streaming their data (for synthetic models and tests).

mod config;
mod cursor;
mod file;
mod metadata;
mod names;
mod tensor_type;
mod tokenizer;
mod weights;
pub mod writer;

use std::path::Path;

pub use config::{ARCHITECTURE, check_architecture, model_config};
pub use file::{GgufFile, TensorInfo};
pub use metadata::MetadataValue;
pub use tensor_type::TensorType;
pub use tokenizer::{hf_tokenizer, text_tokenizer};
pub use weights::{GgufWeights, RawTensor};
pub use writer::{GgufWriter, TensorSpec};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// Everything a model needs from one GGUF file.
pub struct GgufModel {
    pub config: ModelConfig,
    pub weights: GgufWeights,
    pub tokenizer: TextTokenizer,
}

/// Opens a `deepseek2` GGUF file: its config, weights and tokenizer.
pub fn open(path: &Path) -> Result<GgufModel> {
    let (config, weights) = open_weights(path)?;
    let tokenizer = text_tokenizer(weights.file(), config.vocab_size)?;
    Ok(GgufModel {
        config,
        weights,
        tokenizer,
    })
}

/// Opens a `deepseek2` GGUF file for its config and weights only.
pub fn open_weights(path: &Path) -> Result<(ModelConfig, GgufWeights)> {
    let file = GgufFile::open(path)?;
    check_architecture(&file)?;
    refuse_what_the_model_would_ignore(&file)?;
    let config = model_config(&file)?;
    Ok((config, GgufWeights::new(file)))
}

/// Files whose meaning the DeepSeek-V2 forward pass would silently get wrong.
fn refuse_what_the_model_would_ignore(file: &GgufFile) -> Result<()> {
    let unsupported = |message: String| {
        Err(EngineError::Unsupported(format!(
            "{}: {message}",
            file.path().display()
        )))
    };
    if let Some(count) = file.metadata("split.count").and_then(MetadataValue::as_u64)
        && count > 1
    {
        return unsupported(format!(
            "this is one of {count} split GGUF files; merge them first \
             (llama-gguf-split --merge FIRST.gguf MERGED.gguf)"
        ));
    }
    if let Some(bias) = file
        .tensors()
        .iter()
        .find(|t| t.name().ends_with(".exp_probs_b.bias"))
    {
        return unsupported(format!(
            "tensor `{}` is a DeepSeek-V3 router bias (noaux_tc routing); this engine runs \
             DeepSeek-V2 routing",
            bias.name()
        ));
    }
    Ok(())
}

/// Whether `path` names a GGUF file: by its extension, or by its first four bytes.
pub fn is_gguf_path(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == b"GGUF")
}

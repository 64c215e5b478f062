//! Opening a model from disk: a Hugging Face DeepSeek-V2 directory (config.json + safetensors)
//! or one llama.cpp GGUF file of the `deepseek2` architecture.

use std::path::Path;

use candle_core::{DType, Device};

use crate::config::{ModelConfig, config_path};
use crate::error::{EngineError, Result};
use crate::gguf;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use crate::weights::SafetensorsWeights;

/// How to place a model in memory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype; `None` picks f32 on the CPU (which has no fast bf16 matmul) and bf16 on a GPU.
    pub dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
        }
    }
}

impl LoadOptions {
    pub fn compute_dtype(&self) -> DType {
        self.dtype.unwrap_or(if self.device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        })
    }
}

/// Loads the checkpoint at `path`: a model directory or a `.gguf` file.
pub fn load_checkpoint(path: &Path, options: &LoadOptions) -> Result<Model> {
    if gguf::is_gguf_path(path) {
        let (config, weights) = gguf::open_weights(path)?;
        return Model::load(config, &weights, options.compute_dtype(), &options.device);
    }
    let dir = checkpoint_dir(path)?;
    let config = ModelConfig::from_file(&config_path(dir))?;
    let weights = SafetensorsWeights::open_dir(dir)?;
    Model::load(config, &weights, options.compute_dtype(), &options.device)
}

/// Loads the checkpoint at `path` and its tokenizer: `tokenizer.json` beside a model
/// directory's config, or the vocabulary inside a `.gguf` file.
pub fn load_checkpoint_and_tokenizer(
    path: &Path,
    options: &LoadOptions,
) -> Result<(Model, TextTokenizer)> {
    if gguf::is_gguf_path(path) {
        let gguf::GgufModel {
            config,
            weights,
            tokenizer,
        } = gguf::open(path)?;
        let model = Model::load(config, &weights, options.compute_dtype(), &options.device)?;
        return Ok((model, tokenizer));
    }
    let model = load_checkpoint(path, options)?;
    let tokenizer = TextTokenizer::from_dir(path, model.config().vocab_size)?;
    Ok((model, tokenizer))
}

/// The config and tokenizer at `path` without the weights: config.json and tokenizer.json of a
/// model directory, or the metadata of a `.gguf` file.
pub fn load_config_and_tokenizer(path: &Path) -> Result<(ModelConfig, TextTokenizer)> {
    if gguf::is_gguf_path(path) {
        let file = gguf::GgufFile::open(path)?;
        let config = gguf::model_config(&file)?;
        let tokenizer = gguf::text_tokenizer(&file, config.vocab_size)?;
        return Ok((config, tokenizer));
    }
    let dir = checkpoint_dir(path)?;
    let config = ModelConfig::from_file(&config_path(dir))?;
    let tokenizer = TextTokenizer::from_dir(dir, config.vocab_size)?;
    Ok((config, tokenizer))
}

/// `path` as a model directory, or an error that says what to pass instead.
fn checkpoint_dir(path: &Path) -> Result<&Path> {
    if !path.exists() {
        return Err(EngineError::InvalidInput(format!(
            "model path {} does not exist; pass a Hugging Face model directory (config.json + \
             *.safetensors) or a .gguf file",
            path.display()
        )));
    }
    if !path.is_dir() {
        return Err(EngineError::InvalidInput(format!(
            "model path {} is a file but not a GGUF file; pass the directory holding config.json \
             and the *.safetensors files, or a .gguf file",
            path.display()
        )));
    }
    Ok(path)
}

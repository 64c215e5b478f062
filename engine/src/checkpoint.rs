//! Opening a model from disk: a Hugging Face DeepSeek-V2 directory (config.json + safetensors).

use std::path::Path;

use candle_core::{DType, Device};

use crate::config::{ModelConfig, config_path};
use crate::error::{EngineError, Result};
use crate::model::Model;
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

/// Loads the checkpoint directory `dir`.
pub fn load_checkpoint(dir: &Path, options: &LoadOptions) -> Result<Model> {
    if !dir.exists() {
        return Err(EngineError::InvalidInput(format!(
            "model path {} does not exist; pass a Hugging Face model directory (config.json + *.safetensors)",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(EngineError::InvalidInput(format!(
            "model path {} is a file; pass the directory holding config.json and the *.safetensors files",
            dir.display()
        )));
    }
    let config = ModelConfig::from_file(&config_path(dir))?;
    let weights = SafetensorsWeights::open_dir(dir)?;
    Model::load(config, &weights, options.compute_dtype(), &options.device)
}

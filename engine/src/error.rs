//! One error type for the engine. Every variant names the file, field or tensor at fault and,
//! where there is one, what the user can do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },

    #[error("{path}: `{field}` {problem}")]
    ConfigField {
        path: PathBuf,
        field: String,
        problem: String,
    },

    #[error(
        "{path}: model_type `{found}` is not supported; this engine runs `deepseek_v2` checkpoints"
    )]
    UnsupportedModelType { path: PathBuf, found: String },

    #[error("{dir}: no weights found: expected model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },

    #[error("{path}: not a readable safetensors file: {message}")]
    BadSafetensors { path: PathBuf, message: String },

    #[error("{path}: shard index is invalid: {message}")]
    BadShardIndex { path: PathBuf, message: String },

    #[error("tensor `{name}` is missing from {location}")]
    MissingTensor { name: String, location: String },

    #[error("tensor `{name}` in {path} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("tensor `{name}` in {path} has dtype {dtype}; supported on disk: F32, F16, BF16")]
    TensorDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },

    #[error("{path}: not a readable GGUF file: {message}")]
    BadGguf { path: PathBuf, message: String },

    #[error(
        "{path}: architecture `{found}` is not supported; this engine runs `deepseek2` GGUF files \
         (DeepSeek-V2 and DeepSeek-Coder-V2)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },

    #[error(
        "tensor `{name}` in {path} is stored as {found}, which this engine does not read; \
         supported: {supported}"
    )]
    TensorType {
        name: String,
        path: PathBuf,
        found: String,
        supported: String,
    },

    #[error("{0}")]
    InvalidInput(String),

    #[error("{0}")]
    Unsupported(String),

    #[error("{0}")]
    CacheFull(String),

    #[error("internal error (please report it): {0}")]
    Internal(String),

    #[error("the engine is not running: {0}")]
    EngineStopped(String),

    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

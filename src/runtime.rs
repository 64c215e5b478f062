//! Flags every model-running command shares (--model, --device, --dtype, --threads) and the
//! model they resolve to.

use std::path::PathBuf;

use clap::Args;
use engine::{
    DType, DeviceChoice, Engine, EngineOptions, InstructionSet, LoadOptions, Model, SamplingParams,
    limit_instruction_set, load_checkpoint,
};

pub const MODEL_ENV: &str = "DEEPSEEK_LSP_MODEL";

/// The model folder `DEEPSEEK_LSP_MODEL` names; set but empty counts as unset.
pub fn model_from_env() -> Option<PathBuf> {
    std::env::var_os(MODEL_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

#[derive(Args, Debug, Clone, Default)]
pub struct RuntimeArgs {
    /// The model: a Hugging Face directory (config.json + *.safetensors + tokenizer.json) or a
    /// llama.cpp .gguf file. Default: $DEEPSEEK_LSP_MODEL, else the built-in model.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu, cuda, cuda:N, or auto (the GPU when this build has CUDA and
    /// one answers, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute dtype: f32 or f16 on the CPU, bf16 too on a GPU. Default: f32 on CPU, bf16 on GPU.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Worker threads for the CPU kernels. Default: every core.
    #[arg(long)]
    pub threads: Option<usize>,
    /// The most capable instructions the CPU kernels may use: amx (AMX tiles for prompts, where
    /// Linux grants them), avx512-vnni, avx2 or portable. Default: the best this CPU has (to
    /// compare levels, or to rule one out).
    #[arg(long, value_name = "LEVEL", value_parser = parse_instruction_set)]
    pub kernels: Option<InstructionSet>,
    /// Memory for the prefix cache of latent KV pages, for example 512M or 2G.
    /// Default: a quarter of the available memory, at most 2G.
    #[arg(long, value_name = "SIZE", value_parser = server::settings::parse_size)]
    pub cache_budget: Option<usize>,
}

/// An instruction-set level by its name, for `--kernels`.
fn parse_instruction_set(name: &str) -> Result<InstructionSet, String> {
    InstructionSet::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = InstructionSet::ALL.iter().map(|l| l.name()).collect();
        format!("`{name}` is not one of {}", names.join(", "))
    })
}

impl RuntimeArgs {
    /// Applies --threads and --kernels; call before any computation starts threads. Returns the
    /// worker threads the kernels will use.
    pub fn apply_cpu_settings(&self) -> Result<usize, String> {
        if let Some(level) = self.kernels {
            limit_instruction_set(level);
        }
        // Asked here, on the main thread, so the answer (and the tiles' known product) comes
        // before any work, and the log says why a CPU's tiles are not used.
        tracing::info!(
            "CPU kernels: {} (AMX tiles: {})",
            engine::InstructionSet::in_use().name(),
            engine::tile_status().describe()
        );
        if let Some(n) = self.threads {
            if n == 0 {
                return Err("--threads must be at least 1".into());
            }
            // SAFETY: called from main before any other thread exists; candle and rayon read it later.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        }
        Ok(std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// Where and in what dtype the model loads, its device opened (`auto` resolved).
    pub fn load_options(&self) -> Result<LoadOptions, String> {
        Ok(LoadOptions {
            device: self.device_choice()?.open()?,
            dtype: self.dtype()?,
        })
    }

    /// `load` with these options; under `--device auto` a load that fails on the GPU runs again
    /// on the CPU ([`DeviceChoice::load`]).
    fn load_with<T>(
        &self,
        load: impl Fn(&LoadOptions) -> engine::error::Result<T>,
    ) -> Result<T, String> {
        let dtype = self.dtype()?;
        self.device_choice()?.load(|device| {
            let options = LoadOptions {
                device: device.clone(),
                dtype,
            };
            load(&options).map_err(|e| e.to_string())
        })
    }

    fn device_choice(&self) -> Result<DeviceChoice, String> {
        self.device
            .parse::<DeviceChoice>()
            .map_err(|e| format!("--{e}"))
    }

    fn dtype(&self) -> Result<Option<DType>, String> {
        Ok(match self.dtype.as_deref() {
            None => None,
            Some("f32") => Some(DType::F32),
            Some("f16") => Some(DType::F16),
            Some("bf16") => Some(DType::BF16),
            Some(other) => {
                return Err(format!(
                    "--dtype `{other}` not understood; use f32, f16 or bf16"
                ));
            }
        })
    }

    /// The model (directory or .gguf file) from --model, the environment, or the model built into the binary
    /// (written to the cache on first use); `None` when none is named and the build has none.
    pub fn model_dir_if_any(&self) -> Result<Option<PathBuf>, String> {
        match self.model.clone().or_else(model_from_env) {
            Some(dir) => Ok(Some(dir)),
            None => crate::embedded::model_dir(),
        }
    }

    /// Like `model_dir_if_any`, with an error saying how to name one when there is none.
    pub fn model_dir(&self) -> Result<PathBuf, String> {
        self.model_dir_if_any()?.ok_or_else(|| {
            format!(
                "no model given: pass --model PATH (a Hugging Face DeepSeek-V2 directory or a .gguf file) or set {MODEL_ENV}; \
                 this build has no built-in model"
            )
        })
    }

    pub fn load_model(&self) -> Result<Model, String> {
        self.load_model_from(&self.model_dir()?)
    }

    /// The model in `dir` (a `model_dir` the caller also reports).
    pub fn load_model_from(&self, dir: &std::path::Path) -> Result<Model, String> {
        self.load_with(|options| load_checkpoint(dir, options))
    }
}

impl RuntimeArgs {
    /// The model and its tokenizer, resident on a worker thread.
    pub fn load_engine(&self) -> Result<Engine, String> {
        self.load_engine_from(&self.model_dir()?)
    }

    /// The engine for the model in `dir` (a `model_dir` the caller also reports).
    pub fn load_engine_from(&self, dir: &std::path::Path) -> Result<Engine, String> {
        self.load_with(|options| Engine::load_with(dir, options, self.engine_options()))
    }

    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            cache_budget_bytes: self.cache_budget,
            ..EngineOptions::default()
        }
    }
}

/// How the next token is chosen.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 is greedy (the default); higher is more varied.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability adds up to p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler: the same seed and prompt give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams, String> {
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        params
            .validate()
            .map_err(|e| format!("--{}", e.replacen('_', "-", 1)))?;
        Ok(params)
    }
}

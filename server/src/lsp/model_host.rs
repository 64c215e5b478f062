//! The models behind the server: loaded in the background (with `$/progress`), swapped when the
//! settings point elsewhere, and reported once when they fail. Requests that arrive before a
//! model is ready get empty answers, never errors.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use engine::{DeviceChoice, Engine, EngineOptions, LoadOptions};
use tower_lsp_server::Client;
use tower_lsp_server::gen_lsp_types::{MessageType, ProgressToken};

use crate::settings::Settings;

/// What one engine is loaded from; a change of any of these reloads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey {
    pub path: PathBuf,
    pub device: String,
    pub cache_budget: Option<usize>,
}

#[derive(Clone)]
pub enum ModelState {
    /// No model path anywhere (settings, command line, environment).
    Unconfigured,
    Loading,
    Ready(Arc<Engine>),
    Failed(String),
}

struct Slot {
    key: Option<ModelKey>,
    state: ModelState,
}

/// The completion model and, when configured separately, the chat model.
pub struct ModelHost {
    completion: RwLock<Slot>,
    chat: RwLock<Slot>,
    /// A model path from the command line or the environment, used when settings name none.
    fallback: Option<PathBuf>,
}

impl ModelHost {
    pub fn new(fallback: Option<PathBuf>) -> Self {
        let empty = || {
            RwLock::new(Slot {
                key: None,
                state: ModelState::Unconfigured,
            })
        };
        Self {
            completion: empty(),
            chat: empty(),
            fallback,
        }
    }

    pub fn completion(&self) -> ModelState {
        self.completion
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .clone()
    }

    /// The chat model, or the completion model when no separate one is configured.
    pub fn chat(&self) -> ModelState {
        let chat = self.chat.read().unwrap_or_else(|e| e.into_inner());
        match chat.key {
            Some(_) => chat.state.clone(),
            None => self.completion(),
        }
    }

    /// Loads whatever the settings now name and is not loaded yet, in the background.
    pub fn apply(self: &Arc<Self>, settings: &Settings, client: &Client, progress: bool) {
        let completion_key = settings
            .model
            .clone()
            .or_else(|| self.fallback.clone())
            .map(|path| ModelKey {
                path,
                device: settings.device.clone(),
                cache_budget: settings.cache_budget,
            });
        let chat_key = settings
            .chat_model
            .clone()
            .filter(|chat| Some(chat) != completion_key.as_ref().map(|k| &k.path))
            .map(|path| ModelKey {
                path,
                device: settings.device.clone(),
                cache_budget: settings.cache_budget,
            });
        for (which, key) in [(Which::Completion, completion_key), (Which::Chat, chat_key)] {
            self.ensure(which, key, client, progress);
        }
    }

    fn slot(&self, which: Which) -> &RwLock<Slot> {
        match which {
            Which::Completion => &self.completion,
            Which::Chat => &self.chat,
        }
    }

    fn ensure(
        self: &Arc<Self>,
        which: Which,
        key: Option<ModelKey>,
        client: &Client,
        progress: bool,
    ) {
        {
            let mut slot = self.slot(which).write().unwrap_or_else(|e| e.into_inner());
            if slot.key == key && !matches!(slot.state, ModelState::Unconfigured) {
                return;
            }
            slot.key = key.clone();
            slot.state = if key.is_some() {
                ModelState::Loading
            } else {
                ModelState::Unconfigured
            };
        }
        let Some(key) = key else {
            if which == Which::Completion {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .show_message(
                            MessageType::Warning,
                            "deepseek-lsp has no model: set `model` to a DeepSeek-Coder-V2 directory \
                             (config.json, *.safetensors, tokenizer.json) or .gguf file, or start it \
                             with --model",
                        )
                        .await;
                });
            }
            return;
        };
        let host = self.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let title = format!("Loading {}", key.path.display());
            let token = ProgressToken::String(format!("deepseek/load/{}", which.name()));
            let ongoing = if progress
                && client
                    .create_work_done_progress(token.clone())
                    .await
                    .is_ok()
            {
                Some(client.progress(token, title.clone()).begin().await)
            } else {
                None
            };
            let load_key = key.clone();
            let loaded = tokio::task::spawn_blocking(move || load(&load_key)).await;
            let state = match loaded {
                Ok(Ok(engine)) => ModelState::Ready(Arc::new(engine)),
                Ok(Err(message)) => ModelState::Failed(message),
                Err(panic) => ModelState::Failed(format!("loading the model crashed: {panic}")),
            };
            let outcome = match &state {
                ModelState::Ready(engine) => format!("ready: {}", engine.summary()),
                ModelState::Failed(message) => format!("failed: {message}"),
                _ => String::new(),
            };
            {
                let mut slot = host.slot(which).write().unwrap_or_else(|e| e.into_inner());
                // A newer setting may have replaced this load meanwhile.
                if slot.key.as_ref() == Some(&key) {
                    slot.state = state.clone();
                }
            }
            if let Some(ongoing) = ongoing {
                ongoing.finish_with_message(outcome).await;
            }
            match state {
                ModelState::Failed(message) => {
                    tracing::error!("model {} failed to load: {message}", key.path.display());
                    client
                        .show_message(
                            MessageType::Error,
                            format!("deepseek-lsp could not load {}: {message}. Completions stay empty until `model` points at a working model.", key.path.display()),
                        )
                        .await;
                }
                ModelState::Ready(engine) => {
                    tracing::info!("model {} ready: {}", key.path.display(), engine.summary())
                }
                _ => {}
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Completion,
    Chat,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Self::Completion => "completion",
            Self::Chat => "chat",
        }
    }
}

/// The engine `key` names; under `auto` a load that fails on the GPU runs again on the CPU.
fn load(key: &ModelKey) -> Result<Engine, String> {
    let engine_options = EngineOptions {
        cache_budget_bytes: key.cache_budget,
        ..EngineOptions::default()
    };
    key.device.parse::<DeviceChoice>()?.load(|device| {
        let options = LoadOptions {
            device: device.clone(),
            dtype: None,
        };
        Engine::load_with(&key.path, &options, engine_options).map_err(|e| e.to_string())
    })
}

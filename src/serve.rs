//! `deepseek-lsp serve`: the language server over stdio.

use clap::Args;
use server::lsp::{ServeOptions, serve_stdio};
use server::settings::Settings;

use crate::runtime::RuntimeArgs;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    args.runtime.apply_cpu_settings()?;
    // Command-line values are the defaults; the client's settings override them.
    let mut settings = Settings {
        cache_budget: args.runtime.cache_budget,
        ..Settings::default()
    };
    // Empty when `serve` is implied (no command given): keep the default device.
    if !args.runtime.device.is_empty() {
        settings.device = args.runtime.device.clone();
    }
    if let Some(level) = std::env::var("DEEPSEEK_LSP_LOG")
        .ok()
        .filter(|l| ["error", "warn", "info", "debug", "trace"].contains(&l.as_str()))
    {
        settings.log_level = level;
    }
    // --model, the environment, else the built-in model (when this build has one).
    let model = match args.runtime.model_dir_if_any() {
        Ok(model) => model,
        // The server still answers without a model (and says so to the editor); the reason,
        // such as a cache folder it cannot write the built-in model to, goes to the log.
        Err(message) => {
            tracing::error!("{message}");
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve_stdio(ServeOptions { model, settings }));
    // The blocking stdin reader may still wait for input that will never come: do not wait for it.
    runtime.shutdown_background();
    Ok(())
}

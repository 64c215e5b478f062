//! `deepseek-lsp serve`: the language server over stdio.

mod actions;
mod backend;
mod model_host;
mod transport;
mod workspace_host;

use std::path::PathBuf;

use tower_lsp_server::{LspService, Server};

pub use backend::Backend;

use crate::settings::Settings;

/// How many requests the server works on at once. Completions wait on the engine, so this must
/// exceed the completions a client keeps in flight, or edits and cancellations would queue
/// behind them.
const CONCURRENT_REQUESTS: usize = 64;

/// What the command line decides before any client speaks.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The model when the client's settings name none.
    pub model: Option<PathBuf>,
    /// Settings before the client's own (device, cache budget...).
    pub settings: Settings,
}

/// Serves LSP over stdin/stdout until the client says exit.
pub async fn serve_stdio(options: ServeOptions) {
    let (service, socket) = LspService::build(|client| {
        Backend::new(client, options.model.clone(), options.settings.clone())
    })
    .custom_method("deepseek/explain", Backend::explain)
    .custom_method("deepseek/status", Backend::status)
    .custom_method("deepseek/context", Backend::context)
    .finish();
    let (input, output) = transport::guard(tokio::io::stdin(), tokio::io::stdout());
    Server::new(input, output, socket)
        .concurrency_level(CONCURRENT_REQUESTS)
        .serve(service)
        .await;
}

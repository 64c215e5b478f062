//! The `LanguageServer` implementation: protocol in, documents and suggestions out. Handlers stay
//! short: they read a document snapshot, hand work to the engine thread, and await its stream.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use engine::{GenerationEvent, SamplingParams, StopReason};
use serde_json::Value;
use tower_lsp_server::gen_lsp_types::*;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::{Client, LanguageServer};

use super::actions;
use super::model_host::{ModelHost, ModelState};
use super::workspace_host::{WorkspaceHost, file_path};
use crate::completion::{CompletionOptions as FimOptions, CompletionWindow};
use crate::documents::{
    Change, Document, DocumentError, DocumentStore, LinePosition, PositionEncoding,
};
use crate::postprocess::{Shaper, Suggestion, label, word_before};
use crate::settings::Settings;
use crate::suggestions::RecentSuggestions;
use crate::syntax::completion_mode;
use crate::workspace::context::Budget;

/// What the client can do, read once at initialize.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientFlags {
    pub work_done_progress: bool,
    pub configuration_pull: bool,
    pub code_action_resolve: bool,
    pub watch_files: bool,
}

pub struct Backend {
    pub(super) client: Client,
    pub(super) documents: Arc<DocumentStore>,
    utf8: AtomicBool,
    pub(super) settings: RwLock<Settings>,
    pub(super) models: Arc<ModelHost>,
    recent: Mutex<RecentSuggestions>,
    /// The newest completion request per document, to drop older ones after the debounce.
    latest: DashMap<String, u64>,
    sequence: AtomicU64,
    pub(super) flags: RwLock<ClientFlags>,
    pub(super) workspace: Arc<WorkspaceHost>,
}

/// How often a debouncing request checks whether a newer one replaced it.
const DEBOUNCE_CHECK: Duration = Duration::from_millis(5);

/// Characters of a completion label at most.
const LABEL_CHARS: usize = 60;

impl Backend {
    pub fn new(client: Client, model: Option<PathBuf>, settings: Settings) -> Self {
        // Errors also reach the user's editor, as window/logMessage.
        let (errors, mut forwarded) = tokio::sync::mpsc::unbounded_channel::<String>();
        crate::logging::forward_errors(errors);
        let forwarder = client.clone();
        tokio::spawn(async move {
            while let Some(message) = forwarded.recv().await {
                forwarder.log_message(MessageType::Error, message).await;
            }
        });
        Self {
            client,
            documents: Arc::new(DocumentStore::default()),
            utf8: AtomicBool::new(false),
            settings: RwLock::new(settings),
            models: Arc::new(ModelHost::new(model)),
            recent: Mutex::new(RecentSuggestions::default()),
            latest: DashMap::new(),
            sequence: AtomicU64::new(0),
            flags: RwLock::new(ClientFlags::default()),
            workspace: Arc::new(WorkspaceHost::default()),
        }
    }

    pub(super) fn encoding(&self) -> PositionEncoding {
        if self.utf8.load(Ordering::Relaxed) {
            PositionEncoding::Utf8
        } else {
            PositionEncoding::Utf16
        }
    }

    pub(super) fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn flags(&self) -> ClientFlags {
        *self.flags.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a settings payload, tells the user what was wrong with it, reloads models.
    async fn update_settings(&self, value: &Value) {
        let (warnings, settings, reindex) = {
            let mut settings = self.settings.write().unwrap_or_else(|e| e.into_inner());
            let before = (settings.workspace_index, settings.max_file_size);
            let warnings = settings.update(value);
            let reindex = before != (settings.workspace_index, settings.max_file_size);
            (warnings, settings.clone(), reindex)
        };
        if reindex && self.workspace.has_started() {
            self.workspace
                .start_indexing(&self.client, self.flags().work_done_progress, &settings);
        }
        for warning in warnings {
            tracing::warn!("{warning}");
            self.client
                .show_message(MessageType::Warning, format!("deepseek-lsp: {warning}"))
                .await;
        }
        apply_logging(&settings).await;
        if let Some(threads) = settings.threads
            && !engine::set_cpu_threads(threads)
        {
            tracing::info!("`threads` takes effect when the server starts (use --threads)");
        }
        self.models
            .apply(&settings, &self.client, self.flags().work_done_progress);
    }

    /// The workspace context for a cursor, built off the async threads.
    async fn build_context(
        &self,
        tokenizer: Arc<engine::TextTokenizer>,
        uri: &str,
        document: Document,
        cursor: usize,
        settings: Settings,
        context_window: usize,
    ) -> Result<crate::workspace::context::BuiltContext> {
        let workspace = self.workspace.clone();
        let documents = self.documents.clone();
        let uri = uri.to_string();
        tokio::task::spawn_blocking(move || {
            let budget = Budget {
                tokens: settings.prompt_budget(context_window),
                suffix_lines: settings.suffix_window,
            };
            workspace.build(&tokenizer, &documents, &uri, &document, cursor, budget)
        })
        .await
        .map_err(|e| {
            tracing::error!("building the prompt failed: {e}");
            Error::internal_error()
        })
    }

    /// Asks the client to report changes to source files of the table's languages.
    async fn watch_source_files(&self) {
        let extensions: Vec<&str> = crate::workspace::languages::LANGUAGES
            .iter()
            .flat_map(|l| l.extensions.iter().copied())
            .collect();
        let watchers = vec![
            FileSystemWatcher {
                glob_pattern: GlobPattern::Pattern(format!("**/*.{{{}}}", extensions.join(","))),
                kind: None,
            },
            FileSystemWatcher {
                glob_pattern: GlobPattern::Pattern(
                    "**/{.gitignore,.ignore,.deepseekignore}".into(),
                ),
                kind: None,
            },
        ];
        let options = DidChangeWatchedFilesRegistrationOptions { watchers };
        let registration = Registration {
            id: "deepseek/watch".into(),
            method: "workspace/didChangeWatchedFiles".into(),
            register_options: serde_json::to_value(options).ok(),
        };
        if let Err(e) = self.client.register_capability(vec![registration]).await {
            tracing::warn!("the client refused to watch files: {e}");
        }
    }

    async fn pull_configuration(&self) {
        if !self.flags().configuration_pull {
            return;
        }
        let item = ConfigurationItem {
            scope_uri: None,
            section: Some("deepseek".into()),
        };
        match self.client.configuration(vec![item]).await {
            Ok(values) => {
                if let Some(value) = values.into_iter().next() {
                    self.update_settings(&value).await;
                }
            }
            Err(e) => tracing::warn!("workspace/configuration failed: {e}"),
        }
    }

    pub(super) fn document(&self, uri: &Uri) -> Result<Document> {
        self.documents.get(uri.as_ref()).ok_or_else(|| {
            invalid_params(format!(
                "{} is not open (send textDocument/didOpen first)",
                uri.as_ref()
            ))
        })
    }

    pub(super) fn offset(&self, document: &Document, position: Position) -> Result<usize> {
        document
            .offset(line_position(position), self.encoding())
            .map_err(|e| invalid_params(e.to_string()))
    }

    pub(super) fn position(&self, document: &Document, offset: usize) -> Position {
        let p = document.position(offset, self.encoding());
        Position {
            line: p.line,
            character: p.character,
        }
    }

    /// The suggestion at `position`, shared by inline completion and completion: the recent
    /// cache, the debounce, the model and the cleanup. `Err(RequestCancelled)` when a newer
    /// request for the same document took over.
    async fn suggest(&self, uri: &Uri, position: Position) -> Result<Option<(Suggestion, Range)>> {
        let document = self.document(uri)?;
        let cursor = self.offset(&document, position)?;
        let settings = self.settings();
        if !settings.enabled_for(&document.language_id) {
            return Ok(None);
        }
        let window = CompletionWindow::around(
            &document.text,
            cursor,
            settings
                .context_budget
                .unwrap_or(crate::completion::DEFAULT_PROMPT_BUDGET),
            settings.suffix_window,
        );
        let context = window.context_hash();
        let key = uri.as_ref().to_string();
        let cached = self.recent.lock().unwrap_or_else(|e| e.into_inner()).rest(
            &key,
            position.line,
            context,
            &window.line_before,
        );
        if let Some(rest) = cached {
            return Ok(Some((
                Suggestion {
                    text: rest,
                    replaces: 0,
                },
                Range {
                    start: position,
                    end: position,
                },
            )));
        }

        let ticket = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        self.latest.insert(key.clone(), ticket);
        // The debounce ends early for a request a newer one replaced: it is answered at once.
        let superseded = || {
            self.latest
                .get(&key)
                .is_some_and(|latest| *latest != ticket)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(settings.debounce_ms);
        while tokio::time::Instant::now() < deadline && !superseded() {
            let left = deadline - tokio::time::Instant::now();
            tokio::time::sleep(left.min(DEBOUNCE_CHECK)).await;
        }
        if superseded() {
            return Err(Error::request_cancelled());
        }
        let mode = completion_mode(
            &document.text,
            cursor,
            &document.language_id,
            settings.single_line,
        );
        // maxTokens 0 stops here: everything but the model has run (how `bench lsp` measures).
        if settings.max_tokens == 0 {
            return Ok(None);
        }
        let ModelState::Ready(engine) = self.models.completion() else {
            return Ok(None);
        };
        let options = FimOptions {
            max_new_tokens: settings.max_tokens,
            sampling: SamplingParams {
                temperature: settings.temperature,
                ..SamplingParams::greedy()
            },
            stop: Vec::new(),
        };
        let Some(tokenizer) = engine.tokenizer().cloned() else {
            return Ok(None);
        };
        let built = self
            .build_context(
                tokenizer.clone(),
                &key,
                document.clone(),
                cursor,
                settings.clone(),
                engine.context_window(),
            )
            .await?;
        let mut shaper = Shaper::new(&built.cut_indentation, mode);
        let prompt = engine.completion_prompt(&built.prompt_blocks(), &built.prefix, &built.suffix);
        let mut request =
            engine::Request::new(engine::PromptInput::Prompt(prompt), options.max_new_tokens);
        request.sampling = options.sampling;
        request.supersedes = Some(key.clone());
        request.suppress_first = shaper.suppressed_first_tokens(&tokenizer);
        let mut generation = engine.submit(request);
        while let Some(event) = generation.next().await {
            match event {
                GenerationEvent::Text(delta) => {
                    if !shaper.push(&delta) {
                        break;
                    }
                }
                GenerationEvent::Finished(Ok(stats)) => {
                    if stats.stop_reason == StopReason::Superseded {
                        return Err(Error::request_cancelled());
                    }
                    break;
                }
                GenerationEvent::Finished(Err(e)) => {
                    tracing::error!("completion failed: {e}");
                    return Ok(None);
                }
            }
        }
        // Dropping the generation stops the engine if the filter ended the suggestion early.
        drop(generation);
        let Some(suggestion) = shaper.finish(
            &window.surroundings(),
            &document.text,
            cursor,
            &document.language_id,
        ) else {
            return Ok(None);
        };
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(
                &key,
                position.line,
                context,
                &window.line_before,
                &suggestion.text,
            );
        let end = self.position(&document, cursor + suggestion.replaces);
        Ok(Some((
            suggestion,
            Range {
                start: position,
                end,
            },
        )))
    }
}

async fn apply_logging(settings: &Settings) {
    crate::logging::set_level(&settings.log_level);
    if let Err(e) = crate::logging::set_file(settings.log_file.as_deref()) {
        tracing::error!("cannot open the log file {:?}: {e}", settings.log_file);
    }
}

pub(super) fn invalid_params(message: String) -> Error {
    Error {
        code: ErrorCode::InvalidParams,
        message: message.into(),
        data: None,
    }
}

pub(super) fn line_position(position: Position) -> LinePosition {
    LinePosition {
        line: position.line,
        character: position.character,
    }
}

/// The local folders of the workspace: its folders, else the root URI.
#[allow(deprecated)] // rootUri: older clients send only it
fn workspace_roots(params: &InitializeParams) -> Vec<PathBuf> {
    let folders = match &params.workspace_folders_initialize_params.workspace_folders {
        Some(WorkspaceFolders::WorkspaceFolderList(folders)) => folders
            .iter()
            .filter_map(|f| file_path(f.uri.as_ref()))
            .collect(),
        _ => Vec::new(),
    };
    if !folders.is_empty() {
        return folders;
    }
    params
        .root_uri
        .as_ref()
        .and_then(|uri| file_path(uri.as_ref()))
        .into_iter()
        .collect()
}

fn language_id(kind: &LanguageKind) -> String {
    String::from(kind.clone())
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let offered = params
            .capabilities
            .general
            .as_ref()
            .and_then(|g| g.position_encodings.clone())
            .unwrap_or_default();
        let utf8 = offered.contains(&PositionEncodingKind::UTF8);
        self.utf8.store(utf8, Ordering::Relaxed);
        {
            let capabilities = &params.capabilities;
            let mut flags = self.flags.write().unwrap_or_else(|e| e.into_inner());
            flags.work_done_progress = capabilities
                .window
                .as_ref()
                .and_then(|w| w.work_done_progress)
                .unwrap_or(false);
            flags.configuration_pull = capabilities
                .workspace
                .as_ref()
                .and_then(|w| w.configuration)
                .unwrap_or(false);
            flags.code_action_resolve = capabilities
                .text_document
                .as_ref()
                .and_then(|t| t.code_action.as_ref())
                .and_then(|c| c.resolve_support.as_ref())
                .is_some_and(|r| r.properties.iter().any(|p| p == "edit"));
        }
        {
            let watch_files = params
                .capabilities
                .workspace
                .as_ref()
                .and_then(|w| w.did_change_watched_files.as_ref())
                .and_then(|d| d.dynamic_registration)
                .unwrap_or(false);
            self.flags
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .watch_files = watch_files;
        }
        self.workspace.set_roots(workspace_roots(&params));
        if let Some(options) = &params.initialization_options {
            let warnings = self
                .settings
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .update(options);
            for warning in warnings {
                tracing::warn!("{warning}");
                self.client
                    .show_message(MessageType::Warning, format!("deepseek-lsp: {warning}"))
                    .await;
            }
        }
        let capabilities = ServerCapabilities {
            position_encoding: Some(if utf8 {
                PositionEncodingKind::UTF8
            } else {
                PositionEncodingKind::UTF16
            }),
            text_document_sync: Some(TextDocumentSync::Options(TextDocumentSyncOptions {
                open_close: Some(true),
                change: Some(TextDocumentSyncKind::Incremental),
                save: Some(Save::Bool(true)),
                ..Default::default()
            })),
            inline_completion_provider: Some(InlineCompletionProvider::Bool(true)),
            completion_provider: Some(CompletionOptions::default()),
            code_action_provider: Some(CodeActionProvider::CodeActionOptions(CodeActionOptions {
                code_action_kinds: Some(vec![
                    CodeActionKind::QuickFix,
                    CodeActionKind::RefactorRewrite,
                ]),
                resolve_provider: Some(true),
                ..Default::default()
            })),
            workspace: Some(WorkspaceOptions {
                workspace_folders: Some(WorkspaceFoldersServerCapabilities {
                    supported: Some(true),
                    change_notifications: Some(ChangeNotifications::Bool(true)),
                }),
                ..Default::default()
            }),
            execute_command_provider: Some(ExecuteCommandOptions {
                commands: actions::COMMANDS.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(InitializeResult {
            capabilities,
            server_info: Some(ServerInfo {
                name: "deepseek-lsp".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        self.pull_configuration().await;
        let settings = self.settings();
        apply_logging(&settings).await;
        self.models
            .apply(&settings, &self.client, self.flags().work_done_progress);
        self.workspace
            .start_indexing(&self.client, self.flags().work_done_progress, &settings);
        if self.flags().watch_files {
            self.watch_source_files().await;
        }
    }

    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let item = params.text_document;
        self.documents.open(
            item.uri.as_ref(),
            &item.text,
            item.version,
            &language_id(&item.language_id),
        );
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.text_document_identifier.uri;
        let changes = params
            .content_changes
            .into_iter()
            .map(|change| match change {
                TextDocumentContentChangeEvent::TextDocumentContentChangePartial(partial) => {
                    Change {
                        range: Some((
                            line_position(partial.range.start),
                            line_position(partial.range.end),
                        )),
                        text: partial.text,
                    }
                }
                TextDocumentContentChangeEvent::TextDocumentContentChangeWholeDocument(whole) => {
                    Change {
                        range: None,
                        text: whole.text,
                    }
                }
            })
            .collect::<Vec<Change>>();
        let edited_line = changes
            .first()
            .and_then(|c| c.range)
            .map_or(0, |(start, _)| start.line as usize);
        match self.documents.change(
            uri.as_ref(),
            params.text_document.version,
            changes,
            self.encoding(),
        ) {
            Ok(()) => self.workspace.note_change(uri.as_ref(), edited_line),
            Err(DocumentError::NotOpen) => {
                tracing::warn!(
                    "didChange for {}, which was never opened: ignored",
                    uri.as_ref()
                );
            }
            Err(e) => tracing::error!("didChange for {} could not be applied: {e}", uri.as_ref()),
        }
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        let event = FileEvent {
            uri: params.text_document.uri,
            kind: FileChangeType::Changed,
        };
        let workspace = self.workspace.clone();
        let _ = tokio::task::spawn_blocking(move || workspace.files_changed(&[event])).await;
    }

    async fn did_change_workspace_folders(&self, params: DidChangeWorkspaceFoldersParams) {
        let removed: Vec<PathBuf> = params
            .event
            .removed
            .iter()
            .filter_map(|f| file_path(f.uri.as_ref()))
            .collect();
        let mut roots = self.workspace.roots();
        roots.retain(|r| !removed.contains(r));
        for folder in &params.event.added {
            if let Some(path) = file_path(folder.uri.as_ref())
                && !roots.contains(&path)
            {
                roots.push(path);
            }
        }
        self.workspace.set_roots(roots);
        let settings = self.settings();
        self.workspace
            .start_indexing(&self.client, self.flags().work_done_progress, &settings);
    }

    async fn did_change_watched_files(&self, params: DidChangeWatchedFilesParams) {
        let workspace = self.workspace.clone();
        let _ = tokio::task::spawn_blocking(move || workspace.files_changed(&params.changes)).await;
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri;
        self.documents.close(uri.as_ref());
        self.workspace.forget_document(uri.as_ref());
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget_document(uri.as_ref());
        self.latest.remove(uri.as_ref());
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let empty = match &params.settings {
            Value::Null => true,
            Value::Object(map) => map.is_empty(),
            _ => false,
        };
        if empty {
            self.pull_configuration().await;
        } else {
            self.update_settings(&params.settings).await;
        }
    }

    async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> Result<Option<InlineCompletionResponse>> {
        let at = params.text_document_position_params;
        let items = match self.suggest(&at.text_document.uri, at.position).await? {
            Some((suggestion, range)) => vec![InlineCompletionItem {
                insert_text: InsertText::String(suggestion.text),
                filter_text: None,
                range: Some(range),
                command: None,
            }],
            None => Vec::new(),
        };
        Ok(Some(InlineCompletionResponse::InlineCompletionList(
            InlineCompletionList { items },
        )))
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let at = params.text_document_position_params;
        // Menus filter items by the word being typed (Helix, Neovim, VSCode): the item starts at
        // that word, so the suggestion survives the filter and the label reads naturally.
        let document = self.document(&at.text_document.uri)?;
        let cursor = self.offset(&document, at.position)?;
        let line_start = document
            .text
            .line_to_byte(document.text.byte_to_line(cursor));
        let line_before = document.text.byte_slice(line_start..cursor).to_string();
        let typed = word_before(&line_before);
        let items = match self.suggest(&at.text_document.uri, at.position).await? {
            Some((suggestion, range)) => {
                let whole = format!("{typed}{}", suggestion.text);
                let first_line = whole.lines().next().unwrap_or_default().to_string();
                vec![CompletionItem {
                    label: label(&whole, LABEL_CHARS),
                    kind: Some(CompletionItemKind::Snippet),
                    detail: Some("DeepSeek".into()),
                    documentation: Some(Documentation::MarkupContent(MarkupContent {
                        kind: MarkupKind::Markdown,
                        value: format!("```\n{}\n```", suggestion.text),
                    })),
                    preselect: Some(true),
                    sort_text: Some("0".into()),
                    filter_text: Some(first_line),
                    insert_text_format: Some(InsertTextFormat::PlainText),
                    text_edit: Some(CompletionItemTextEdit::TextEdit(TextEdit {
                        range: Range {
                            start: self.position(&document, cursor - typed.len()),
                            end: range.end,
                        },
                        new_text: whole,
                    })),
                    ..Default::default()
                }]
            }
            None => Vec::new(),
        };
        // Incomplete: the client asks again as the user types, and the suggestion cache answers.
        Ok(Some(CompletionResponse::CompletionList(CompletionList {
            is_incomplete: true,
            items,
            ..Default::default()
        })))
    }

    async fn code_action(
        &self,
        params: CodeActionParams,
    ) -> Result<Option<Vec<CodeActionResponse>>> {
        actions::code_actions(self, params).map(Some)
    }

    async fn code_action_resolve(&self, action: CodeAction) -> Result<CodeAction> {
        actions::resolve(self, action).await
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LspAny>> {
        actions::execute(self, params).await
    }
}

impl Backend {
    /// `deepseek/explain {textDocument, range}` -> `{markdown}`.
    pub async fn explain(&self, params: actions::ExplainParams) -> Result<actions::ExplainResult> {
        actions::explain_request(self, params).await
    }
}

/// `deepseek/status`: what the server is doing, for editor status bars and health checks.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// "unconfigured", "loading", "ready" or "failed".
    pub model: &'static str,
    pub model_error: Option<String>,
    /// Where the loaded model runs and what it holds: "cuda:0, bf16 compute, 9.61 GB of
    /// weights".
    pub model_summary: Option<String>,
    pub documents: usize,
    /// Files in the workspace index (0 until the first indexing finishes).
    pub indexed_files: usize,
    pub engine: Option<engine::EngineCounters>,
}

impl Backend {
    pub async fn status(&self) -> Result<Status> {
        let (model, model_error, model_summary, engine) = match self.models.completion() {
            ModelState::Unconfigured => ("unconfigured", None, None, None),
            ModelState::Loading => ("loading", None, None, None),
            ModelState::Ready(engine) => (
                "ready",
                None,
                Some(engine.summary().to_string()),
                Some(engine.counters()),
            ),
            ModelState::Failed(message) => ("failed", Some(message), None, None),
        };
        Ok(Status {
            model,
            model_error,
            model_summary,
            documents: self.documents.len(),
            indexed_files: self.workspace.indexed_files(),
            engine,
        })
    }
}

/// `deepseek/context`: the prompt a completion at a position would send, and why each block is
/// in it (the server's view of `deepseek-lsp context`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextReply {
    pub blocks: Vec<crate::workspace::context::Block>,
    pub prompt: String,
    pub prefix_start_line: usize,
    pub suffix_end_line: usize,
    pub prompt_tokens: usize,
}

impl Backend {
    pub async fn context(&self, params: TextDocumentPositionParams) -> Result<ContextReply> {
        let uri = params.text_document.uri;
        let document = self.document(&uri)?;
        let cursor = self.offset(&document, params.position)?;
        let ModelState::Ready(engine) = self.models.completion() else {
            return Err(Error {
                code: ErrorCode::ServerError(-32002),
                message: "the model is not loaded yet: prompts are counted with its tokenizer"
                    .into(),
                data: None,
            });
        };
        let Some(tokenizer) = engine.tokenizer().cloned() else {
            return Err(invalid_params("the model has no tokenizer".into()));
        };
        let built = self
            .build_context(
                tokenizer,
                uri.as_ref(),
                document,
                cursor,
                self.settings(),
                engine.context_window(),
            )
            .await?;
        Ok(ContextReply {
            prompt: built.text(),
            blocks: built.blocks,
            prefix_start_line: built.prefix_start_line,
            suffix_end_line: built.suffix_end_line,
            prompt_tokens: built.prompt_tokens,
        })
    }
}

//! The workspace index inside the server: indexed in the background with `$/progress`, kept
//! current from watched-file events and saved documents, and asked for a prompt context on every
//! completion, with the unsaved text of open documents and the places recently edited in them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dashmap::DashMap;
use engine::TextTokenizer;
use tower_lsp_server::Client;
use tower_lsp_server::gen_lsp_types::{FileChangeType, FileEvent, MessageType, ProgressToken};

use crate::documents::{Document, DocumentStore};
use crate::settings::Settings;
use crate::workspace::context::{
    Budget, BuiltContext, ContextBuilder, Cursor, RecentChunk, TreeSource,
};
use crate::workspace::index::WorkspaceIndex;
use crate::workspace::scan::ScanOptions;
use crate::workspace::tokens::ModelTokens;

/// Lines around a recent edit that make its chunk.
const RECENT_RADIUS: usize = 12;
/// Other documents whose recent edits are offered as context.
const RECENT_DOCUMENTS: usize = 3;

#[derive(Default)]
pub struct WorkspaceHost {
    roots: Mutex<Vec<PathBuf>>,
    index: RwLock<Option<WorkspaceIndex>>,
    /// One builder per tokenizer (its counts are the tokenizer's).
    builder: Mutex<Option<(usize, Arc<ContextBuilder>)>>,
    /// The last edited line of each document, and when.
    edits: DashMap<String, (usize, u64)>,
    /// Open documents whose unsaved text the index does not have yet.
    dirty: DashMap<String, ()>,
    sequence: AtomicU64,
    /// Bumped per indexing run, so a stale run does not replace a newer one.
    runs: AtomicU64,
}

impl WorkspaceHost {
    pub fn set_roots(&self, roots: Vec<PathBuf>) {
        *self.roots.lock().unwrap_or_else(|e| e.into_inner()) = roots;
    }

    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether indexing was ever asked for (settings changes re-index only after that).
    pub fn has_started(&self) -> bool {
        self.runs.load(Ordering::Relaxed) > 0
    }

    /// Files in the index (0 before the first run finishes).
    pub fn indexed_files(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, WorkspaceIndex::len)
    }

    /// Indexes the workspace folders in the background, reporting `$/progress` when the client
    /// supports it. Completions meanwhile use the file alone.
    pub fn start_indexing(self: &Arc<Self>, client: &Client, progress: bool, settings: &Settings) {
        let roots = self.roots();
        let run = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        if roots.is_empty() || !settings.workspace_index {
            *self.index.write().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        let options = ScanOptions {
            max_file_bytes: settings.max_file_size as u64,
            ..ScanOptions::default()
        };
        let host = self.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let token = ProgressToken::String(format!("deepseek/index/{run}"));
            let ongoing = if progress
                && client
                    .create_work_done_progress(token.clone())
                    .await
                    .is_ok()
            {
                Some(
                    client
                        .progress(token, "Indexing the workspace")
                        .with_percentage(0)
                        .begin()
                        .await,
                )
            } else {
                None
            };
            let (reports, mut received) = tokio::sync::mpsc::unbounded_channel::<(usize, usize)>();
            let worker = tokio::task::spawn_blocking(move || {
                let mut index = WorkspaceIndex::new(&roots, options);
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let stats = index.index_all(threads, &|done, total| {
                    let _ = reports.send((done, total));
                });
                (index, stats)
            });
            let mut last_percent = 0;
            while let Some((done, total)) = received.recv().await {
                let percent = (done * 100 / total.max(1)) as u32;
                if let Some(ongoing) = &ongoing
                    && percent > last_percent
                {
                    last_percent = percent;
                    ongoing
                        .report_with_message(format!("{done}/{total} files"), percent)
                        .await;
                }
            }
            let message = match worker.await {
                Ok((index, stats)) => {
                    let message = format!(
                        "{} files, {} lines, {} definitions in {:.1} s ({} skipped)",
                        stats.files,
                        stats.lines,
                        stats.definitions,
                        stats.seconds,
                        stats.skipped.total()
                    );
                    tracing::info!("workspace indexed: {message}");
                    if host.runs.load(Ordering::Relaxed) == run {
                        *host.index.write().unwrap_or_else(|e| e.into_inner()) = Some(index);
                    }
                    message
                }
                Err(e) => {
                    let message = format!("indexing the workspace failed: {e}");
                    tracing::error!("{message}");
                    client.log_message(MessageType::Error, &message).await;
                    message
                }
            };
            if let Some(ongoing) = ongoing {
                ongoing.finish_with_message(message).await;
            }
        });
    }

    /// A document changed at `line`: its unsaved text is newer than the index's.
    pub fn note_change(&self, uri: &str, line: usize) {
        let when = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.edits.insert(uri.to_string(), (line, when));
        self.dirty.insert(uri.to_string(), ());
    }

    pub fn forget_document(&self, uri: &str) {
        self.edits.remove(uri);
        if self.dirty.remove(uri).is_some()
            && let Some(path) = file_path(uri)
            && let Some(index) = self
                .index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
        {
            // Closed without saving: the disk has the truth again.
            index.refresh_path(&path);
        }
    }

    /// Files created, changed or deleted on disk (`workspace/didChangeWatchedFiles`, saves).
    pub fn files_changed(&self, events: &[FileEvent]) {
        let mut guard = self.index.write().unwrap_or_else(|e| e.into_inner());
        let Some(index) = guard.as_mut() else {
            return;
        };
        for event in events {
            let Some(path) = file_path(event.uri.as_ref()) else {
                continue;
            };
            if event.kind == FileChangeType::Deleted {
                index.remove_path(&path);
            } else {
                index.refresh_path(&path);
            }
        }
    }

    /// The prompt context for `cursor` (a byte offset) in `document`.
    pub fn build(
        &self,
        tokenizer: &Arc<TextTokenizer>,
        documents: &DocumentStore,
        uri: &str,
        document: &Document,
        cursor: usize,
        budget: Budget,
    ) -> BuiltContext {
        self.refresh_dirty(documents, uri);
        let builder = self.builder_for(tokenizer);
        let text = document.text.to_string();
        let path = file_path(uri);
        let guard = self.index.read().unwrap_or_else(|e| e.into_inner());
        let index = guard.as_ref();
        let relative = path
            .as_deref()
            .and_then(|p| index.and_then(|i| i.relative_path(p)))
            .or_else(|| {
                path.as_deref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            });
        let recent = self.recent_chunks(documents, uri, index);
        // The store's tree is re-parsed only if the builder needs it; when the document moved on
        // (or closed) meanwhile, the snapshot's own text is parsed.
        let syntax_tree = || {
            documents.syntax_tree(uri, document.version).or_else(|| {
                crate::workspace::symbols::parse_rope(document.language?, &document.text, None)
            })
        };
        let context_cursor = Cursor {
            text: &text,
            offset: cursor,
            relative: relative.as_deref(),
            language: document.language,
            tree: TreeSource::Lazy(&syntax_tree),
            heal_indentation: true,
        };
        builder.build(index, &context_cursor, budget, &recent)
    }

    fn builder_for(&self, tokenizer: &Arc<TextTokenizer>) -> Arc<ContextBuilder> {
        let key = Arc::as_ptr(tokenizer) as usize;
        let mut slot = self.builder.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some((k, builder)) if *k == key => builder.clone(),
            _ => {
                let builder = Arc::new(ContextBuilder::new(Box::new(ModelTokens::new(
                    tokenizer.clone(),
                ))));
                *slot = Some((key, builder.clone()));
                builder
            }
        }
    }

    /// Gives the index the unsaved text of open documents other than `current` (the current
    /// one changes on every keystroke; its own context comes from its live text).
    fn refresh_dirty(&self, documents: &DocumentStore, current: &str) {
        let stale: Vec<String> = self
            .dirty
            .iter()
            .map(|e| e.key().clone())
            .filter(|uri| uri != current)
            .collect();
        if stale.is_empty() {
            return;
        }
        let mut guard = self.index.write().unwrap_or_else(|e| e.into_inner());
        let Some(index) = guard.as_mut() else {
            return;
        };
        for uri in stale {
            self.dirty.remove(&uri);
            if let (Some(path), Some(document)) = (file_path(&uri), documents.get(&uri)) {
                index.upsert_text(&path, &document.text.to_string());
            }
        }
    }

    /// Chunks around the latest edits of the most recently edited other documents, in a fixed
    /// order (by path) so they do not reorder the prompt as edits alternate.
    fn recent_chunks(
        &self,
        documents: &DocumentStore,
        current: &str,
        index: Option<&WorkspaceIndex>,
    ) -> Vec<RecentChunk> {
        let mut edits: Vec<(String, usize, u64)> = self
            .edits
            .iter()
            .filter(|e| e.key() != current)
            .map(|e| (e.key().clone(), e.value().0, e.value().1))
            .collect();
        edits.sort_by_key(|(_, _, when)| std::cmp::Reverse(*when));
        edits.truncate(RECENT_DOCUMENTS);
        let mut chunks: Vec<RecentChunk> = edits
            .into_iter()
            .filter_map(|(uri, line, _)| {
                let document = documents.get(&uri)?;
                let lines = document.text.len_lines();
                let start = line.saturating_sub(RECENT_RADIUS);
                let end = (line + RECENT_RADIUS + 1).min(lines);
                let text = document
                    .text
                    .byte_slice(document.text.line_to_byte(start)..document.text.line_to_byte(end))
                    .to_string();
                let path = file_path(&uri);
                let relative = path
                    .as_deref()
                    .and_then(|p| index.and_then(|i| i.relative_path(p)))
                    .unwrap_or(uri);
                Some(RecentChunk {
                    relative,
                    language: document.language.map(|l| l.spec.name),
                    lines: start..end,
                    text,
                })
            })
            .collect();
        chunks.sort_by(|a, b| a.relative.cmp(&b.relative));
        chunks
    }
}

/// The local path of a `file://` URI (percent-decoded); `None` for other schemes.
pub fn file_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    // `file://host/path` names a host; only local (empty or localhost) paths are ours.
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len() + 1)
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(byte) => {
                decoded.push(byte as u8);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    Some(Path::new(&decoded).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_become_paths() {
        assert_eq!(
            file_path("file:///tmp/a%20b/c.rs"),
            Some(PathBuf::from("/tmp/a b/c.rs"))
        );
        assert_eq!(
            file_path("file://localhost/x.py"),
            Some(PathBuf::from("/x.py"))
        );
        assert_eq!(file_path("untitled:Untitled-1"), None);
        assert_eq!(file_path("file:///odd%2"), Some(PathBuf::from("/odd%2")));
    }
}

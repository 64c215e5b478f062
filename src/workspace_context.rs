//! The workspace flags of `complete` and `context`, and the prompt context they build for a
//! cursor in a file: the same builder the language server uses.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use engine::TextTokenizer;
use server::workspace::context::{Budget, BuiltContext, ContextBuilder, Cursor, TreeSource};
use server::workspace::index::{IndexStats, WorkspaceIndex};
use server::workspace::languages;
use server::workspace::scan::ScanOptions;
use server::workspace::tokens::ModelTokens;

#[derive(Args, Debug, Clone)]
pub struct WorkspaceArgs {
    /// Workspace folder to take context from. Default: the git repository holding the file,
    /// else the file's folder.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Use the file alone, without workspace context.
    #[arg(long, conflicts_with = "workspace")]
    pub no_workspace: bool,
    /// Tokens the whole prompt may take, special tokens included. Default: 4096, or less when
    /// the model's context window (max_position_embeddings) is smaller.
    #[arg(long)]
    pub budget: Option<usize>,
    /// Lines after the cursor line the prompt may show.
    #[arg(long, default_value_t = 64)]
    pub suffix_lines: usize,
    /// Files larger than this are not indexed (for example 512K or 2M).
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = server::settings::parse_size)]
    pub max_file_size: usize,
}

/// The smallest budget that leaves room for a line of code around the special tokens.
const MIN_BUDGET: usize = 32;

impl WorkspaceArgs {
    /// The workspace folder for `file`.
    pub fn root_for(&self, file: &Path) -> Option<PathBuf> {
        if self.no_workspace {
            return None;
        }
        if let Some(dir) = &self.workspace {
            return Some(dir.clone());
        }
        let absolute = file.canonicalize().ok()?;
        let folder = absolute.parent()?.to_path_buf();
        let repository = folder.ancestors().find(|a| a.join(".git").exists());
        Some(repository.unwrap_or(&folder).to_path_buf())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.budget.is_some_and(|b| b < MIN_BUDGET) {
            return Err(format!("--budget must be at least {MIN_BUDGET} tokens"));
        }
        if let Some(dir) = &self.workspace
            && !dir.is_dir()
        {
            return Err(format!("--workspace {}: not a folder", dir.display()));
        }
        Ok(())
    }

    /// The prompt budget: --budget, else the default that fits the model's context window.
    pub fn budget_for(&self, context_window: usize, max_new_tokens: usize) -> usize {
        self.budget.unwrap_or_else(|| {
            server::completion::default_prompt_budget(context_window, max_new_tokens)
        })
    }

    /// Indexes the workspace of `file` (progress on a terminal) and builds the context for
    /// the cursor at byte `offset` of `text` within `tokens` (the prefix healing the cursor
    /// line's indentation when asked, as the language server does).
    pub fn build(
        &self,
        file: &Path,
        text: &str,
        offset: usize,
        tokenizer: Arc<TextTokenizer>,
        tokens: usize,
        heal_indentation: bool,
    ) -> BuiltContext {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let index = self
            .root_for(file)
            .map(|root| index_folder(&root, self.max_file_size, threads).0);
        // The file alone (--no-workspace) is sent as it is, without a path header.
        let relative = index.as_ref().and_then(|i| i.relative_path(file));
        let cursor = Cursor {
            text,
            offset,
            relative: relative.as_deref(),
            language: languages::for_path(file),
            tree: TreeSource::Parse,
            heal_indentation,
        };
        let builder = ContextBuilder::new(Box::new(ModelTokens::new(tokenizer)));
        builder.build(
            index.as_ref(),
            &cursor,
            Budget {
                tokens,
                suffix_lines: self.suffix_lines,
            },
            &[],
        )
    }
}

/// Indexes one folder on `threads` threads, showing progress when stderr is a terminal.
pub fn index_folder(
    root: &Path,
    max_file_size: usize,
    threads: usize,
) -> (WorkspaceIndex, IndexStats) {
    let options = ScanOptions {
        max_file_bytes: max_file_size as u64,
        ..ScanOptions::default()
    };
    let mut index = WorkspaceIndex::new(&[root.to_path_buf()], options);
    let terminal = std::io::stderr().is_terminal();
    let stats = index.index_all(threads, &|done, total| {
        if terminal {
            eprint!("\rindexing {}: {done}/{total} files", root.display());
            let _ = std::io::stderr().flush();
        }
    });
    if terminal && stats.files > 0 {
        eprintln!(
            "\rindexed {} files ({} lines) in {:.2} s; {} skipped",
            stats.files,
            stats.lines,
            stats.seconds,
            stats.skipped.total()
        );
    }
    (index, stats)
}

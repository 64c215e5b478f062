//! `deepseek-lsp bench context`: how well the context builder finds what a completion needs, on
//! a real workspace, and how long it takes.
//!
//! Tasks: call sites of functions defined in exactly one other file of the workspace. Each call
//! is masked (the line is cut where the callee's name starts, the cursor placed there), the
//! context is built at each budget, and the task counts as recalled when the callee's signature
//! is in the prompt. Also reports indexing throughput and prompt-build time with a warm index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::TextTokenizer;
use serde_json::{Value, json};
use server::workspace::context::{Budget, ContextBuilder, Cursor, TreeSource};
use server::workspace::index::{IndexedFile, WorkspaceIndex};
use server::workspace::scan::ScanOptions;

use crate::workspace_context::index_folder;
use server::workspace::symbols;
use server::workspace::tokens::ModelTokens;

/// Missed tasks listed per budget, to see what the builder overlooks.
const MISSES_SHOWN: usize = 12;

pub struct ContextBenchOptions {
    pub workspace: PathBuf,
    pub budgets: Vec<usize>,
    pub tasks: usize,
    pub threads: usize,
}

/// One masked call site.
struct Task {
    file: Arc<IndexedFile>,
    /// Byte offset of the callee's name in the file.
    offset: usize,
    callee: String,
    signature: String,
    defined_in: String,
    /// Called through a value (`x.name(...)`): the callee is then matched by name only, which
    /// is weak truth (`"".join` is not the workspace's `join`), so these are reported apart.
    through_receiver: bool,
}

pub fn run(options: &ContextBenchOptions, tokenizer: Arc<TextTokenizer>) -> Result<Value, String> {
    if !options.workspace.is_dir() {
        return Err(format!(
            "--workspace {}: not a folder",
            options.workspace.display()
        ));
    }
    let (index, stats) = index_folder(
        &options.workspace,
        ScanOptions::default().max_file_bytes as usize,
        options.threads,
    );
    if index.is_empty() {
        return Err(format!(
            "{}: no source files of a known language to index",
            options.workspace.display()
        ));
    }
    let tasks = select_tasks(&index, options.tasks);
    if tasks.is_empty() {
        return Err(
            "no call site of a function defined in exactly one other file was found".into(),
        );
    }
    eprintln!("{} tasks", tasks.len());
    // Each task's masked text and its tree, made once: the server keeps each open document's
    // tree current as it changes, so parsing is not part of building a prompt.
    let masked: Vec<(String, Option<_>)> = tasks
        .iter()
        .map(|task| {
            let text = mask(&task.file.text, task.offset);
            let tree = symbols::parse(task.file.language, &text, None);
            (text, tree)
        })
        .collect();
    let cursor = |i: usize| {
        let (task, (text, tree)) = (&tasks[i], &masked[i]);
        Cursor {
            text,
            offset: task.offset,
            relative: Some(&task.file.relative),
            language: Some(task.file.language),
            tree: tree.as_ref().map_or(TreeSource::Parse, TreeSource::Parsed),
            heal_indentation: true,
        }
    };
    let budget_of = |tokens| Budget {
        tokens,
        suffix_lines: 64,
    };
    let builder = ContextBuilder::new(Box::new(ModelTokens::new(tokenizer)));
    // A first pass counts every line and snippet with the tokenizer once (what a server does on
    // the first request in a file); the measured passes then see a warm index and warm counts.
    let largest = options.budgets.iter().copied().max().unwrap_or(8192);
    let mut cold = Vec::with_capacity(tasks.len());
    for i in 0..tasks.len() {
        let started = Instant::now();
        builder.build(Some(&index), &cursor(i), budget_of(largest), &[]);
        cold.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let mut per_budget = Vec::new();
    for &budget in &options.budgets {
        let mut recalled = 0;
        let (mut direct, mut direct_recalled) = (0, 0);
        let mut times = Vec::with_capacity(tasks.len());
        let mut prompt_tokens = Vec::with_capacity(tasks.len());
        let mut misses = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            let started = Instant::now();
            let built = builder.build(Some(&index), &cursor(i), budget_of(budget), &[]);
            times.push(started.elapsed().as_secs_f64() * 1e3);
            prompt_tokens.push(built.prompt_tokens as f64);
            if built.prompt_tokens > budget {
                return Err(format!(
                    "{} at byte {}: {} prompt tokens exceed the budget of {budget}",
                    task.file.relative, task.offset, built.prompt_tokens
                ));
            }
            let found = built.text().contains(&task.signature);
            if !task.through_receiver {
                direct += 1;
                direct_recalled += usize::from(found);
            }
            if found {
                recalled += 1;
            } else if misses.len() < MISSES_SHOWN && !task.through_receiver {
                misses.push(json!({
                    "file": task.file.relative,
                    "line": task.file.text[..task.offset].matches('\n').count(),
                    "callee": task.callee,
                    "defined_in": task.defined_in,
                }));
            }
        }
        per_budget.push(json!({
            "budget": budget,
            "recall": direct_recalled as f64 / direct.max(1) as f64,
            "recalled": direct_recalled,
            "calls": direct,
            "recall_with_method_calls": recalled as f64 / tasks.len() as f64,
            "build_ms": summary(&mut times),
            "prompt_tokens": summary(&mut prompt_tokens),
            "misses": misses,
        }));
    }
    Ok(json!({
        "workspace": options.workspace.display().to_string(),
        "index": {
            "files": stats.files,
            "lines": stats.lines,
            "bytes": stats.bytes,
            "definitions": stats.definitions,
            "seconds": stats.seconds,
            "lines_per_second": stats.lines as f64 / stats.seconds.max(1e-9),
            "threads": options.threads,
            "skipped": stats.skipped.total(),
        },
        "tasks": tasks.len(),
        "first_pass_build_ms": summary(&mut cold),
        "examples": tasks.iter().take(3).map(|t| json!({"file": t.file.relative, "callee": t.callee})).collect::<Vec<_>>(),
        "budgets": per_budget,
    }))
}

/// Call sites whose callee is a function or method defined exactly once in the workspace, in
/// another file; spread evenly over the workspace when there are more than `limit`.
fn select_tasks(index: &WorkspaceIndex, limit: usize) -> Vec<Task> {
    let mut files: Vec<&Arc<IndexedFile>> = index.files().collect();
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    let mut all = Vec::new();
    for file in files {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(file.text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut seen_lines = std::collections::HashSet::new();
        for reference in &file.symbols.references {
            if reference.kind != "call" || index.definition_count(&reference.name) != 1 {
                continue;
            }
            let definitions = index.definitions_named(&reference.name);
            let Some((defining, definition)) = definitions.first() else {
                continue;
            };
            // Only callees in the caller's language family: a Python `print` is not a Java one.
            let callable = matches!(definition.kind.as_str(), "function" | "method")
                && file.language.same_family(defining.language);
            if defining.id == file.id || !callable || definition.signature.trim().is_empty() {
                continue;
            }
            // The name's byte offset: its first occurrence on the reference's line.
            let Some(&line_start) = line_starts.get(reference.line) else {
                continue;
            };
            let line_end = line_starts
                .get(reference.line + 1)
                .copied()
                .unwrap_or(file.text.len());
            let line = &file.text[line_start..line_end];
            let Some(column) = find_word(line, &reference.name) else {
                continue;
            };
            if !seen_lines.insert(reference.line) {
                continue;
            }
            all.push(Task {
                file: (*file).clone(),
                offset: line_start + column,
                callee: reference.name.clone(),
                signature: definition
                    .signature
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                defined_in: defining.relative.clone(),
                through_receiver: line[..column].ends_with('.'),
            });
        }
    }
    if all.len() <= limit {
        return all;
    }
    let step = all.len() as f64 / limit as f64;
    let keep: std::collections::HashSet<usize> =
        (0..limit).map(|i| (i as f64 * step) as usize).collect();
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, task)| task)
        .collect()
}

/// The column of `word` in `line` as a whole word.
fn find_word(line: &str, word: &str) -> Option<usize> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// The text with the line cut at `offset` (the call and the rest of its line removed).
fn mask(text: &str, offset: usize) -> String {
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    format!("{}{}", &text[..offset], &text[line_end..])
}

fn summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

/// A tokenizer from a tokenizer.json file (no model needed).
pub fn tokenizer_file(path: &Path) -> Result<Arc<TextTokenizer>, String> {
    TextTokenizer::from_file(path, usize::MAX)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

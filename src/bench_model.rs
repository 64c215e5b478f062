//! `deepseek-lsp bench model`: how well a model completes code it has not seen, with and without
//! the workspace context the builder gives it, next to a trivial baseline.
//!
//! Tasks are lines of the workspace's files, spread evenly. Next line: the cursor after the
//! line's indentation, the line removed, the model sees the text before it (prefix only).
//! Line middle: the cursor a third into the line's text, the rest of the line removed, the model
//! sees prefix and suffix (fill-in-the-middle). A task is an exact match when the generated line
//! equals the removed text (trailing spaces aside). The baseline repeats the earlier line that
//! followed the line most similar to the one before the cursor (next line), or the rest of an
//! earlier line starting with the same text (line middle).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use engine::{Engine, PromptInput, Request, SamplingParams};
use serde_json::{Value, json};
use server::indent_healing::IndentHealing;
use server::workspace::context::{Budget, ContextBuilder, Cursor, TreeSource};
use server::workspace::index::{IndexedFile, WorkspaceIndex};
use server::workspace::scan::ScanOptions;
use server::workspace::tokens::ModelTokens;

pub struct ModelBenchOptions {
    pub workspace: PathBuf,
    pub tasks: usize,
    pub budget: usize,
    pub max_tokens: usize,
    pub threads: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    NextLine,
    LineMiddle,
}

struct Task {
    file: Arc<IndexedFile>,
    kind: Kind,
    /// Byte offset of the cursor, and of the end of its line (the removed text between).
    cursor: usize,
    line_end: usize,
}

impl Task {
    fn truth(&self) -> &str {
        self.file.text[self.cursor..self.line_end].trim_end()
    }

    fn masked(&self) -> String {
        format!(
            "{}{}",
            &self.file.text[..self.cursor],
            &self.file.text[self.line_end..]
        )
    }
}

/// How one source of guesses did: exact matches and the sum of edit similarities
/// (1 - Levenshtein distance / the longer length, a graded measure beside exact match).
#[derive(Default)]
struct Tally {
    exact: usize,
    similarity: f64,
}

impl Tally {
    /// Counts `guess` against `truth` (trailing spaces aside).
    fn add(&mut self, guess: &str, truth: &str) {
        let guess = guess.trim_end();
        self.exact += usize::from(guess == truth);
        self.similarity += edit_similarity(guess, truth);
    }
}

#[derive(Default)]
struct Score {
    tasks: usize,
    with_context: Tally,
    without_context: Tally,
    baseline: Tally,
}

impl Score {
    fn json(&self) -> Value {
        let tasks = self.tasks.max(1) as f64;
        let exact = |t: &Tally| t.exact as f64 / tasks;
        let similarity = |t: &Tally| t.similarity / tasks;
        json!({
            "tasks": self.tasks,
            "exact_match_with_context": exact(&self.with_context),
            "exact_match_without_context": exact(&self.without_context),
            "exact_match_baseline": exact(&self.baseline),
            "edit_similarity_with_context": similarity(&self.with_context),
            "edit_similarity_without_context": similarity(&self.without_context),
            "edit_similarity_baseline": similarity(&self.baseline),
        })
    }
}

pub fn run(options: &ModelBenchOptions, engine: &Engine) -> Result<Value, String> {
    let tokenizer = engine
        .tokenizer()
        .cloned()
        .ok_or("the model has no tokenizer.json")?;
    let (index, _) = crate::workspace_context::index_folder(
        &options.workspace,
        ScanOptions::default().max_file_bytes as usize,
        options.threads,
    );
    let tasks = select_tasks(&index, options.tasks);
    if tasks.is_empty() {
        return Err(format!(
            "{}: no source lines to complete",
            options.workspace.display()
        ));
    }
    let builder = ContextBuilder::new(Box::new(ModelTokens::new(tokenizer)));
    let budget = Budget {
        tokens: options.budget,
        suffix_lines: 64,
    };
    let started = Instant::now();
    let (mut next_line, mut line_middle) = (Score::default(), Score::default());
    for (i, task) in tasks.iter().enumerate() {
        let masked = task.masked();
        let cursor = Cursor {
            text: &masked,
            offset: task.cursor,
            relative: Some(&task.file.relative),
            language: Some(task.file.language),
            tree: TreeSource::Parse,
            heal_indentation: true,
        };
        let truth = task.truth();
        let with = complete(
            engine,
            &builder.build(Some(&index), &cursor, budget, &[]),
            task.kind,
            options.max_tokens,
        )?;
        let without = complete(
            engine,
            &builder.build(None, &cursor, budget, &[]),
            task.kind,
            options.max_tokens,
        )?;
        let guess = baseline(task);

        let score = match task.kind {
            Kind::NextLine => &mut next_line,
            Kind::LineMiddle => &mut line_middle,
        };
        score.tasks += 1;
        score.with_context.add(&with, truth);
        score.without_context.add(&without, truth);
        score.baseline.add(&guess, truth);
        if (i + 1) % 50 == 0 {
            eprintln!("{}/{} tasks", i + 1, tasks.len());
        }
    }
    Ok(json!({
        "workspace": options.workspace.display().to_string(),
        "budget": options.budget,
        "seconds": started.elapsed().as_secs_f64(),
        "next_line": next_line.json(),
        "line_middle": line_middle.json(),
    }))
}

/// The model's greedy completion of the rest of the line.
fn complete(
    engine: &Engine,
    built: &server::workspace::context::BuiltContext,
    kind: Kind,
    max_tokens: usize,
) -> Result<String, String> {
    // As the editor does: after bare indentation the model writes the line's indentation itself.
    let mut healing = IndentHealing::new(&built.cut_indentation);
    let prompt = match kind {
        Kind::NextLine => engine::Prompt::prefix_only(&built.prompt_blocks(), &built.prefix),
        Kind::LineMiddle => {
            engine.completion_prompt(&built.prompt_blocks(), &built.prefix, &built.suffix)
        }
    };
    let mut request = Request::new(PromptInput::Prompt(prompt), max_tokens);
    request.sampling = SamplingParams::greedy();
    request.stop = vec!["\n".to_string()];
    if let Some(tokenizer) = engine.tokenizer() {
        request.suppress_first = healing.suppressed_first_tokens(tokenizer);
    }
    let (text, _) = engine.submit(request).wait().map_err(|e| e.to_string())?;
    Ok(healing.push(&text))
}

/// Lines worth completing (some text beyond indentation, not a comment), spread evenly over the
/// workspace, alternating the two kinds.
fn select_tasks(index: &WorkspaceIndex, limit: usize) -> Vec<Task> {
    let mut files: Vec<&Arc<IndexedFile>> = index.files().collect();
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    let mut candidates = Vec::new();
    for file in files {
        let comment = file.language.spec.line_comment;
        let mut start = 0;
        for line in file.text.split_inclusive('\n') {
            let body = line.trim();
            let indent = line.len() - line.trim_start().len();
            if body.len() >= 8 && !body.starts_with(comment) && start > 0 {
                candidates.push((file, start + indent, start + line.trim_end().len()));
            }
            start += line.len();
        }
    }
    let step = (candidates.len() as f64 / limit.max(1) as f64).max(1.0);
    let mut chosen = Vec::new();
    let mut i = 0.0;
    while (i as usize) < candidates.len() && chosen.len() < limit {
        let (file, content_start, line_end) = candidates[i as usize];
        let kind = if chosen.len() % 2 == 0 {
            Kind::NextLine
        } else {
            Kind::LineMiddle
        };
        let cursor = match kind {
            Kind::NextLine => content_start,
            Kind::LineMiddle => {
                let third = content_start + (line_end - content_start) / 3;
                (third..line_end)
                    .find(|&c| file.text.is_char_boundary(c))
                    .unwrap_or(line_end)
            }
        };
        chosen.push(Task {
            file: file.clone(),
            kind,
            cursor,
            line_end,
        });
        i += step;
    }
    chosen
}

/// The trivial prediction from earlier lines of the same file.
fn baseline(task: &Task) -> String {
    let before = &task.file.text[..task.cursor];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let earlier: Vec<&str> = task.file.text[..line_start].lines().collect();
    match task.kind {
        Kind::NextLine => {
            let Some(previous) = earlier.last() else {
                return String::new();
            };
            let target = words(previous);
            // The line that followed the earlier line most like the previous one.
            let best = (0..earlier.len().saturating_sub(1)).max_by(|&a, &b| {
                jaccard(&words(earlier[a]), &target)
                    .total_cmp(&jaccard(&words(earlier[b]), &target))
                    .then(a.cmp(&b))
            });
            best.map_or(String::new(), |i| earlier[i + 1].trim_start().to_string())
        }
        Kind::LineMiddle => {
            let typed = before[line_start..].trim_start();
            earlier
                .iter()
                .rev()
                .find_map(|line| line.trim_start().strip_prefix(typed))
                .map_or(String::new(), str::to_string)
        }
    }
}

/// 1 - (Levenshtein distance in characters) / (the longer length); 1 for two empty strings.
fn edit_similarity(a: &str, b: &str) -> f64 {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 1.0;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    1.0 - row[b.len()] as f64 / longer as f64
}

fn words(line: &str) -> HashSet<&str> {
    line.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

fn jaccard(a: &HashSet<&str>, b: &HashSet<&str>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        0.0
    } else {
        a.intersection(b).count() as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(text: &str, line: usize, kind: Kind) -> Task {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.py"), text).unwrap();
        let mut index = WorkspaceIndex::new(&[dir.path().to_path_buf()], ScanOptions::default());
        index.index_all(1, &|_, _| {});
        let file = index.file_by_relative("m.py").unwrap().clone();
        let start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
        let content = text[start..].len() - text[start..].trim_start_matches(' ').len();
        let end = start + text[start..].find('\n').unwrap();
        let cursor = match kind {
            Kind::NextLine => start + content,
            Kind::LineMiddle => start + content + 4,
        };
        Task {
            file,
            kind,
            cursor,
            line_end: end,
        }
    }

    #[test]
    fn edit_similarity_counts_character_edits() {
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
        assert!(
            (edit_similarity("é", "e") - 0.0).abs() < 1e-12,
            "characters, not bytes"
        );
    }

    #[test]
    fn the_baseline_repeats_what_followed_similar_lines() {
        let text = "for a in xs:\n    total += a\nprint(total)\nfor b in ys:\n    total += b\n";
        let next = task(text, 4, Kind::NextLine);
        assert_eq!(next.truth(), "total += b");
        assert_eq!(
            next.masked(),
            "for a in xs:\n    total += a\nprint(total)\nfor b in ys:\n    \n"
        );
        assert_eq!(
            baseline(&next),
            "total += a",
            "what followed the most similar line"
        );
        let middle = task(text, 4, Kind::LineMiddle);
        assert_eq!(middle.truth(), "l += b");
        assert_eq!(
            baseline(&middle),
            "l += a",
            "the rest of an earlier line with the same start"
        );
    }
}

//! `deepseek-lsp review`: a code review of `git diff base...head` for CI, written as SARIF,
//! rdjsonl, GitLab Code Quality, GitHub annotations, Markdown or JSON.

use std::io::{IsTerminal, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Args, ValueEnum};
use engine::{Engine, PromptInput, Request, SamplingParams};
use ropey::Rope;
use server::review::diff::{FileDiff, parse_diff};
use server::review::findings::{Finding, Severity, parse_answer};
use server::review::report::{FORMATS, Report};
use server::review::{HunkPrompt, narrowed, numbered, review_prompt, shown_lines};
use server::workspace::context::{BlockKind, Budget, ContextBuilder, Cursor, TreeSource};
use server::workspace::index::WorkspaceIndex;
use server::workspace::languages;
use server::workspace::tokens::ModelTokens;

use crate::runtime::RuntimeArgs;

/// Tokens of definitions from elsewhere shown with a hunk, unless --context-tokens says.
pub const DEFAULT_CONTEXT_TOKENS: usize = 1024;

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// The revision the change starts from; the diff is `BASE...HEAD` (from their merge base).
    #[arg(long, default_value = "HEAD~1")]
    base: String,
    /// The revision with the change.
    #[arg(long, default_value = "HEAD")]
    head: String,
    /// The git repository (any folder inside it). Default: the current folder.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Output format: sarif, rdjsonl, gitlab, github, markdown or json.
    #[arg(long, default_value = "markdown", value_parser = clap::builder::PossibleValuesParser::new(FORMATS))]
    format: String,
    /// Write the report here instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Exit 1 when a finding is at least this severe.
    #[arg(long, value_enum, default_value = "never")]
    fail_on: FailOn,
    /// Most findings reported (the most severe first).
    #[arg(long, default_value_t = 50)]
    max_findings: usize,
    /// Most tokens of an answer about one hunk.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Tokens of definitions from elsewhere in the repository shown with each hunk.
    #[arg(long, default_value_t = DEFAULT_CONTEXT_TOKENS)]
    context_tokens: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailOn {
    Never,
    Note,
    Warning,
    Error,
}

impl FailOn {
    fn reached_by(self, severity: Severity) -> bool {
        match self {
            Self::Never => false,
            Self::Note => true,
            Self::Warning => severity >= Severity::Warning,
            Self::Error => severity == Severity::Error,
        }
    }
}

/// One hunk ready for the model.
struct Job {
    file: usize,
    lines: std::ops::RangeInclusive<usize>,
    prompt: engine::Prompt,
}

/// A change as the review sees it: the repository, the diff's files and their text at head.
pub struct Change {
    pub root: PathBuf,
    pub range: String,
    pub files: Vec<FileDiff>,
    /// Each file's text at head (`None`: not shown as UTF-8 text, not reviewed).
    pub texts: Vec<Option<String>>,
}

/// Reads `base...head` of the repository holding `folder`; exit-2 errors for a folder outside a
/// repository, an unknown revision or an unreadable diff.
pub fn read_change(folder: &Path, base: &str, head: &str) -> Result<Change, String> {
    let toplevel = git(folder, &["rev-parse", "--show-toplevel"])
        .map_err(|e| format!("{}: not inside a git repository ({e})", folder.display()))?;
    let root = PathBuf::from(toplevel.trim_end_matches(['\n', '\r']));
    for revision in [base, head] {
        git(
            &root,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{revision}^{{commit}}"),
            ],
        )
        .map_err(|_| format!("`{revision}` is not a revision of {}", root.display()))?;
    }
    let range = format!("{base}...{head}");
    let diff = git(
        &root,
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--find-renames",
            "-U0",
            &range,
            "--",
        ],
    )?;
    let files = parse_diff(&diff).map_err(|e| format!("cannot read `git diff {range}`: {e}"))?;
    let texts = files
        .iter()
        .map(|f| git(&root, &["show", &format!("{head}:{}", f.path)]).ok())
        .collect();
    Ok(Change {
        root,
        range,
        files,
        texts,
    })
}

/// What the model said about a change.
pub struct Reviewed {
    /// Prompts answered: one per hunk, more for a hunk split to fit the model's window.
    pub hunks: usize,
    /// Added lines too long for the model's window even alone, not reviewed.
    pub unreviewed_lines: usize,
    pub findings: Vec<Finding>,
    pub dropped: std::collections::BTreeMap<server::review::findings::Dropped, usize>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// Asks `engine` about every hunk of `change` (progress on stderr) and validates the answers.
pub fn review_change(
    change: &Change,
    engine: &Engine,
    context_tokens: usize,
    max_tokens: usize,
) -> Result<Reviewed, String> {
    let tokenizer = engine
        .tokenizer()
        .cloned()
        .ok_or("the model has no tokenizer.json; a review needs one")?;
    let builder = ContextBuilder::new(Box::new(ModelTokens::new(tokenizer.clone())));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (index, _) = crate::workspace_context::index_folder(
        &change.root,
        server::workspace::scan::ScanOptions::default().max_file_bytes as usize,
        threads,
    );
    let limits = PromptLimits {
        context_tokens,
        // Prompt and answer share the model's window.
        prompt_tokens: engine.context_window().saturating_sub(max_tokens).max(1),
        tokenizer: &tokenizer,
    };
    let Prepared {
        jobs,
        unreviewed_lines,
    } = prepare(&change.files, &change.texts, &index, &builder, &limits);
    let progress = Progress::new(jobs.len());
    let mut reviewed = Reviewed {
        hunks: jobs.len(),
        unreviewed_lines,
        findings: Vec::new(),
        dropped: Default::default(),
        prompt_tokens: 0,
        generated_tokens: 0,
    };
    for (done, (job, answer)) in jobs
        .iter()
        .zip(answers(engine, &jobs, max_tokens))
        .enumerate()
    {
        let (answer, stats) = answer?;
        reviewed.prompt_tokens += stats.prompt_tokens;
        reviewed.generated_tokens += stats.generated_tokens;
        let parsed = parse_answer(&answer, &change.files[job.file], &job.lines);
        for (reason, count) in parsed.dropped {
            *reviewed.dropped.entry(reason).or_default() += count;
        }
        reviewed.findings.extend(parsed.findings);
        progress.step(done + 1, &change.files[job.file].path);
    }
    Ok(reviewed)
}

/// Runs the review; `Ok(true)` when a finding reached `--fail-on` (exit 1).
pub fn run(args: ReviewArgs) -> Result<bool, String> {
    args.runtime.apply_cpu_settings()?;
    let started = Instant::now();
    let folder = args.workspace.clone().unwrap_or_else(|| PathBuf::from("."));
    let change = read_change(&folder, &args.base, &args.head)?;
    let engine = args.runtime.load_engine()?;
    let Reviewed {
        hunks,
        unreviewed_lines,
        mut findings,
        dropped,
        ..
    } = review_change(&change, &engine, args.context_tokens, args.max_tokens)?;
    // The most severe first, then in diff order; at most --max-findings.
    findings.sort_by_key(|f: &Finding| std::cmp::Reverse(f.severity));
    let cut = findings.len().saturating_sub(args.max_findings);
    findings.truncate(args.max_findings);
    let snippet_of = |f: &Finding| -> Vec<String> {
        let index = change.files.iter().position(|file| file.path == f.path);
        let text = index.and_then(|i| change.texts[i].as_deref()).unwrap_or("");
        text.lines()
            .skip(f.start_line - 1)
            .take(f.end_line + 1 - f.start_line)
            .map(str::to_string)
            .collect()
    };
    let mut report = Report::new(findings, snippet_of);
    report.dropped = dropped;
    report.tool_version = env!("CARGO_PKG_VERSION").to_string();
    report.base = args.base.clone();
    report.head = args.head.clone();
    report.hunks = hunks;
    report.seconds = started.elapsed().as_secs_f64();
    let rendered = report
        .render(&args.format)
        .expect("clap accepts only the formats there are");
    match &args.output {
        Some(path) => std::fs::write(path, rendered)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => std::io::stdout()
            .write_all(rendered.as_bytes())
            .map_err(|e| format!("cannot write the report: {e}"))?,
    }
    let count = |s| {
        report
            .findings
            .iter()
            .filter(|f| f.finding.severity == s)
            .count()
    };
    eprintln!(
        "review {}: {hunks} hunk(s) in {} file(s), {} finding(s) ({} error, {} warning, {} note){}, {} answer line(s) dropped{}, {:.1} s",
        change.range,
        change.files.len(),
        report.findings.len(),
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note),
        if cut > 0 {
            format!(", {cut} more cut by --max-findings")
        } else {
            String::new()
        },
        report.dropped_total(),
        if unreviewed_lines > 0 {
            format!(
                ", {unreviewed_lines} added line(s) too long for the model's window not reviewed"
            )
        } else {
            String::new()
        },
        report.seconds,
    );
    Ok(report
        .findings
        .iter()
        .any(|f| args.fail_on.reached_by(f.finding.severity)))
}

/// How large a hunk's prompt may be.
struct PromptLimits<'a> {
    /// Tokens of definitions from elsewhere.
    context_tokens: usize,
    /// Tokens of the whole prompt: definitions go first, then code around the hunk, until it
    /// fits (a hunk larger than this alone is sent whole).
    prompt_tokens: usize,
    tokenizer: &'a engine::TextTokenizer,
}

/// The prompts of a change, and what could not be put in any.
#[derive(Default)]
struct Prepared {
    jobs: Vec<Job>,
    /// Added lines that alone do not fit the model's window (a minified line, a data blob).
    unreviewed_lines: usize,
}

/// A prompt per hunk (or per part of a hunk too large for the window): its enclosing function
/// (or a window) numbered, what it removed, and the definitions the context builder finds for
/// it in the repository, within `limits`.
fn prepare(
    files: &[FileDiff],
    texts: &[Option<String>],
    index: &WorkspaceIndex,
    builder: &ContextBuilder,
    limits: &PromptLimits,
) -> Prepared {
    let mut prepared = Prepared::default();
    for (file_index, (file, text)) in files.iter().zip(texts).enumerate() {
        // A file git cannot show as UTF-8 text at HEAD is not reviewed.
        let Some(text) = text else { continue };
        let rope = Rope::from_str(text);
        let language = languages::for_path(Path::new(&file.path));
        let language_id = language.map_or("", |l| l.spec.lsp_ids[0]);
        for hunk in &file.hunks {
            let Some(lines) = hunk.span() else { continue };
            let line_count = rope.len_lines();
            let first_line_start =
                rope.line_to_byte((lines.start() - 1).min(line_count.saturating_sub(1)));
            let function = server::syntax::enclosing_function(&rope, first_line_start, language_id)
                .map(|(start, end)| {
                    rope.byte_to_line(start) + 1
                        ..=rope.byte_to_line(end.saturating_sub(1).max(start)) + 1
                });
            let cursor = Cursor {
                text,
                offset: first_line_start,
                relative: Some(&file.path),
                language,
                tree: TreeSource::Parse,
                heal_indentation: false,
            };
            let built = builder.build(
                Some(index),
                &cursor,
                Budget {
                    tokens: limits.context_tokens,
                    suffix_lines: 0,
                },
                &[],
            );
            let definitions: Vec<String> = built
                .blocks
                .iter()
                .filter(|b| matches!(b.kind, BlockKind::Import | BlockKind::Definition))
                .map(|b| b.text.clone())
                .collect();
            let view = HunkView {
                path: &file.path,
                text,
                added: &hunk.added,
                removed: &hunk.removed,
                function,
                line_count,
                definitions: &definitions,
            };
            // A span too large for the window is reviewed in halves, in order.
            let mut spans = vec![lines];
            while let Some(span) = spans.pop() {
                match fitted_prompt(&view, &span, limits) {
                    Some(prompt) => prepared.jobs.push(Job {
                        file: file_index,
                        lines: span,
                        prompt,
                    }),
                    None if span.start() < span.end() => {
                        let middle = span.start() + (span.end() - span.start()) / 2;
                        spans.push(middle + 1..=*span.end());
                        spans.push(*span.start()..=middle);
                    }
                    None => prepared.unreviewed_lines += 1,
                }
            }
        }
    }
    prepared
}

/// What a hunk's prompts are made from.
struct HunkView<'a> {
    path: &'a str,
    text: &'a str,
    added: &'a [usize],
    removed: &'a [String],
    /// The enclosing function's lines, when there is one.
    function: Option<RangeInclusive<usize>>,
    line_count: usize,
    definitions: &'a [String],
}

/// The prompt about `span` (some of the hunk's lines) that fits `limits`: definitions go first,
/// then the removed lines, then the code around the span narrows toward it. `None` when even the
/// span's own lines do not fit.
fn fitted_prompt(
    view: &HunkView,
    span: &RangeInclusive<usize>,
    limits: &PromptLimits,
) -> Option<engine::Prompt> {
    let mut shown = shown_lines(span, view.function.clone(), view.line_count);
    let mut definitions = view.definitions.len();
    let mut removed = view.removed;
    loop {
        let prompt = review_prompt(&HunkPrompt {
            path: view.path,
            code: &numbered(view.text, &shown, view.added),
            removed,
            definitions: &view.definitions[..definitions],
        });
        let tokens = limits
            .tokenizer
            .encode_prompt(&prompt)
            .map_or(usize::MAX, |ids| ids.len());
        if tokens <= limits.prompt_tokens {
            return Some(prompt);
        }
        if definitions > 0 {
            definitions -= 1;
        } else if !removed.is_empty() {
            removed = &[];
        } else {
            let narrower = narrowed(&shown, span);
            if narrower == shown {
                return None;
            }
            shown = narrower;
        }
    }
}

/// The model's answer for each job, in order. All are queued at once: the engine runs them one
/// after another, each reusing the cached prefix the instructions share.
fn answers<'a>(
    engine: &'a Engine,
    jobs: &'a [Job],
    max_tokens: usize,
) -> impl Iterator<Item = Result<(String, engine::GenerationStats), String>> + 'a {
    let generations: Vec<_> = jobs
        .iter()
        .map(|job| {
            let mut request = Request::new(PromptInput::Prompt(job.prompt.clone()), max_tokens);
            request.sampling = SamplingParams::greedy();
            engine.submit(request)
        })
        .collect();
    generations
        .into_iter()
        .map(|generation| generation.wait().map_err(|e| e.to_string()))
}

/// A bar on a terminal, plain lines in CI logs.
struct Progress {
    total: usize,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn step(&self, done: usize, path: &str) {
        if self.terminal {
            let width = 30;
            let filled = done * width / self.total.max(1);
            eprint!(
                "\r[{}{}] {done}/{} hunks",
                "#".repeat(filled),
                "-".repeat(width - filled),
                self.total
            );
            if done == self.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("review: hunk {done}/{} ({path})", self.total);
        }
    }
}

/// Runs git in `dir`; its stdout, or its stderr as the error.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    String::from_utf8(output.stdout).map_err(|_| "git printed something that is not UTF-8".into())
}

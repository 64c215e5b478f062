//! `deepseek-lsp complete`: one fill-in-the-middle completion at a cursor in a file.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use engine::{GenerationEvent, PromptInput, Request};
use ropey::Rope;
use server::completion::{CompletionOptions, CompletionWindow};
use server::postprocess::Shaper;
use server::syntax::completion_mode;
use server::workspace::languages;

use crate::runtime::{RuntimeArgs, SamplingArgs};
use crate::source::read_source;
use crate::workspace_context::WorkspaceArgs;

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// The source file to complete in.
    file: PathBuf,
    /// Cursor line, 0-based (the first line is 0).
    #[arg(long)]
    line: usize,
    /// Cursor column, a 0-based UTF-8 byte offset within the line.
    #[arg(long)]
    col: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Print one JSON object: {"text": ..., "raw": ..., "stats": {...}}.
    #[arg(long)]
    json: bool,
    /// The plain fill-in-the-middle prompt and the model's text as generated, without the
    /// editor's touches (the prompt ending at the line start after bare indentation, the
    /// cleanup that stops where the line or block is done and drops what the file has).
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    workspace: WorkspaceArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: CompleteArgs) -> Result<(), String> {
    args.runtime.apply_cpu_settings()?;
    let text = read_source(&args.file)?;
    if text.is_empty() {
        return Err(format!(
            "{} is empty: there is no code around the cursor to complete; write a first line and try again",
            args.file.display()
        ));
    }
    let options = CompletionOptions {
        max_new_tokens: args.max_tokens,
        sampling: args.sampling.params()?,
        stop: args.sampling.stop.clone(),
    };
    args.workspace.validate()?;
    // Check the cursor before the (slow) model load.
    let offset = server::position::byte_offset(&text, args.line, args.col)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let model_dir = args.runtime.model_dir()?;
    let engine = args.runtime.load_engine_from(&model_dir)?;
    let tokenizer = engine
        .tokenizer()
        .cloned()
        .ok_or("the model has no tokenizer.json; completions need one")?;
    let tokens = args
        .workspace
        .budget_for(engine.context_window(), options.max_new_tokens);
    let context = args.workspace.build(
        &args.file,
        &text,
        offset,
        tokenizer.clone(),
        tokens,
        !args.raw,
    );
    let rope = Rope::from_str(&text);
    let window = CompletionWindow::around(&rope, offset, tokens, args.workspace.suffix_lines);
    let language_id = languages::for_path(&args.file).map_or("", |l| l.spec.lsp_ids[0]);
    // The editor's rules: one line or one block, as the syntax at the cursor says.
    let mode = completion_mode(&rope, offset, language_id, false);
    let mut shaper = Shaper::new(&context.cut_indentation, mode);
    let prompt =
        engine.completion_prompt(&context.prompt_blocks(), &context.prefix, &context.suffix);
    let mut request = Request::new(PromptInput::Prompt(prompt), options.max_new_tokens);
    request.sampling = options.sampling;
    request.stop = options.stop.clone();
    request.suppress_first = shaper.suppressed_first_tokens(&tokenizer);
    let mut raw = String::new();
    let mut generation = engine.submit(request);
    let mut stats = None;
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(delta) => {
                raw.push_str(&delta);
                // Once the suggestion is complete, --raw still wants the rest.
                if !shaper.push(&delta) && !args.raw {
                    generation.cancel();
                }
            }
            GenerationEvent::Finished(result) => {
                stats = Some(result.map_err(|e| e.to_string())?);
                break;
            }
        }
    }
    let stats = stats.ok_or("the engine stopped without finishing the generation")?;
    let completion = if args.raw {
        raw.clone()
    } else {
        shaper
            .finish(&window.surroundings(), &rope, offset, language_id)
            .map(|s| s.text)
            .unwrap_or_default()
    };
    if completion.is_empty() && !args.json {
        eprintln!(
            "the model suggested nothing worth showing here (--raw prints what it generated)"
        );
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let json = serde_json::to_string(&JsonOutput {
            text: &completion,
            raw: &raw,
            model: &model_dir,
            stats: &stats,
            context: &context.blocks,
            prompt_tokens: context.prompt_tokens,
        })
        .expect("plain data serialises");
        writeln!(out, "{json}")
    } else if completion.is_empty() {
        Ok(())
    } else {
        writeln!(out, "{completion}")
    };
    written.map_err(|e| format!("cannot write the output: {e}"))
}

#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    /// What an editor would show (the raw text with --raw).
    text: &'a str,
    /// What the model generated.
    raw: &'a str,
    /// The model folder used (the cache folder the built-in model was written to, if that one).
    model: &'a std::path::Path,
    stats: &'a engine::GenerationStats,
    context: &'a [server::workspace::context::Block],
    prompt_tokens: usize,
}

//! `deepseek-lsp complete`: one fill-in-the-middle completion at a cursor in a file.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use engine::{PromptInput, Request};
use server::completion::CompletionOptions;

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
    /// Print one JSON object: {"text": ..., "stats": {...}}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    workspace: WorkspaceArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: CompleteArgs) -> Result<(), String> {
    args.runtime.apply_threads()?;
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
    let engine = args.runtime.load_engine()?;
    let tokenizer = engine
        .tokenizer()
        .cloned()
        .ok_or("the model has no tokenizer.json; completions need one")?;
    let context = args.workspace.build(&args.file, &text, offset, tokenizer);
    let prompt =
        engine.completion_prompt(&context.prompt_blocks(), &context.prefix, &context.suffix);
    let mut request = Request::new(PromptInput::Prompt(prompt), options.max_new_tokens);
    request.sampling = options.sampling;
    request.stop = options.stop.clone();
    let (completion, stats) = engine.submit(request).wait().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let json = serde_json::to_string(&JsonOutput {
            text: &completion,
            stats: &stats,
            context: &context.blocks,
            prompt_tokens: context.prompt_tokens,
        })
        .expect("plain data serialises");
        writeln!(out, "{json}")
    } else {
        writeln!(out, "{completion}")
    };
    written.map_err(|e| format!("cannot write the output: {e}"))
}

#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    text: &'a str,
    stats: &'a engine::GenerationStats,
    context: &'a [server::workspace::context::Block],
    prompt_tokens: usize,
}

//! `deepseek-lsp explain`: a streamed explanation of a range of lines.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use engine::{GenerationEvent, PromptInput, Request};
use server::explain::explain_prompt;

use crate::runtime::{RuntimeArgs, SamplingArgs};
use crate::source::read_source;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The source file.
    file: PathBuf,
    /// The lines to explain, 1-based and inclusive, as editors number them: for example 10-24.
    #[arg(long, value_name = "A-B")]
    lines: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: ExplainArgs) -> Result<(), String> {
    args.runtime.apply_cpu_settings()?;
    let text = read_source(&args.file)?;
    let (first, last) = parse_range(&args.lines)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if last > lines.len() {
        return Err(format!(
            "--lines {first}-{last}: {} has {} line{} (lines count from 1 here)",
            args.file.display(),
            lines.len(),
            if lines.len() == 1 { "" } else { "s" }
        ));
    }
    let code: String = lines[first - 1..last].concat();
    let sampling = args.sampling.params()?;
    let engine = args.runtime.load_engine()?;
    let prompt = explain_prompt(&args.file.display().to_string(), first, last, &code);
    let mut request = Request::new(PromptInput::Prompt(prompt), args.max_tokens);
    request.sampling = sampling;
    request.stop = args.sampling.stop.clone();

    let mut generation = engine.submit(request);
    let mut out = std::io::stdout().lock();
    while let Some(event) = generation.blocking_next() {
        match event {
            GenerationEvent::Text(delta) => {
                out.write_all(delta.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write the output: {e}"))?;
            }
            GenerationEvent::Finished(result) => {
                result.map_err(|e| e.to_string())?;
                break;
            }
        }
    }
    writeln!(out).map_err(|e| format!("cannot write the output: {e}"))
}

/// "A-B" (or "A") as a 1-based inclusive range.
fn parse_range(text: &str) -> Result<(usize, usize), String> {
    let bad = || {
        format!(
            "--lines `{text}` not understood: give A-B, 1-based and inclusive, for example 10-24"
        )
    };
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let first: usize = a.trim().parse().map_err(|_| bad())?;
    let last: usize = b.trim().parse().map_err(|_| bad())?;
    if first == 0 || last < first {
        return Err(bad());
    }
    Ok((first, last))
}

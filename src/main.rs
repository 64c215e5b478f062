//! `deepseek-lsp`: the command line. Parses arguments, wires the layers together, maps errors to
//! exit codes (0 success, 1 a finding the user asked about, 2 usage or setup error).

mod allocator;
mod bench;
mod bench_context;
mod bench_lsp;
mod bench_model;
mod complete;
mod context;
mod embedded;
mod explain;
mod logits;
mod review;
mod runtime;
mod serve;
mod source;
mod workspace_context;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "deepseek-lsp", version, about = "A local DeepSeek-V2 code model for your editor", long_about = None)]
struct Cli {
    /// Without a command: serve LSP over stdio.
    #[command(subcommand)]
    command: Option<Command>,
    /// Accepted for editors that pass it; stdio is the only transport.
    #[arg(long, hide = true, global = true)]
    stdio: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Language Server Protocol over stdin/stdout (what editors start; the default).
    ///
    /// Example: deepseek-lsp serve --model ~/models/DeepSeek-Coder-V2-Lite-Base
    Serve(serve::ServeArgs),
    /// Complete the code at a cursor in a file (fill-in-the-middle) and print the completion.
    ///
    /// Example: deepseek-lsp complete src/main.rs --line 10 --col 4 --model ./DeepSeek-Coder-V2-Lite-Base
    Complete(complete::CompleteArgs),
    /// Print the prompt a completion at a cursor would send: workspace context blocks (and why
    /// each is there), the file prefix and suffix, counted in the model's tokens.
    ///
    /// Example: deepseek-lsp context src/app.py --line 12 --col 4 --budget 8192 --json
    Context(context::ContextArgs),
    /// Explain a range of lines of a file, streaming the answer.
    ///
    /// Example: deepseek-lsp explain src/main.rs --lines 10-24 --model ./DeepSeek-Coder-V2-Lite-Instruct
    Explain(explain::ExplainArgs),
    /// Print the model's logits for a sequence of token ids, as JSON.
    ///
    /// Example: deepseek-lsp logits --model ./DeepSeek-Coder-V2-Lite-Base --ids 100000,2864,1108 --prefix 2
    Logits(logits::LogitsArgs),
    /// Review the change between two revisions and write findings for CI (SARIF, reviewdog,
    /// GitLab, GitHub annotations, Markdown, JSON). Exit 1 when a finding reaches --fail-on.
    ///
    /// Example: deepseek-lsp review --base origin/main --format sarif --output review.sarif
    Review(review::ReviewArgs),
    /// Measure prefill and decode speed; prints JSON figures.
    ///
    /// Example: deepseek-lsp bench decode --synthetic lite:4
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    server::logging::init("warn");
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(serve::ServeArgs::default()));
    let result = match command {
        Command::Serve(args) => serve::run(args),
        Command::Complete(args) => complete::run(args),
        Command::Context(args) => context::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Review(args) => match review::run(args) {
            Ok(true) => return ExitCode::from(1),
            Ok(false) => Ok(()),
            Err(message) => Err(message),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("deepseek-lsp: {message}");
            ExitCode::from(2)
        }
    }
}

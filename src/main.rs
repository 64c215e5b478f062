//! `deepseek-lsp`: the command line. Parses arguments, wires the layers together, maps errors to
//! exit codes (0 success, 1 a finding the user asked about, 2 usage or setup error).

mod bench;
mod complete;
mod explain;
mod logits;
mod runtime;
mod source;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "deepseek-lsp", version, about = "A local DeepSeek-V2 code model for your editor", long_about = None)]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Complete the code at a cursor in a file (fill-in-the-middle) and print the completion.
    ///
    /// Example: deepseek-lsp complete src/main.rs --line 10 --col 4 --model ./DeepSeek-Coder-V2-Lite-Base
    Complete(complete::CompleteArgs),
    /// Explain a range of lines of a file, streaming the answer.
    ///
    /// Example: deepseek-lsp explain src/main.rs --lines 10-24 --model ./DeepSeek-Coder-V2-Lite-Instruct
    Explain(explain::ExplainArgs),
    /// Print the model's logits for a sequence of token ids, as JSON.
    ///
    /// Example: deepseek-lsp logits --model ./DeepSeek-Coder-V2-Lite-Base --ids 100000,2864,1108 --prefix 2
    Logits(logits::LogitsArgs),
    /// Measure prefill and decode speed; prints JSON figures.
    ///
    /// Example: deepseek-lsp bench decode --synthetic lite:4
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Complete(args) => complete::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("deepseek-lsp: {message}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr (stdout carries results, and later the LSP stream). Default: warnings;
/// `DEEPSEEK_LSP_LOG=debug` (any tracing filter) for more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEEPSEEK_LSP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

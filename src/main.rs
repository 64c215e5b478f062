//! `deepseek-lsp`: the command line. Parses arguments, wires the layers together, maps errors to
//! exit codes (0 success, 1 a finding the user asked about, 2 usage or setup error).

mod bench;
mod logits;
mod runtime;

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
    let result = match cli.command {
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

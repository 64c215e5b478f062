//! `deepseek-lsp context`: the prompt the server would send for a cursor, and why each block is
//! in it. Needs only the model's tokenizer (to count tokens exactly), not its weights.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use engine::TextTokenizer;
use serde_json::json;

use crate::runtime::RuntimeArgs;
use crate::source::read_source;
use crate::workspace_context::WorkspaceArgs;

#[derive(Args, Debug)]
pub struct ContextArgs {
    /// The source file holding the cursor.
    file: PathBuf,
    /// Cursor line, 0-based.
    #[arg(long)]
    line: usize,
    /// Cursor column, a 0-based UTF-8 byte offset within the line.
    #[arg(long)]
    col: usize,
    /// Print {"blocks": [{"path", "kind", "reason", "tokens"}], "prompt", "prompt_tokens"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    workspace: WorkspaceArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: ContextArgs) -> Result<(), String> {
    args.workspace.validate()?;
    let text = read_source(&args.file)?;
    let offset = server::position::byte_offset(&text, args.line, args.col)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let (tokenizer, context_window) = load_tokenizer(&args.runtime)?;
    // The budget the server would use with its default maxTokens.
    let tokens = args.workspace.budget_for(
        context_window,
        server::settings::Settings::default().max_tokens,
    );
    let built = args
        .workspace
        .build(&args.file, &text, offset, tokenizer, tokens, true);
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let value = json!({
            "blocks": built.blocks,
            "prompt": built.text(),
            "prefix_start_line": built.prefix_start_line,
            "suffix_end_line": built.suffix_end_line,
            "prompt_tokens": built.prompt_tokens,
            "cut_indentation": built.cut_indentation,
        });
        writeln!(out, "{value}")
    } else {
        let mut summary = String::new();
        for block in &built.blocks {
            summary.push_str(&format!(
                "# {:?} {} ({} tokens): {}\n",
                block.kind, block.path, block.tokens, block.reason
            ));
        }
        summary.push_str(&format!(
            "# prefix from line {} ({} tokens), suffix to line {} ({} tokens), {} prompt tokens\n",
            built.prefix_start_line,
            built.prefix_tokens,
            built.suffix_end_line,
            built.suffix_tokens,
            built.prompt_tokens
        ));
        if !built.cut_indentation.is_empty() {
            summary.push_str(&format!(
                "# the prompt stops at the cursor line's start: the model writes its {} \
                 characters of indentation itself\n",
                built.cut_indentation.len()
            ));
        }
        writeln!(
            out,
            "{summary}{}<|cursor|>{}",
            blocks_and_prefix(&built),
            built.suffix
        )
    };
    written.map_err(|e| format!("cannot write the output: {e}"))
}

fn blocks_and_prefix(built: &server::workspace::context::BuiltContext) -> String {
    let mut text: String = built.blocks.iter().map(|b| b.text.as_str()).collect();
    text.push_str(&built.prefix);
    text
}

/// The tokenizer of the model (a directory or a .gguf file) and the model's context window, without loading its
/// weights.
pub fn load_tokenizer(runtime: &RuntimeArgs) -> Result<(Arc<TextTokenizer>, usize), String> {
    let path = runtime.model_dir()?;
    let (config, tokenizer) =
        engine::load_config_and_tokenizer(&path).map_err(|e| e.to_string())?;
    Ok((Arc::new(tokenizer), config.max_position_embeddings))
}

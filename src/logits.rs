//! `deepseek-lsp logits`: every position's logits for given token ids, optionally computed as a
//! cached prefix followed by token-by-token decoding (the path an editor keystroke takes).

use std::io::Write;

use clap::Args;
use engine::{Logits, Model};

use crate::runtime::RuntimeArgs;

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// Token ids, comma-separated, for example 5,17,42.
    #[arg(long, value_name = "IDS", required = true)]
    ids: String,
    /// Run the first N ids as one cached prefill, then the rest one token at a time on top of the
    /// cache. The output still covers every position.
    #[arg(long, value_name = "N")]
    prefix: Option<usize>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: LogitsArgs) -> Result<(), String> {
    args.runtime.apply_cpu_settings()?;
    let ids = parse_ids(&args.ids)?;
    if let Some(prefix) = args.prefix
        && prefix > ids.len()
    {
        return Err(format!(
            "--prefix {prefix} is longer than the {} ids given",
            ids.len()
        ));
    }
    let model = args.runtime.load_model()?;
    let rows = logits(&model, &ids, args.prefix).map_err(|e| e.to_string())?;
    let stdout = std::io::stdout().lock();
    let mut out = std::io::BufWriter::new(stdout);
    serde_json::to_writer(&mut out, &Output { logits: &rows })
        .and_then(|()| writeln!(out).map_err(serde_json::Error::io))
        .and_then(|()| out.flush().map_err(serde_json::Error::io))
        .map_err(|e| format!("cannot write the output: {e}"))
}

/// Serialised with f32 precision (shortest round-trip form of each f32).
#[derive(serde::Serialize)]
struct Output<'a> {
    logits: &'a [Vec<f32>],
}

fn parse_ids(text: &str) -> Result<Vec<u32>, String> {
    let ids = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("--ids: `{s}` is not a token id (a non-negative integer)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err("--ids is empty; give at least one token id".into());
    }
    Ok(ids)
}

fn logits(model: &Model, ids: &[u32], prefix: Option<usize>) -> engine::Result<Vec<Vec<f32>>> {
    let mut cache = model.new_cache();
    let split = prefix.unwrap_or(ids.len());
    let mut rows = Vec::with_capacity(ids.len());
    if split > 0 {
        rows.extend(
            model
                .forward(&ids[..split], &mut cache, Logits::All)?
                .to_vec2::<f32>()?,
        );
    }
    for &id in &ids[split..] {
        rows.extend(
            model
                .forward(&[id], &mut cache, Logits::All)?
                .to_vec2::<f32>()?,
        );
    }
    Ok(rows)
}

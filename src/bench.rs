//! `deepseek-lsp bench`: prefill and decode throughput of a model, as one JSON object on stdout.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use engine::synthetic::SyntheticQuant;
use engine::{AttentionForm, Engine, Model};
use serde_json::json;

use crate::runtime::RuntimeArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    what: BenchKind,
    /// A model of real dimensions with random weights instead of --model, for example lite:4
    /// (DeepSeek-V2-Lite's shapes, 4 layers).
    #[arg(long, value_name = "SPEC", conflicts_with = "model")]
    synthetic: Option<String>,
    /// Prompt tokens (prefill length; the context decode starts from).
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Context tokens for `keystroke`.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Lines of the file for `lsp`.
    #[arg(long, default_value_t = 10_000)]
    lines: usize,
    /// Requests for `lsp`.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Edits for `keystroke`, each followed by a completion of --tokens tokens.
    #[arg(long, default_value_t = 8)]
    edits: usize,
    /// Prefill runs; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Attention form: auto (cheaper per step), absorbed or expanded.
    #[arg(long, value_enum, default_value = "auto")]
    form: Form,
    /// Workspace folder for `context`.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Prompt budgets for `context`, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2048, 8192, 32768])]
    budgets: Vec<usize>,
    /// Call sites to mask for `context` (spread over the workspace).
    #[arg(long, default_value_t = 500)]
    tasks: usize,
    /// A tokenizer.json to count tokens with for `context`, instead of --model's.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write --synthetic's model as a GGUF file of this llama.cpp quantization (Q4_K: the Q4_K_M
    /// mix; Q8_0) and measure it loaded from that file, through the same path as --model FILE.gguf.
    #[arg(long, value_name = "Q4_K|Q8_0", requires = "synthetic")]
    quant: Option<SyntheticQuant>,
    /// Keep --quant's GGUF file at this path (default: a temporary file, removed after the run),
    /// for example to give the same file to llama.cpp.
    #[arg(long, value_name = "FILE", requires = "quant")]
    gguf_out: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum BenchKind {
    Decode,
    Prefill,
    /// Through the resident engine: time to first token and decode speed, cold then warm.
    Generate,
    /// Editing near the end of a --context-token prompt: cold vs warm time to first token.
    Keystroke,
    /// The language server's own latency per request on a --lines-line file, model excluded.
    Lsp,
    /// Context recall and prompt-build time on --workspace: masks calls of functions defined
    /// in another file and checks the prompt shows their signature; also indexing speed.
    Context,
    /// Exact match of --model completing lines of --workspace (code it was not trained on),
    /// with and without workspace context, next to a trivial baseline; --context is the budget.
    Model,
    /// Hunks per minute of `review` on --workspace's last commit (HEAD~1...HEAD), with --model
    /// (default: the built-in one) or --synthetic (text through --tokenizer, default the
    /// built-in model's); --tokens is the answer length.
    Review,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Form {
    Auto,
    Absorbed,
    Expanded,
}

/// Buffer the read-bandwidth measurement streams: far beyond any last-level cache.
const BANDWIDTH_BUFFER_BYTES: usize = 1 << 30;

pub fn run(args: BenchArgs) -> Result<(), String> {
    // clap's `requires` lets these through when --model is given (it conflicts with --synthetic).
    if args.quant.is_some() && args.synthetic.is_none() {
        return Err(
            "--quant writes a --synthetic model as GGUF; a GGUF file of your own goes to \
             --model FILE.gguf, which is measured as quantized as it is stored"
                .into(),
        );
    }
    let threads = args.runtime.apply_cpu_settings()?;
    // The benches that report their own figures rather than a model's speed.
    let figures = match args.what {
        BenchKind::Lsp => Some(bench_lsp(&args)?),
        BenchKind::Context => Some(bench_context(&args, threads)?),
        BenchKind::Model => Some(bench_model(&args, threads)?),
        BenchKind::Review => Some(bench_review(&args)?),
        _ => None,
    };
    if let Some(figures) = figures {
        println!(
            "{}",
            serde_json::to_string_pretty(&figures).expect("figures serialise")
        );
        return Ok(());
    }
    if args.prompt == 0 || args.tokens == 0 {
        return Err("--prompt and --tokens must be at least 1".into());
    }
    // Held to the end of the run: a temporary file is removed when it drops.
    let synthetic_file = write_synthetic_gguf(&args)?;
    let started = std::time::Instant::now();
    let (mut model, name) = load(&args, synthetic_file.as_ref())?;
    let load_seconds = started.elapsed().as_secs_f64();
    model.set_attention_form(match args.form {
        Form::Auto => AttentionForm::Auto,
        Form::Absorbed => AttentionForm::Absorbed,
        Form::Expanded => AttentionForm::Expanded,
    });
    eprintln!("loaded {name} in {load_seconds:.1} s; measuring...");

    let measure = |kind| match kind {
        BenchKind::Decode => {
            engine::bench::decode(&model, args.prompt, args.tokens).map(|t| ("decode", t))
        }
        _ => engine::bench::prefill(&model, args.prompt, args.repeats).map(|t| ("prefill", t)),
    };
    let kinds: &[BenchKind] = match args.what {
        BenchKind::All => &[BenchKind::Prefill, BenchKind::Decode, BenchKind::Generate],
        BenchKind::Decode => &[BenchKind::Decode],
        BenchKind::Prefill => &[BenchKind::Prefill],
        BenchKind::Generate => &[BenchKind::Generate],
        BenchKind::Keystroke => &[BenchKind::Keystroke],
        BenchKind::Lsp | BenchKind::Context | BenchKind::Model | BenchKind::Review => &[],
    };
    let mut report = json!({
        "model": name,
        "device": engine::device_name(model.device()),
        "dtype": format!("{:?}", model.dtype()).to_lowercase(),
        "threads": threads,
        "cpu_kernels": engine::InstructionSet::in_use().name(),
        "amx_tiles": engine::tile_status().describe(),
        "attention_form": format!("{:?}", args.form).to_lowercase(),
        "layers": model.config().num_hidden_layers,
        "weight_gb": model.weight_bytes() as f64 / 1e9,
        "weight_gb_read_per_token": model.weight_bytes_per_token() as f64 / 1e9,
        "kv_bytes_per_token": model.kv_bytes_per_token(),
        "load_seconds": load_seconds,
        // Whether Linux backed the rearranged weights with 2 MiB pages, as the loader asks.
        "process_huge_page_gb": engine::weight_arena::process_huge_page_bytes()
            .map(|bytes| bytes as f64 / 1e9),
    });
    if let Some(file) = &synthetic_file {
        report["gguf"] = file.report();
    }
    let engine_kinds = [BenchKind::Generate, BenchKind::Keystroke];
    for &kind in kinds.iter().filter(|k| !engine_kinds.contains(k)) {
        let (key, figures) = measure(kind).map_err(|e| e.to_string())?;
        report[key] = to_json(figures);
    }
    if let Some(weight_rate) = report["decode"]["weight_gb_per_second"].as_f64() {
        // Decode streams every active weight once per token: the machine's read bandwidth
        // bounds it, and the fraction reached says how much is left on the table.
        // On a GPU, HBM's: bytes read and written per second by a copy on the device.
        let bandwidth =
            engine::bench::device_bandwidth_gb_per_second(model.device(), BANDWIDTH_BUFFER_BYTES)
                .map_err(|e| e.to_string())?;
        report["memory_read_gb_per_second"] = json!(bandwidth);
        report["decode"]["roofline_fraction"] = json!(weight_rate / bandwidth);
    }
    // Last: the engine takes the model over.
    if kinds.contains(&BenchKind::Generate) {
        let figures = engine::bench::generation(
            model,
            args.runtime.engine_options(),
            args.prompt,
            args.tokens,
        )
        .map_err(|e| e.to_string())?;
        report["generate"] = to_json(figures);
    } else if kinds.contains(&BenchKind::Keystroke) {
        if args.context < 8 || args.edits == 0 {
            return Err("--context must be at least 8 and --edits at least 1".into());
        }
        let figures = engine::bench::keystroke(
            model,
            args.runtime.engine_options(),
            args.context,
            args.edits,
            args.tokens,
        )
        .map_err(|e| e.to_string())?;
        report["keystroke"] = to_json(figures);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("report serialises")
    );
    Ok(())
}

fn bench_lsp(args: &BenchArgs) -> Result<serde_json::Value, String> {
    if args.lines < 2 || args.requests == 0 {
        return Err("--lines must be at least 2 and --requests at least 1".into());
    }
    crate::bench_lsp::run(args.lines / 2, args.requests)
}

fn bench_context(args: &BenchArgs, threads: usize) -> Result<serde_json::Value, String> {
    let workspace = args
        .workspace
        .clone()
        .ok_or("bench context needs --workspace DIR (a repository of real code)")?;
    if args.budgets.iter().any(|&b| b < 32) || args.tasks == 0 {
        return Err("--budgets must be at least 32 tokens each and --tasks at least 1".into());
    }
    let tokenizer = match &args.tokenizer {
        Some(file) => crate::bench_context::tokenizer_file(file)?,
        None => crate::context::load_tokenizer(&args.runtime)?.0,
    };
    let options = crate::bench_context::ContextBenchOptions {
        workspace,
        budgets: args.budgets.clone(),
        tasks: args.tasks,
        threads,
    };
    crate::bench_context::run(&options, tokenizer)
}

fn bench_model(args: &BenchArgs, threads: usize) -> Result<serde_json::Value, String> {
    let workspace = args
        .workspace
        .clone()
        .ok_or("bench model needs --workspace DIR (code the model was not trained on)")?;
    let engine = args.runtime.load_engine()?;
    let options = crate::bench_model::ModelBenchOptions {
        workspace,
        tasks: args.tasks,
        budget: args.context,
        max_tokens: args.tokens,
        threads,
    };
    crate::bench_model::run(&options, &engine)
}

fn bench_review(args: &BenchArgs) -> Result<serde_json::Value, String> {
    let folder = args
        .workspace
        .clone()
        .ok_or("bench review needs --workspace DIR (a git repository with at least two commits)")?;
    let change = crate::review::read_change(&folder, "HEAD~1", "HEAD")?;
    let synthetic_file = write_synthetic_gguf(args)?;
    let (engine, name) = match &args.synthetic {
        Some(_) => {
            let (model, name) = load(args, synthetic_file.as_ref())?;
            let tokenizer_file = match &args.tokenizer {
                Some(file) => file.clone(),
                None => crate::embedded::model_dir()?
                    .ok_or("this build has no built-in model: give --tokenizer FILE")?
                    .join("tokenizer.json"),
            };
            let tokenizer =
                engine::TextTokenizer::from_file(&tokenizer_file, model.config().vocab_size)
                    .map_err(|e| e.to_string())?;
            (
                Engine::start(model, Some(std::sync::Arc::new(tokenizer))),
                name,
            )
        }
        None => {
            let dir = args.runtime.model_dir()?;
            (
                args.runtime.load_engine_from(&dir)?,
                dir.display().to_string(),
            )
        }
    };
    let started = std::time::Instant::now();
    let reviewed = crate::review::review_change(
        &change,
        &engine,
        crate::review::DEFAULT_CONTEXT_TOKENS,
        args.tokens,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "model": name,
        "range": change.range,
        "hunks": reviewed.hunks,
        "seconds": seconds,
        "hunks_per_minute": reviewed.hunks as f64 * 60.0 / seconds.max(1e-9),
        "prompt_tokens": reviewed.prompt_tokens,
        "generated_tokens": reviewed.generated_tokens,
        "findings": reviewed.findings.len(),
        "dropped": reviewed.dropped.values().sum::<usize>(),
    }))
}

/// A synthetic model written as a GGUF file for --quant.
struct SyntheticGgufFile {
    path: PathBuf,
    /// Removed when dropped (no --gguf-out).
    temporary: bool,
    written: engine::synthetic::SyntheticGguf,
    quant: SyntheticQuant,
    write_seconds: f64,
}

impl SyntheticGgufFile {
    fn report(&self) -> serde_json::Value {
        json!({
            "path": if self.temporary { None } else { Some(self.path.display().to_string()) },
            "quantization": self.quant.name(),
            "bytes": self.written.bytes,
            "tensors_per_type": self.written.tensors_per_type,
            "write_seconds": self.write_seconds,
        })
    }
}

impl Drop for SyntheticGgufFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// With --quant, writes --synthetic's model as a GGUF file (to --gguf-out, else a temporary
/// file) for `load` to read back.
fn write_synthetic_gguf(args: &BenchArgs) -> Result<Option<SyntheticGgufFile>, String> {
    let (Some(spec), Some(quant)) = (&args.synthetic, args.quant) else {
        return Ok(None);
    };
    let config = engine::synthetic::parse_spec(spec).map_err(|e| e.to_string())?;
    let (path, temporary) = match &args.gguf_out {
        Some(path) => (path.clone(), false),
        None => {
            let name = format!(
                "deepseek-lsp-{}-{}-{}.gguf",
                std::process::id(),
                spec.replace([':', '/', '\\'], "-"),
                quant.name()
            );
            (std::env::temp_dir().join(name), true)
        }
    };
    eprintln!(
        "writing synthetic {spec} as a {quant} GGUF file to {}...",
        path.display()
    );
    let started = std::time::Instant::now();
    let written = engine::synthetic::write_synthetic_gguf(&path, &config, quant, args.seed)
        .map_err(|e| {
            if temporary {
                let _ = std::fs::remove_file(&path);
            }
            format!("cannot write the synthetic GGUF file: {e}")
        })?;
    Ok(Some(SyntheticGgufFile {
        path,
        temporary,
        written,
        quant,
        write_seconds: started.elapsed().as_secs_f64(),
    }))
}

fn load(
    args: &BenchArgs,
    synthetic_file: Option<&SyntheticGgufFile>,
) -> Result<(Model, String), String> {
    if let Some(file) = synthetic_file {
        let spec = args.synthetic.as_deref().unwrap_or_default();
        eprintln!("loading it through the .gguf path, as --model FILE.gguf would...");
        let model = args.runtime.load_model_from(&file.path)?;
        return Ok((model, format!("synthetic {spec} ({} GGUF)", file.quant)));
    }
    match &args.synthetic {
        Some(spec) => {
            let config = engine::synthetic::parse_spec(spec).map_err(|e| e.to_string())?;
            let options = args.runtime.load_options()?;
            eprintln!("building synthetic {spec} with random weights...");
            let model = engine::synthetic::random_model(
                config,
                args.seed,
                options.compute_dtype(),
                &options.device,
            )
            .map_err(|e| e.to_string())?;
            Ok((model, format!("synthetic {spec}")))
        }
        None => {
            let dir = args.runtime.model_dir()?;
            Ok((
                args.runtime.load_model_from(&dir)?,
                dir.display().to_string(),
            ))
        }
    }
}

fn to_json(figures: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(figures).expect("figures serialise")
}

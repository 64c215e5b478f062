//! The `deepseek-lsp` binary as users and scripts call it: output format, numbers, exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use support::shop_workspace;

mod support;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("engine/tests/fixtures")
        .join(name)
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deepseek-lsp"));
    command.env_remove("DEEPSEEK_LSP_MODEL");
    command
}

fn run(args: &[&str]) -> Output {
    binary().args(args).output().expect("the binary runs")
}

struct Reference {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let ids = file.tensor("input_ids").unwrap();
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let logits = file.tensor("logits").unwrap();
    let vocab = logits.shape()[1];
    let values: Vec<f32> = logits
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Reference {
        ids,
        logits: values.chunks(vocab).map(<[f32]>::to_vec).collect(),
    }
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Fails the test with the command's stderr unless it exited 0.
fn assert_succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn parse_logits(output: &Output) -> Vec<Vec<f32>> {
    assert_succeeded(output);
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    let object = value.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), vec!["logits"]);
    object["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// `deepseek-lsp logits --model MODEL --ids IDS EXTRA...`, parsed.
fn logits_of(model: &Path, ids: &[u32], extra: &[&str]) -> Vec<Vec<f32>> {
    let ids = ids_arg(ids);
    let mut args = vec!["logits", "--model", model.to_str().unwrap(), "--ids", &ids];
    args.extend_from_slice(extra);
    parse_logits(&run(&args))
}

fn assert_matches(ours: &[Vec<f32>], reference: &[Vec<f32>]) {
    assert_eq!(ours.len(), reference.len(), "one row per input position");
    for (position, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert_eq!(a.len(), b.len(), "vocabulary-wide rows");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= TOLERANCE, "position {position}: error {worst:e}");
    }
}

/// Exit code 2 and exactly one line on stderr containing `expected`, nothing on stdout.
fn assert_usage_error(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout must stay empty on error");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line message, got: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected `{expected}` in: {stderr}"
    );
}

#[test]
fn logits_prints_every_position_matching_transformers() {
    for name in ["lite", "v2", "branches"] {
        let r = reference(name);
        let model = fixture(name);
        assert_matches(&logits_of(&model, &r.ids, &[]), &r.logits);
    }
}

#[test]
fn logits_with_a_cached_prefix_still_covers_every_position() {
    let r = reference("v2");
    let model = fixture("v2");
    for prefix in ["0", "5", &r.ids.len().to_string()] {
        assert_matches(&logits_of(&model, &r.ids, &["--prefix", prefix]), &r.logits);
    }
}

#[test]
fn the_model_can_come_from_the_environment() {
    let r = reference("lite");
    let output = binary()
        .args(["logits", "--ids", &ids_arg(&r.ids[..3])])
        .env("DEEPSEEK_LSP_MODEL", fixture("lite"))
        .output()
        .unwrap();
    assert_matches(&parse_logits(&output), &r.logits[..3]);
}

#[test]
fn usage_and_setup_errors_exit_2_with_one_line() {
    let lite = fixture("lite");
    let lite = lite.to_str().unwrap();
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", "1,x"]),
        "`x` is not a token id",
    );
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", ""]),
        "--ids is empty",
    );
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", "1,2", "--prefix", "3"]),
        "--prefix 3 is longer than the 2 ids",
    );
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", "1,320"]),
        "token id 320 is outside the vocabulary (size 320)",
    );
    assert_usage_error(
        &run(&["logits", "--model", "/no/such/dir", "--ids", "1"]),
        "/no/such/dir does not exist",
    );
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", "1", "--device", "tpu"]),
        "--device `tpu` not understood",
    );
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", "1", "--dtype", "f8"]),
        "--dtype `f8` not understood",
    );
    assert_usage_error(
        &run(&["logits", "--model", lite, "--ids", "1", "--threads", "0"]),
        "--threads must be at least 1",
    );
    assert_usage_error(
        &run(&["bench", "decode", "--synthetic", "huge:2"]),
        "use lite:LAYERS",
    );
}

#[test]
fn a_broken_config_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("lite").join(file), dir.path().join(file)).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"kv_lora_rank\": 32", "\"kv_lora_rank\": -1");
    std::fs::write(&config_path, text).unwrap();
    let output = run(&[
        "logits",
        "--model",
        dir.path().to_str().unwrap(),
        "--ids",
        "1",
    ]);
    assert_usage_error(
        &output,
        &format!(
            "{}: `kv_lora_rank` must be an integer >= 1, found -1",
            config_path.display()
        ),
    );
}

#[test]
fn bench_prints_figures_as_json() {
    let lite = fixture("lite");
    let output = run(&[
        "bench",
        "all",
        "--model",
        lite.to_str().unwrap(),
        "--prompt",
        "8",
        "--tokens",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
    ]);
    assert_succeeded(&output);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["threads"], 1);
    assert_eq!(report["kv_bytes_per_token"], (32 + 8) * 3 * 4);
    assert_eq!(report["prefill"]["tokens"], 8);
    assert_eq!(report["decode"]["tokens"], 4);
    assert_eq!(report["decode"]["context_tokens"], 8);
    for key in ["tokens_per_second", "ms_per_token", "weight_gb_per_second"] {
        assert!(
            report["decode"][key].as_f64().unwrap() > 0.0,
            "decode.{key}"
        );
    }
    assert!(report["prefill"]["tokens_per_second"].as_f64().unwrap() > 0.0);
    let generate = &report["generate"];
    assert_eq!(generate["cold"]["prompt_tokens"], 8);
    assert_eq!(generate["cold"]["cached_tokens"], 0);
    assert_eq!(generate["cold"]["generated_tokens"], 4);
    assert_eq!(
        generate["warm"]["prompt_tokens"], 9,
        "one more token, like a keystroke"
    );
    assert_eq!(generate["warm"]["cached_tokens"], 8);
    assert!(generate["warm"]["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
}

/// The FIM case of a fixture's generation.json: the prefix, suffix and transformers' output.
fn fim_reference(name: &str) -> (String, String, String) {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("generation.json")).unwrap(),
    )
    .unwrap();
    let fim = &json["fim"];
    let text = |key: &str| fim[key].as_str().unwrap().to_string();
    (text("prefix"), text("suffix"), text("output_text"))
}

/// Writes `prefix + suffix` to a file and returns it with the cursor between them.
fn source_with_cursor(dir: &Path, prefix: &str, suffix: &str) -> (PathBuf, usize, usize) {
    let path = dir.join("example.py");
    std::fs::write(&path, format!("{prefix}{suffix}")).unwrap();
    let line = prefix.matches('\n').count();
    let column = prefix.len() - prefix.rfind('\n').map_or(0, |i| i + 1);
    (path, line, column)
}

#[test]
fn complete_prints_the_fill_in_the_middle_completion() {
    let (prefix, suffix, expected) = fim_reference("lite");
    let dir = tempfile::tempdir().unwrap();
    let (file, line, col) = source_with_cursor(dir.path(), &prefix, &suffix);
    let model = fixture("lite");
    let (line, col) = (line.to_string(), col.to_string());
    let common = [
        "complete",
        file.to_str().unwrap(),
        "--line",
        &line,
        "--col",
        &col,
        "--max-tokens",
        "16",
        // The file alone and no touches, so the prompt is exactly transformers' prefix and
        // suffix and the text exactly what it generated.
        "--no-workspace",
        "--raw",
    ];

    let output = binary()
        .args(common)
        .args(["--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert_succeeded(&output);
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("{expected}\n")
    );

    let output = binary()
        .args(common)
        .arg("--json")
        .env("DEEPSEEK_LSP_MODEL", &model)
        .output()
        .unwrap();
    assert_succeeded(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["text"], expected.as_str());
    assert_eq!(json["stats"]["generated_tokens"], 16);
    assert_eq!(json["stats"]["stop_reason"], "max_tokens");
    for key in [
        "prompt_tokens",
        "time_to_first_token_ms",
        "prefill_ms",
        "decode_tokens_per_second",
    ] {
        assert!(json["stats"][key].as_f64().unwrap() > 0.0, "stats.{key}");
    }
}

#[test]
fn explain_streams_the_engines_answer_for_the_chosen_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lib.rs");
    std::fs::write(
        &file,
        "use std::fmt;\n\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
    )
    .unwrap();
    let model = fixture("v2");
    let output = run(&[
        "explain",
        file.to_str().unwrap(),
        "--lines",
        "3-5",
        "--max-tokens",
        "12",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_succeeded(&output);

    // The same prompt through the library gives the same text.
    let engine = engine::Engine::load(&model, &engine::LoadOptions::default()).unwrap();
    let code = "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n";
    let prompt = server::explain::explain_prompt(file.to_str().unwrap(), 3, 5, code);
    let (expected, stats) = engine
        .submit(engine::Request::new(
            engine::PromptInput::Prompt(prompt),
            12,
        ))
        .wait()
        .unwrap();
    assert_eq!(stats.generated_tokens, 12);
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("{expected}\n")
    );
}

#[test]
fn completion_and_explain_input_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let lite = fixture("lite");
    let lite = lite.to_str().unwrap();
    let file = dir.path().join("a.py");
    std::fs::write(&file, "x = 1\ny = 2\n").unwrap();
    let file = file.to_str().unwrap();
    let empty = dir.path().join("empty.py");
    std::fs::write(&empty, "").unwrap();
    let binary_file = dir.path().join("blob.bin");
    std::fs::write(&binary_file, [0x66, 0xFF, 0x00]).unwrap();

    let complete = |path: &str, line: &str, col: &str, model: &str| {
        run(&[
            "complete", path, "--line", line, "--col", col, "--model", model,
        ])
    };
    assert_usage_error(
        &complete(empty.to_str().unwrap(), "0", "0", lite),
        "is empty: there is no code around the cursor",
    );
    assert_usage_error(
        &complete(file, "3", "0", lite),
        "line 3 is past the end: the text has 3 lines (lines count from 0)",
    );
    assert_usage_error(
        &complete(file, "1", "9", lite),
        "column 9 is past the end of line 1, which is 5 bytes long",
    );
    assert_usage_error(
        &complete(binary_file.to_str().unwrap(), "0", "0", lite),
        "is not UTF-8 text",
    );
    assert_usage_error(
        &complete("/no/such/file.py", "0", "0", lite),
        "cannot read /no/such/file.py",
    );
    let branches = fixture("branches");
    assert_usage_error(
        &complete(file, "0", "0", branches.to_str().unwrap()),
        "no tokenizer.json in",
    );
    assert_usage_error(
        &run(&[
            "complete",
            file,
            "--line",
            "0",
            "--col",
            "0",
            "--model",
            lite,
            "--temperature=-1",
        ]),
        "--temperature must be 0 or more",
    );
    assert_usage_error(
        &run(&["explain", file, "--lines", "2-1", "--model", lite]),
        "--lines `2-1` not understood",
    );
    assert_usage_error(
        &run(&["explain", file, "--lines", "1-9", "--model", lite]),
        "has 2 lines (lines count from 1 here)",
    );
}

#[test]
fn a_cache_budget_too_small_for_the_request_says_so() {
    let (prefix, suffix, _) = fim_reference("lite");
    let dir = tempfile::tempdir().unwrap();
    let (file, line, col) = source_with_cursor(dir.path(), &prefix, &suffix);
    let model = fixture("lite");
    let (line, col) = (line.to_string(), col.to_string());
    // One 32-token page: the 26-token prompt (the file alone) fits, 16 more tokens do not.
    let complete = |max_tokens: &str| {
        run(&[
            "complete",
            file.to_str().unwrap(),
            "--line",
            &line,
            "--col",
            &col,
            "--max-tokens",
            max_tokens,
            "--model",
            model.to_str().unwrap(),
            "--cache-budget",
            "1K",
            "--no-workspace",
        ])
    };
    assert_usage_error(&complete("16"), "raise the cache budget");
    assert_succeeded(&complete("4"));
    let output = run(&[
        "complete",
        file.to_str().unwrap(),
        "--line",
        "0",
        "--col",
        "0",
        "--cache-budget",
        "12X",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown size unit `x`"));
}

#[test]
fn bench_lsp_times_the_server_without_a_model() {
    let output = run(&["bench", "lsp", "--lines", "400", "--requests", "5"]);
    assert_succeeded(&output);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["lines"], 400);
    for key in ["inline_completion_ms", "completion_ms"] {
        assert_eq!(report[key]["samples"], 5);
        assert!(report[key]["p50"].as_f64().unwrap() > 0.0);
        assert!(report[key]["p99"].as_f64().unwrap() >= report[key]["p50"].as_f64().unwrap());
    }
}

#[test]
fn context_shows_the_prompt_its_blocks_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let app = shop_workspace(dir.path());
    let model = fixture("lite");
    let args = |budget: &str| {
        let mut command = binary();
        command.args([
            "context",
            app.to_str().unwrap(),
            "--line",
            "5",
            "--col",
            "4",
            "--workspace",
            dir.path().to_str().unwrap(),
            "--budget",
            budget,
            "--model",
            model.to_str().unwrap(),
        ]);
        command
    };
    let output = args("2048").arg("--json").output().unwrap();
    assert_succeeded(&output);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let prompt = json["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with(
            "# shop/pricing.py\ndef net_price(gross: float, vat_rate: float) -> float:"
        ),
        "{prompt}"
    );
    assert!(prompt.contains("# shop/app.py\nfrom .pricing import net_price"));
    assert!(
        !prompt.contains("stale_net_price"),
        "ignored files stay out"
    );
    let block = &json["blocks"][0];
    assert_eq!(block["path"], "shop/pricing.py");
    assert_eq!(block["kind"], "import");
    assert_eq!(block["reason"], "imported: net_price");
    assert!(block["tokens"].as_u64().unwrap() > 0);
    assert!(block.get("text").is_none());
    assert!(json["prompt_tokens"].as_u64().unwrap() <= 2048);

    // A budget too small for the import leaves it out and still fits.
    let small: serde_json::Value =
        serde_json::from_slice(&args("40").arg("--json").output().unwrap().stdout).unwrap();
    assert!(small["prompt_tokens"].as_u64().unwrap() <= 40, "{small}");

    // The plain form lists the blocks, then the prompt with the cursor marked.
    let output = args("2048").output().unwrap();
    assert_succeeded(&output);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("# Import shop/pricing.py ("), "{text}");
    // The cursor follows bare indentation: the prompt stops at the line start.
    assert!(
        text.contains("    total = sum(cart)\n<|cursor|>\n"),
        "{text}"
    );
    assert!(text.contains("the model writes its 4 characters of indentation itself"));

    assert_usage_error(&args("8").output().unwrap(), "--budget must be at least");
}

#[test]
fn complete_reports_the_context_it_used() {
    let dir = tempfile::tempdir().unwrap();
    let app = shop_workspace(dir.path());
    let complete = |budget: Option<&str>| {
        let mut command = binary();
        command.args([
            "complete",
            app.to_str().unwrap(),
            "--line",
            "5",
            "--col",
            "4",
            "--max-tokens",
            "4",
            "--json",
            "--workspace",
            dir.path().to_str().unwrap(),
            "--model",
            fixture("lite").to_str().unwrap(),
        ]);
        if let Some(budget) = budget {
            command.args(["--budget", budget]);
        }
        let output = command.output().unwrap();
        assert_succeeded(&output);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let json = complete(Some("2048"));
    assert_eq!(json["context"][0]["path"], "shop/pricing.py");
    let prompt_tokens = json["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens <= 2048);
    assert_eq!(
        json["stats"]["prompt_tokens"].as_u64().unwrap(),
        prompt_tokens,
        "the engine received exactly the counted prompt"
    );

    // Without --budget the prompt leaves room for the generation in the model's window
    // (max_position_embeddings: 128 for this fixture).
    let json = complete(None);
    let prompt_tokens = json["stats"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        prompt_tokens <= 128 - 4,
        "{prompt_tokens} prompt tokens do not fit the window"
    );
}

#[test]
fn a_gguf_file_works_wherever_a_model_directory_does() {
    let folder = tempfile::tempdir().unwrap();
    let (file, line, col) = source_with_cursor(folder.path(), "def add(a, b):\n    ", "\n");
    let complete = |model: &Path| {
        let output = run(&[
            "complete",
            file.to_str().unwrap(),
            "--line",
            &line.to_string(),
            "--col",
            &col.to_string(),
            "--model",
            model.to_str().unwrap(),
            "--max-tokens",
            "24",
            "--json",
        ]);
        assert_succeeded(&output);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["raw"].as_str().unwrap().to_string()
    };
    // The text comes through the file's own tokenizer (its metadata names DeepSeek's
    // pre-tokenizer, while the lite fixture's tokenizer.json splits words as GPT-2 does, so the
    // texts need not equal the directory's); the logits of given ids are the directory's.
    assert!(!complete(&fixture("gguf/lite-f32.gguf")).is_empty());
    assert!(!complete(&fixture("gguf/lite-q8_0.gguf")).is_empty());
    let r = reference("lite");
    assert_matches(
        &logits_of(&fixture("gguf/lite-f32.gguf"), &r.ids, &[]),
        &r.logits,
    );
}

//! The model built into the binary (models/tiny-coder): with no `--model` and no environment,
//! `complete` uses it and writes Python a parser accepts.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const FIXTURES: &str = "tests/fixtures/embedded";
/// The line in a fixture where the cursor goes (the marker is removed, its indentation kept).
const CURSOR_MARKER: &str = "#^";

/// The binary with no model named anywhere, its cache in `cache` (where the built-in model is
/// written on first use).
fn without_model(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deepseek-lsp"));
    command
        .env_remove("DEEPSEEK_LSP_MODEL")
        .env("XDG_CACHE_HOME", cache);
    command
}

fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A fixture's text with the marker removed, and the cursor's line and byte column.
fn with_cursor(text: &str) -> (String, usize, usize) {
    let line = text
        .lines()
        .position(|l| l.trim() == CURSOR_MARKER)
        .expect("the fixture marks the cursor");
    let marker_at = text.find(CURSOR_MARKER).unwrap();
    let column = text.lines().nth(line).unwrap().find(CURSOR_MARKER).unwrap();
    let mut clean = text.to_string();
    clean.replace_range(marker_at..marker_at + CURSOR_MARKER.len(), "");
    (clean, line, column)
}

fn parses_cleanly(source: &str) -> bool {
    let mut parser = tree_sitter::Parser::new();
    let language = server::workspace::languages::for_lsp_id("python").unwrap();
    parser.set_language(&language.language).unwrap();
    let tree = parser.parse(source, None).unwrap();
    !tree.root_node().has_error()
}

#[test]
fn complete_without_a_model_uses_the_built_in_one_and_writes_parseable_python() {
    let cache = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut cursors = Vec::new();
    for path in &files {
        let (text, line, column) = with_cursor(&std::fs::read_to_string(path).unwrap());
        let copy = workspace.path().join(path.file_name().unwrap());
        std::fs::write(&copy, &text).unwrap();
        cursors.push((copy, text, line, column));
    }

    let mut parsed = 0;
    for (path, text, line, column) in &cursors {
        let output = without_model(cache.path())
            .args(["complete", path.to_str().unwrap()])
            .args(["--line", &line.to_string(), "--col", &column.to_string()])
            .args(["--workspace", workspace.path().to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        let reply: Value = serde_json::from_str(&succeeded(output)).unwrap();
        let model = reply["model"].as_str().unwrap();
        assert!(
            Path::new(model).starts_with(cache.path().join("deepseek-lsp")),
            "{}: the built-in model (written to the cache) was used, not {model}",
            path.display()
        );
        let completion = reply["text"].as_str().unwrap();
        assert!(
            !completion.trim().is_empty(),
            "{}: an empty completion (raw: {:?})",
            path.display(),
            reply["raw"]
        );
        let offset: usize = text
            .split_inclusive('\n')
            .take(*line)
            .map(str::len)
            .sum::<usize>()
            + column;
        let mut completed = text.clone();
        completed.insert_str(offset, completion);
        let clean = parses_cleanly(&completed);
        println!(
            "{}: parses {clean}\n{completion}\n---",
            path.file_name().unwrap().to_string_lossy()
        );
        parsed += usize::from(clean);
    }
    assert!(
        parsed * 2 > cursors.len(),
        "only {parsed} of {} completed files parse",
        cursors.len()
    );
}

#[test]
fn the_built_in_model_serves_logits_and_is_written_once() {
    let cache = tempfile::tempdir().unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-coder/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    for _ in 0..2 {
        let output = without_model(cache.path())
            .args(["logits", "--ids", "0,100,200"])
            .output()
            .unwrap();
        let text = succeeded(output);
        let reply: Value = serde_json::from_str(&text).unwrap();
        let rows = reply["logits"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "a row per id");
        assert!(rows.iter().all(|r| r.as_array().unwrap().len() == vocab));
    }
    let written: Vec<_> = std::fs::read_dir(cache.path().join("deepseek-lsp"))
        .unwrap()
        .collect();
    assert_eq!(written.len(), 1, "one folder for the built-in model");
}

/// Sends one LSP message.
fn send(stdin: &mut impl std::io::Write, message: &str) {
    write!(stdin, "Content-Length: {}\r\n\r\n{message}", message.len()).unwrap();
    stdin.flush().unwrap();
}

/// Reads LSP messages until the reply with `id`.
fn reply(stdout: &mut impl std::io::BufRead, id: u64) -> Value {
    loop {
        let mut length = 0;
        loop {
            let mut header = String::new();
            assert!(
                stdout.read_line(&mut header).unwrap() > 0,
                "the server closed stdout"
            );
            if header.trim().is_empty() {
                break;
            }
            if let Some(value) = header.trim().strip_prefix("Content-Length: ") {
                length = value.parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stdout.read_exact(&mut body).unwrap();
        let message: Value = serde_json::from_slice(&body).unwrap();
        if message["id"] == id {
            return message;
        }
    }
}

#[test]
fn serve_still_answers_when_the_built_in_model_cannot_be_written() {
    // A cache "folder" under a file: the built-in model cannot be written there.
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deepseek-lsp"))
        .arg("serve")
        .env_remove("DEEPSEEK_LSP_MODEL")
        .env("XDG_CACHE_HOME", blocker.path().join("cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    send(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#,
    );
    assert!(reply(&mut stdout, 1)["result"]["capabilities"].is_object());
    send(
        &mut stdin,
        r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#,
    );
    send(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":2,"method":"deepseek/status","params":null}"#,
    );
    assert_eq!(reply(&mut stdout, 2)["result"]["model"], "unconfigured");
    send(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":3,"method":"shutdown","params":null}"#,
    );
    reply(&mut stdout, 3);
    send(
        &mut stdin,
        r#"{"jsonrpc":"2.0","method":"exit","params":null}"#,
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write the built-in model"),
        "{stderr}"
    );
}

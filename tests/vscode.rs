//! The VSCode extension (editors/vscode): it installs from its lockfile, compiles with
//! `tsc --strict`, its node tests drive this server binary through vscode-jsonrpc /
//! vscode-languageserver-protocol (the libraries VSCode itself uses) with the messages the
//! extension sends, and it packages into a .vsix.

use std::path::Path;
use std::process::Command;

fn extension_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/editors/vscode"))
}

/// Runs `npm ARGS` in the extension folder, failing the test with its output on error.
fn npm(args: &[&str]) -> String {
    let output = Command::new("npm")
        .args(args)
        .current_dir(extension_dir())
        .env("DEEPSEEK_LSP_BIN", env!("CARGO_BIN_EXE_deepseek-lsp"))
        .env_remove("DEEPSEEK_LSP_MODEL")
        .output()
        .expect("npm runs (the VSCode extension's tests need Node.js and npm)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "npm {} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn the_extension_builds_passes_its_tests_against_the_server_and_packages() {
    npm(&["ci", "--no-audit", "--no-fund"]);
    npm(&["run", "build"]);
    let tests = npm(&["test"]);
    assert!(
        tests.contains("# fail 0"),
        "node's test runner reports no failure:\n{tests}"
    );
    let version = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(extension_dir().join("package.json")).unwrap(),
    )
    .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let vsix = extension_dir().join(format!("deepseek-lsp-{version}.vsix"));
    let _ = std::fs::remove_file(&vsix);
    npm(&["run", "package"]);
    let size = std::fs::metadata(&vsix)
        .unwrap_or_else(|e| panic!("{}: {e}", vsix.display()))
        .len();
    assert!(size > 1000, "{} is {size} bytes", vsix.display());
}

//! `deepseek-lsp review` on git repositories the test makes: setup errors exit 2 with a clear
//! message, and a real run with the built-in model writes every format in a form its reader
//! accepts (the answer parser and the formats' fields are unit-tested in server/src/review).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// A repository whose second commit adds an off-by-one loop and a wrong mean.
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    git(path, &["init", "-q"]);
    std::fs::write(
        path.join("calc.py"),
        "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n",
    )
    .unwrap();
    git(path, &["add", "."]);
    git(path, &["commit", "-qm", "base"]);
    std::fs::write(
        path.join("calc.py"),
        "def total(xs):\n    s = 0\n    for x in xs[1:]:\n        s += x\n    return s\n\n\ndef mean(xs):\n    return total(xs) / len(xs) + 1\n",
    )
    .unwrap();
    git(path, &["commit", "-qam", "change"]);
    dir
}

fn review(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deepseek-lsp"))
        .arg("review")
        .args(args)
        .current_dir(dir)
        .env_remove("DEEPSEEK_LSP_MODEL")
        .output()
        .unwrap()
}

fn assert_setup_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn setup_errors_exit_2_with_what_is_wrong() {
    let plain = tempfile::tempdir().unwrap();
    assert_setup_error(&review(plain.path(), &[]), "not inside a git repository");
    let repo = repository();
    assert_setup_error(
        &review(repo.path(), &["--base", "no-such-branch"]),
        "`no-such-branch` is not a revision",
    );
    assert_setup_error(
        &review(repo.path(), &["--head", "HEAD~7"]),
        "`HEAD~7` is not a revision",
    );
}

#[test]
fn every_format_is_readable_and_runs_are_repeatable() {
    let repo = repository();
    let run = |format: &str| {
        let output = review(repo.path(), &["--format", format, "--fail-on", "never"]);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(output.status.code(), Some(0), "{format}: {stderr}");
        assert!(
            stderr.contains("review HEAD~1...HEAD: 2 hunk(s) in 1 file(s)"),
            "{format}: {stderr}"
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(json["hunks"], 2);
    // Whatever the tiny model wrote, a reported finding points at an added line.
    let added = [3, 6, 7, 8, 9];
    for finding in json["findings"].as_array().unwrap() {
        assert_eq!(finding["path"], "calc.py");
        let start = finding["start_line"].as_u64().unwrap();
        let end = finding["end_line"].as_u64().unwrap();
        assert!((start..=end).all(|l| added.contains(&l)), "{finding}");
    }
    let sarif: Value = serde_json::from_str(&run("sarif")).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["tool"]["driver"]["name"], "deepseek-lsp");
    for line in run("rdjsonl").lines() {
        let diagnostic: Value = serde_json::from_str(line).unwrap();
        assert!(diagnostic["location"]["path"].is_string());
    }
    let gitlab: Value = serde_json::from_str(&run("gitlab")).unwrap();
    assert!(gitlab.is_array());
    assert!(run("github").lines().all(|l| l.starts_with("::")));
    assert!(run("markdown").starts_with("## deepseek-lsp review of `HEAD~1...HEAD`"));
    // Greedy decoding: the same change gives the same report.
    let again: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(json["findings"], again["findings"]);
    assert_eq!(json["dropped"], again["dropped"]);
}

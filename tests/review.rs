//! `deepseek-lsp review` on git repositories the test makes: setup errors exit 2 with a clear
//! message; a real run with the built-in model writes every format in a form its reader
//! accepts; a scripted model (one that always answers a given finding) shows what happens to
//! findings end to end: only added lines are reported, `--fail-on` sets the exit code, and
//! fingerprints survive runs and moved lines. The answer parser and the formats' fields are
//! unit-tested in server/src/review.

#[path = "support/scripted_model.rs"]
mod scripted_model;

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

/// A repository whose second commit adds an off-by-one loop (line 3) and a wrong mean (lines
/// 6-9), both after `header` (lines that neither commit changes).
fn repository_after(header: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    git(path, &["init", "-q"]);
    std::fs::write(
        path.join("calc.py"),
        format!(
            "{header}def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n"
        ),
    )
    .unwrap();
    git(path, &["add", "."]);
    git(path, &["commit", "-qm", "base"]);
    std::fs::write(
        path.join("calc.py"),
        format!("{header}def total(xs):\n    s = 0\n    for x in xs[1:]:\n        s += x\n    return s\n\n\ndef mean(xs):\n    return total(xs) / len(xs) + 1\n"),
    )
    .unwrap();
    git(path, &["commit", "-qam", "change"]);
    dir
}

fn repository() -> tempfile::TempDir {
    repository_after("")
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
    let missing = repo.path().join("no-model-here");
    assert_setup_error(
        &review(repo.path(), &["--model", missing.to_str().unwrap()]),
        "does not exist",
    );
    // A folder that is not a checkpoint.
    assert_setup_error(
        &review(repo.path(), &["--model", repo.path().to_str().unwrap()]),
        "config.json",
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

/// The off-by-one finding as the model is asked to write it, about line `line`.
fn loop_finding(line: usize, severity: &str) -> String {
    format!(
        "{{\"line\": {line}, \"severity\": \"{severity}\", \"rule\": \"possible-bug\", \
         \"message\": \"the loop skips the first element\", \
         \"replacement\": \"    for x in xs:\"}}\n"
    )
}

/// `review` with a scripted model that answers every hunk with `pieces`.
fn review_scripted(dir: &Path, pieces: &[&str], args: &[&str]) -> Output {
    review_scripted_in_window(dir, pieces, 4096, args)
}

/// As `review_scripted`, with a model whose window is `window` tokens.
fn review_scripted_in_window(dir: &Path, pieces: &[&str], window: usize, args: &[&str]) -> Output {
    let model = tempfile::tempdir().unwrap();
    scripted_model::write(model.path(), pieces, window);
    let mut all = vec!["--model", model.path().to_str().unwrap()];
    all.extend_from_slice(args);
    review(dir, &all)
}

fn json_report(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

#[test]
fn a_finding_on_an_added_line_is_reported_and_fails_the_run_at_its_level() {
    let repo = repository();
    let finding = loop_finding(3, "warning");
    let run = |fail_on: &str| {
        review_scripted(
            repo.path(),
            &[&finding],
            &["--format", "json", "--fail-on", fail_on],
        )
    };
    let failed = run("warning");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    let report = json_report(&failed);
    let findings = report["findings"].as_array().unwrap();
    // Both hunks got the same answer; only the first hunk added line 3.
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["path"], "calc.py");
    assert_eq!(findings[0]["start_line"], 3);
    assert_eq!(findings[0]["severity"], "warning");
    assert_eq!(findings[0]["rule"], "possible-bug");
    assert_eq!(findings[0]["replacement"], "    for x in xs:");
    assert_eq!(report["dropped"]["outside-diff"], 1, "{report}");
    assert!(stderr.contains("1 finding"), "{stderr}");

    // Below the bar, or with no bar, the same finding passes.
    assert_eq!(run("error").status.code(), Some(0));
    assert_eq!(run("never").status.code(), Some(0));
    assert_eq!(json_report(&run("error"))["findings"], report["findings"]);
}

#[test]
fn findings_outside_the_added_lines_or_files_or_unparseable_are_dropped_not_reported() {
    let repo = repository();
    // Line 1 is unchanged context, line 3 in another file, then prose.
    let outside = loop_finding(1, "error");
    let elsewhere =
        loop_finding(3, "error").replace("{\"line\"", "{\"file\": \"../etc/passwd\", \"line\"");
    let output = review_scripted(
        repo.path(),
        &[&outside, &elsewhere, "I think this code is fine overall.\n"],
        &["--format", "json", "--fail-on", "note"],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_report(&output);
    assert_eq!(report["findings"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["dropped"]["outside-diff"], 2, "{report}");
    assert_eq!(report["dropped"]["unknown-file"], 2, "{report}");
    assert_eq!(report["dropped"]["unparseable"], 2, "{report}");
}

#[test]
fn fingerprints_are_stable_across_runs_and_moved_lines() {
    let fingerprints = |header: &str, line: usize| {
        let repo = repository_after(header);
        let finding = loop_finding(line, "error");
        let run = |format: &str| {
            review_scripted(
                repo.path(),
                &[&finding],
                &["--format", format, "--fail-on", "never"],
            )
        };
        let sarif: Value = serde_json::from_slice(&run("sarif").stdout).unwrap();
        let gitlab: Value = serde_json::from_slice(&run("gitlab").stdout).unwrap();
        let result = &sarif["runs"][0]["results"][0];
        assert_eq!(
            result["locations"][0]["physicalLocation"]["region"]["startLine"],
            line
        );
        (
            result["partialFingerprints"].clone(),
            gitlab[0]["fingerprint"].clone(),
        )
    };
    let first = fingerprints("", 3);
    assert!(first.0.is_object() && first.1.is_string(), "{first:?}");
    assert_eq!(fingerprints("", 3), first, "a second run");
    // Two lines added above the change in both commits: the finding moves to line 5.
    assert_eq!(
        fingerprints("import math\nimport os\n", 5),
        first,
        "the finding moved down two lines"
    );
}

/// Runs `npm ARGS` in tools/rdformat (reviewdog's format validator), failing with its output.
fn rdformat_npm(args: &[&str]) -> (bool, String) {
    let output = Command::new("npm")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/rdformat"))
        .output()
        .expect("npm runs (the rdjsonl check needs Node.js and npm)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn real_findings_validate_in_rdjsonl_and_gitlab_code_quality() {
    let repo = repository();
    let finding = loop_finding(3, "error");
    let run = |format: &str| {
        let output = review_scripted(repo.path(), &[&finding], &["--format", format]);
        assert_eq!(output.status.code(), Some(0), "{format}");
        output.stdout
    };

    // reviewdog: an independent validator of its Diagnostic Format, strict about fields.
    let rdjsonl = run("rdjsonl");
    let lines: Vec<Value> = rdjsonl
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["suggestions"][0]["text"], "    for x in xs:");
    // "    for x in xs[1:]:" is 20 bytes; the range's end column is exclusive.
    assert_eq!(lines[0]["suggestions"][0]["range"]["end"]["column"], 21);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &rdjsonl).unwrap();
    let (installed, log) = rdformat_npm(&["ci", "--no-audit", "--no-fund"]);
    assert!(installed, "npm ci failed:\n{log}");
    let (valid, log) = rdformat_npm(&[
        "exec",
        "--",
        "node",
        "validate.js",
        file.path().to_str().unwrap(),
    ]);
    assert!(valid, "{log}");
    assert!(log.contains("1 diagnostic(s), 0 invalid"), "{log}");

    // GitLab Code Quality's documented fields.
    let gitlab: Value = serde_json::from_slice(&run("gitlab")).unwrap();
    let issue = &gitlab[0];
    assert_eq!(gitlab.as_array().unwrap().len(), 1);
    assert_eq!(issue["check_name"], "possible-bug");
    assert!(
        issue["description"]
            .as_str()
            .unwrap()
            .contains("skips the first element")
    );
    assert!(
        ["info", "minor", "major", "critical", "blocker"]
            .contains(&issue["severity"].as_str().unwrap())
    );
    assert!(!issue["fingerprint"].as_str().unwrap().is_empty());
    assert_eq!(issue["location"]["path"], "calc.py");
    assert_eq!(issue["location"]["lines"]["begin"], 3);
}

#[test]
fn a_hunk_larger_than_the_window_is_reviewed_in_parts_and_an_overlong_line_is_skipped() {
    let repo = repository();
    // One new file, one hunk: 80 ordinary lines (about 1,500 tokens) and a 6,000-character line.
    let mut text: String = (1..=80)
        .map(|i| format!("    values.append(compute_value_{i}(alpha, beta, gamma) * {i})\n"))
        .collect();
    text.push_str(&format!("BLOB = \"{}\"\n", "a1b2c3d4e5f6 ".repeat(460)));
    std::fs::write(
        repo.path().join("big.py"),
        format!("def fill(values):\n{text}"),
    )
    .unwrap();
    git(repo.path(), &["add", "big.py"]);
    git(repo.path(), &["commit", "-qm", "big"]);
    // The model's window leaves 768 tokens for a prompt (1,024 less 256 for the answer).
    let finding = loop_finding(70, "warning").replace("\"line\"", "\"file\": \"big.py\", \"line\"");
    let output = review_scripted_in_window(
        repo.path(),
        &[&finding],
        1024,
        &["--base", "HEAD~1", "--format", "json"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report = json_report(&output);
    let parts = report["hunks"].as_u64().unwrap();
    assert!(parts >= 3, "one hunk answered in {parts} part(s): {stderr}");
    // The part holding line 70 reports it; the others drop it as outside their lines.
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["path"], "big.py");
    assert_eq!(findings[0]["start_line"], 70);
    assert!(
        stderr.contains("1 added line(s) too long for the model's window not reviewed"),
        "{stderr}"
    );
}

#[test]
fn a_gguf_model_reviews_too() {
    let repo = repository();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/engine/tests/fixtures/gguf/lite-q8_0.gguf"
    );
    let output = review(
        repo.path(),
        &["--model", model, "--format", "json", "--max-tokens", "16"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // The fixture's window is 128 tokens, less than the review's instructions: the file loads,
    // and every added line is reported as not reviewed rather than sent past the window.
    assert!(
        stderr.contains("5 added line(s) too long for the model's window not reviewed"),
        "{stderr}"
    );
    assert_eq!(json_report(&output)["hunks"], 0, "{stderr}");
}

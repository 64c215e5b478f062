//! The model's answer about one hunk, read into findings. The model is asked for one JSON object
//! per line; nothing it writes is trusted: every finding must point inside the lines the hunk
//! added, name the hunk's file (if it names one), use a known rule and severity, and say
//! something. Whatever fails is dropped and counted by reason, never reported.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::diff::FileDiff;

/// Longest message kept, in characters; longer ones are cut (a model can ramble for pages).
pub const MAX_MESSAGE_CHARS: usize = 400;
/// Longest replacement kept, in lines.
pub const MAX_REPLACEMENT_LINES: usize = 40;

/// The rules a finding may carry.
pub const RULES: [(&str, &str); 4] = [
    (
        "possible-bug",
        "Code that probably does not do what it intends",
    ),
    ("security", "A weakness an attacker could use"),
    (
        "performance",
        "Work that is slower or larger than it needs to be",
    ),
    (
        "style",
        "Code that is harder to read or maintain than it needs to be",
    ),
];

/// How serious a finding is (SARIF's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

impl Severity {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "note" | "info" | "information" => Some(Self::Note),
            "warning" | "warn" => Some(Self::Warning),
            "error" => Some(Self::Error),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Note => "note",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One validated finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Relative to the repository root, `/`-separated.
    pub path: String,
    /// 1-based, inclusive, on the new side; every line was added by the change.
    pub start_line: usize,
    pub end_line: usize,
    pub severity: Severity,
    pub rule: String,
    pub message: String,
    /// New text for lines `start_line..=end_line`, when the model proposed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

impl Finding {
    pub fn lines(&self) -> RangeInclusive<usize> {
        self.start_line..=self.end_line
    }
}

/// Why an answer line was not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dropped {
    /// Not a JSON object with the fields asked for.
    Unparseable,
    /// Lines outside what the hunk added.
    OutsideDiff,
    /// A file other than the hunk's (or outside the repository).
    UnknownFile,
    UnknownRule,
    UnknownSeverity,
    EmptyMessage,
}

/// What one answer gave: the findings and the count of lines dropped, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParsedAnswer {
    pub findings: Vec<Finding>,
    pub dropped: BTreeMap<Dropped, usize>,
}

/// The shape the model is asked to write, one object per line.
#[derive(Deserialize)]
struct RawFinding {
    #[serde(default)]
    file: Option<String>,
    line: serde_json::Value,
    #[serde(default)]
    end_line: Option<serde_json::Value>,
    severity: String,
    rule: String,
    message: String,
    #[serde(default)]
    replacement: Option<String>,
}

/// Reads the model's answer about `lines` (the hunk's added lines) of `file`. Lines that are
/// blank, `NONE`, or code fences are not findings and not counted as dropped.
pub fn parse_answer(answer: &str, file: &FileDiff, lines: &RangeInclusive<usize>) -> ParsedAnswer {
    let mut parsed = ParsedAnswer::default();
    for line in answer.lines().map(str::trim) {
        if line.is_empty() || line.eq_ignore_ascii_case("none") || line.starts_with("```") {
            continue;
        }
        match validate(line, file, lines) {
            Ok(finding) => parsed.findings.push(finding),
            Err(reason) => *parsed.dropped.entry(reason).or_default() += 1,
        }
    }
    parsed
}

fn validate(line: &str, file: &FileDiff, hunk: &RangeInclusive<usize>) -> Result<Finding, Dropped> {
    let raw: RawFinding = serde_json::from_str(line).map_err(|_| Dropped::Unparseable)?;
    if let Some(named) = &raw.file
        && normalize(named).as_deref() != Some(file.path.as_str())
    {
        return Err(Dropped::UnknownFile);
    }
    let start = line_number(&raw.line).ok_or(Dropped::Unparseable)?;
    let end = match &raw.end_line {
        Some(value) if !value.is_null() => line_number(value).ok_or(Dropped::Unparseable)?,
        _ => start,
    };
    let lines = start..=end;
    if end < start
        || !hunk.contains(&start)
        || !hunk.contains(&end)
        || !file.added_lines_cover(&lines)
    {
        return Err(Dropped::OutsideDiff);
    }
    let rule = raw.rule.trim().to_ascii_lowercase();
    if !RULES.iter().any(|(id, _)| *id == rule) {
        return Err(Dropped::UnknownRule);
    }
    let severity = Severity::parse(&raw.severity).ok_or(Dropped::UnknownSeverity)?;
    let message = clean_message(&raw.message);
    if message.is_empty() {
        return Err(Dropped::EmptyMessage);
    }
    let replacement = raw
        .replacement
        .filter(|r| r.lines().count() <= MAX_REPLACEMENT_LINES && !r.contains('\0'));
    Ok(Finding {
        path: file.path.clone(),
        start_line: start,
        end_line: end,
        severity,
        rule,
        message,
        replacement,
    })
}

/// A line number given as a number or a numeric string, at least 1.
fn line_number(value: &serde_json::Value) -> Option<usize> {
    let number = match value {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    usize::try_from(number).ok().filter(|&n| n >= 1)
}

/// A repository-relative path as the model may write it (`./a/b.py`, `b/a/b.py` from a diff),
/// or `None` when it leaves the repository (absolute, `..`).
fn normalize(path: &str) -> Option<String> {
    let path = path.trim().replace('\\', "/");
    if path.starts_with('/') || path.contains(':') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// One line, no control characters, at most `MAX_MESSAGE_CHARS`.
fn clean_message(message: &str) -> String {
    let flat: String = message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if flat.chars().count() <= MAX_MESSAGE_CHARS {
        flat
    } else {
        let cut: String = flat.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::diff::Hunk;

    fn file() -> FileDiff {
        FileDiff {
            path: "src/app.py".into(),
            old_path: None,
            hunks: vec![Hunk {
                added: vec![10, 11, 12, 14],
                removed: Vec::new(),
                section: String::new(),
            }],
        }
    }

    fn parse(answer: &str) -> ParsedAnswer {
        parse_answer(answer, &file(), &(10..=14))
    }

    #[test]
    fn well_formed_findings_are_kept() {
        let answer = r#"
```
{"line": 11, "end_line": 12, "severity": "warning", "rule": "possible-bug", "message": "off by one:\n the loop skips the first item", "replacement": "for x in xs:"}
{"file": "./src/app.py", "line": "14", "severity": "ERROR", "rule": "Security", "message": "eval of user input"}
```
NONE
"#;
        let parsed = parse(answer);
        assert!(parsed.dropped.is_empty(), "{:?}", parsed.dropped);
        assert_eq!(parsed.findings.len(), 2);
        let first = &parsed.findings[0];
        assert_eq!(first.lines(), 11..=12);
        assert_eq!(first.message, "off by one: the loop skips the first item");
        assert_eq!(first.replacement.as_deref(), Some("for x in xs:"));
        let second = &parsed.findings[1];
        assert_eq!(
            (second.severity, second.rule.as_str()),
            (Severity::Error, "security")
        );
        assert_eq!(second.path, "src/app.py");
    }

    #[test]
    fn malformed_and_adversarial_answers_are_dropped_and_counted() {
        let huge = "x".repeat(100_000);
        let answer = format!(
            r#"The code looks fine to me.
{{"line": 3, "severity": "warning", "rule": "style", "message": "before the hunk"}}
{{"line": 12, "end_line": 14, "severity": "warning", "rule": "style", "message": "line 13 is context, not added"}}
{{"line": 12, "end_line": 11, "severity": "warning", "rule": "style", "message": "backwards"}}
{{"file": "../../etc/passwd", "line": 10, "severity": "error", "rule": "security", "message": "outside"}}
{{"file": "/abs/src/app.py", "line": 10, "severity": "error", "rule": "security", "message": "absolute"}}
{{"file": "src/other.py", "line": 10, "severity": "error", "rule": "security", "message": "another file"}}
{{"line": 10, "severity": "catastrophic", "rule": "style", "message": "m"}}
{{"line": 10, "severity": "note", "rule": "vibes", "message": "m"}}
{{"line": 10, "severity": "note", "rule": "style", "message": "  \n\t "}}
{{"line": -1, "severity": "note", "rule": "style", "message": "m"}}
{{"line": 10, "severity": "note", "rule": "style", "message": "{huge}"}}"#
        );
        let parsed = parse(&answer);
        let count = |reason| parsed.dropped.get(&reason).copied().unwrap_or(0);
        assert_eq!(count(Dropped::Unparseable), 2, "prose and a negative line");
        assert_eq!(count(Dropped::OutsideDiff), 3);
        assert_eq!(count(Dropped::UnknownFile), 3);
        assert_eq!(count(Dropped::UnknownSeverity), 1);
        assert_eq!(count(Dropped::UnknownRule), 1);
        assert_eq!(count(Dropped::EmptyMessage), 1);
        assert_eq!(parsed.findings.len(), 1, "the huge message is kept, cut");
        assert_eq!(
            parsed.findings[0].message.chars().count(),
            MAX_MESSAGE_CHARS
        );
        assert!(parsed.findings[0].message.ends_with('…'));
    }
}

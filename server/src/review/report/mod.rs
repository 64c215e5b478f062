//! A review's findings in the forms CI systems read: SARIF 2.1.0 (GitHub code scanning),
//! reviewdog's rdjsonl, GitLab Code Quality, GitHub workflow annotations, Markdown and JSON.

mod github;
mod gitlab;
mod json;
mod markdown;
mod rdjsonl;
mod sarif;

use std::collections::HashMap;

use serde::Serialize;

use super::findings::{Dropped, Finding};

/// The output formats, as `--format` names them.
pub const FORMATS: [&str; 6] = ["sarif", "rdjsonl", "gitlab", "github", "markdown", "json"];

/// A finding with what the formats add: the text of its lines and a stable fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct Reported {
    #[serde(flatten)]
    pub finding: Finding,
    /// The flagged lines as the change left them.
    #[serde(skip)]
    pub snippet: Vec<String>,
    /// Stable across runs and line moves: the file, the rule and the flagged code, plus an
    /// occurrence number when the same code is flagged twice for the same rule.
    pub fingerprint: String,
}

/// Everything a format may show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub tool_version: String,
    pub base: String,
    pub head: String,
    pub findings: Vec<Reported>,
    pub hunks: usize,
    pub dropped: std::collections::BTreeMap<Dropped, usize>,
    pub seconds: f64,
}

impl Report {
    /// Builds the report, fingerprinting the findings in order; `snippet_of` gives the text of
    /// a finding's lines.
    pub fn new(findings: Vec<Finding>, snippet_of: impl Fn(&Finding) -> Vec<String>) -> Self {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let findings = findings
            .into_iter()
            .map(|finding| {
                let snippet = snippet_of(&finding);
                let mut key = format!("{}\0{}\0", finding.path, finding.rule);
                for line in &snippet {
                    key.push_str(line.trim());
                    key.push('\n');
                }
                let hash = fnv1a(key.as_bytes());
                let occurrence = seen.entry(hash).or_default();
                *occurrence += 1;
                Reported {
                    fingerprint: format!("{hash:016x}:{occurrence}"),
                    finding,
                    snippet,
                }
            })
            .collect();
        Self {
            findings,
            ..Self::default()
        }
    }

    /// The report in `format` (one of `FORMATS`).
    pub fn render(&self, format: &str) -> Option<String> {
        Some(match format {
            "sarif" => sarif::render(self),
            "rdjsonl" => rdjsonl::render(self),
            "gitlab" => gitlab::render(self),
            "github" => github::render(self),
            "markdown" => markdown::render(self),
            "json" => json::render(self),
            _ => return None,
        })
    }

    /// The number of findings dropped for any reason.
    pub fn dropped_total(&self) -> usize {
        self.dropped.values().sum()
    }
}

/// 64-bit FNV-1a: tiny, and the same on every platform and run (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A repository-relative path as a relative URI reference (RFC 3986: unreserved characters and
/// `/` kept, everything else percent-encoded as UTF-8).
pub(crate) fn relative_uri(path: &str) -> String {
    let mut uri = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::review::findings::Severity;

    /// Two findings in a file with an awkward name, one with a replacement.
    pub fn sample() -> Report {
        let findings = vec![
            Finding {
                path: "src/café b.py".into(),
                start_line: 4,
                end_line: 5,
                severity: Severity::Warning,
                rule: "possible-bug".into(),
                message: "off by one, \"xs[1:]\" skips the first item: 100% wrong".into(),
                replacement: Some("    for x in xs:\n        total += x".into()),
            },
            Finding {
                path: "src/app.rs".into(),
                start_line: 9,
                end_line: 9,
                severity: Severity::Error,
                rule: "security".into(),
                message: "a shell command built from input,\nline two".into(),
                replacement: None,
            },
        ];
        let mut report = Report::new(findings, |f| {
            (f.start_line..=f.end_line)
                .map(|l| format!("line {l} of {}", f.path))
                .collect()
        });
        report.tool_version = "0.1.0".into();
        report.base = "main".into();
        report.head = "HEAD".into();
        report.hunks = 3;
        report.dropped.insert(Dropped::Unparseable, 2);
        report
    }

    #[test]
    fn fingerprints_are_stable_and_unique() {
        let a = sample();
        let b = sample();
        let prints: Vec<_> = a.findings.iter().map(|f| f.fingerprint.clone()).collect();
        assert_eq!(
            prints,
            b.findings
                .iter()
                .map(|f| f.fingerprint.clone())
                .collect::<Vec<_>>()
        );
        assert_ne!(prints[0], prints[1]);
        // The same code flagged twice for the same rule: same hash, different occurrence.
        let twice = Report::new(
            vec![a.findings[1].finding.clone(), a.findings[1].finding.clone()],
            |_| vec!["same".into()],
        );
        assert_ne!(twice.findings[0].fingerprint, twice.findings[1].fingerprint);
        assert_eq!(
            twice.findings[0].fingerprint.split(':').next(),
            twice.findings[1].fingerprint.split(':').next()
        );
    }

    #[test]
    fn paths_become_relative_uris() {
        assert_eq!(relative_uri("src/café b.py"), "src/caf%C3%A9%20b.py");
        assert_eq!(relative_uri("a/b-c_d.e~"), "a/b-c_d.e~");
    }
}

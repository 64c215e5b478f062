//! GitLab's Code Quality report: a JSON array of issues with unique fingerprints.

use serde_json::{Value, json};

use super::Report;
use crate::review::findings::Severity;

pub fn render(report: &Report) -> String {
    let issues: Vec<Value> = report
        .findings
        .iter()
        .map(|reported| {
            let f = &reported.finding;
            json!({
                "description": f.message,
                "check_name": f.rule,
                "fingerprint": reported.fingerprint,
                "severity": match f.severity {
                    Severity::Error => "critical",
                    Severity::Warning => "major",
                    Severity::Note => "info",
                },
                "location": {"path": f.path, "lines": {"begin": f.start_line, "end": f.end_line}},
                "categories": [match f.rule.as_str() {
                    "security" => "Security",
                    "performance" => "Performance",
                    "style" => "Style",
                    _ => "Bug Risk",
                }],
                "type": "issue",
                "engine_name": "deepseek-lsp",
            })
        })
        .collect();
    serde_json::to_string_pretty(&issues).expect("plain data serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_carry_the_documented_fields() {
        let issues: Vec<Value> =
            serde_json::from_str(&render(&super::super::tests::sample())).unwrap();
        assert_eq!(issues.len(), 2);
        for issue in &issues {
            for field in ["description", "check_name", "fingerprint", "severity"] {
                assert!(issue[field].is_string(), "{field} in {issue}");
            }
            assert!(issue["location"]["path"].is_string());
            assert!(issue["location"]["lines"]["begin"].is_u64());
        }
        assert_eq!(issues[1]["severity"], "critical");
        assert_ne!(issues[0]["fingerprint"], issues[1]["fingerprint"]);
    }
}

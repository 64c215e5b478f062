//! reviewdog's rdjsonl: one `Diagnostic` per line, with a suggestion when a finding has a
//! replacement (reviewdog turns it into a GitHub suggested change).

use serde_json::json;

use super::Report;
use crate::review::findings::Severity;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for reported in &report.findings {
        let f = &reported.finding;
        let severity = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Note => "INFO",
        };
        let mut diagnostic = json!({
            "message": f.message,
            "location": {
                "path": f.path,
                "range": {"start": {"line": f.start_line}, "end": {"line": f.end_line}},
            },
            "severity": severity,
            "source": {"name": "deepseek-lsp", "url": "https://github.com/deepseek-lsp/deepseek-lsp"},
            "code": {"value": f.rule},
            // The proto field name: reviewdog's reader (protojson) takes it, and so do strict
            // validators that know only the proto's names.
            "original_output": reported.fingerprint,
        });
        if let Some(replacement) = &f.replacement {
            // Columns are 1-based UTF-8 byte offsets and the end is exclusive: the whole of the
            // flagged lines.
            let end_column = reported.snippet.last().map_or(1, |l| l.len() + 1);
            diagnostic["suggestions"] = json!([{
                "range": {
                    "start": {"line": f.start_line, "column": 1},
                    "end": {"line": f.end_line, "column": end_column},
                },
                "text": replacement,
            }]);
        }
        out.push_str(&diagnostic.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_diagnostic_per_line_with_suggestions() {
        let text = render(&super::super::tests::sample());
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["severity"], "WARNING");
        assert_eq!(lines[0]["location"]["range"]["end"]["line"], 5);
        // "line 5 of src/café b.py": 23 characters, 24 bytes (é is two); the end is exclusive.
        assert_eq!(lines[0]["suggestions"][0]["range"]["end"]["column"], 25);
        assert!(lines[0]["original_output"].is_string());
        assert_eq!(lines[1]["severity"], "ERROR");
        assert!(lines[1].get("suggestions").is_none());
    }
}

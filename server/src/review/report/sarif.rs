//! SARIF 2.1.0, as GitHub code scanning uploads it: one run, the rules table, relative URIs
//! against `%SRCROOT%`, partial fingerprints, and fixes for findings with a replacement.

use serde_json::{Value, json};

use super::{Report, relative_uri};
use crate::review::findings::RULES;

pub fn render(report: &Report) -> String {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|(id, description)| {
            json!({
                "id": id,
                "name": camel_case(id),
                "shortDescription": {"text": description},
                "defaultConfiguration": {"level": "warning"},
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|reported| {
            let f = &reported.finding;
            let location = json!({
                "uri": relative_uri(&f.path),
                "uriBaseId": "%SRCROOT%",
            });
            let region = json!({"startLine": f.start_line, "endLine": f.end_line});
            let mut result = json!({
                "ruleId": f.rule,
                "ruleIndex": RULES.iter().position(|(id, _)| *id == f.rule).unwrap_or(0),
                "level": f.severity.as_str(),
                "message": {"text": f.message},
                "locations": [{"physicalLocation": {"artifactLocation": location, "region": region}}],
                "partialFingerprints": {"deepseekLsp/v1": reported.fingerprint},
            });
            if let Some(replacement) = &f.replacement {
                let end_column = reported.snippet.last().map_or(1, |l| l.chars().count() + 1);
                result["fixes"] = json!([{
                    "description": {"text": format!("Replace lines {}-{}", f.start_line, f.end_line)},
                    "artifactChanges": [{
                        "artifactLocation": location,
                        "replacements": [{
                            "deletedRegion": {
                                "startLine": f.start_line, "startColumn": 1,
                                "endLine": f.end_line, "endColumn": end_column,
                            },
                            "insertedContent": {"text": replacement},
                        }],
                    }],
                }]);
            }
            result
        })
        .collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "deepseek-lsp",
                "version": report.tool_version,
                "informationUri": "https://github.com/deepseek-lsp/deepseek-lsp",
                "rules": rules,
            }},
            "automationDetails": {"id": format!("deepseek-lsp/review/{}...{}", report.base, report.head)},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&log).expect("plain data serialises") + "\n"
}

fn camel_case(id: &str) -> String {
    id.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_point_at_relative_uris_with_fingerprints_and_fixes() {
        let log: Value = serde_json::from_str(&render(&super::super::tests::sample())).unwrap();
        let run = &log["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"][0]["name"], "PossibleBug");
        let first = &run["results"][0];
        let location = &first["locations"][0]["physicalLocation"];
        assert_eq!(location["artifactLocation"]["uri"], "src/caf%C3%A9%20b.py");
        assert_eq!(location["region"]["endLine"], 5);
        assert_eq!(first["level"], "warning");
        assert!(first["partialFingerprints"]["deepseekLsp/v1"].is_string());
        let replaced = &first["fixes"][0]["artifactChanges"][0]["replacements"][0];
        assert_eq!(
            replaced["deletedRegion"]["endColumn"], 24,
            "after `line 5 of src/café b.py`"
        );
        assert_eq!(run["results"][1]["ruleIndex"], 1);
        assert!(run["results"][1].get("fixes").is_none());
    }
}

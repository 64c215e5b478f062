//! The SARIF the review writes against the official SARIF 2.1.0 JSON schema (OASIS; fetched and
//! checked by tools/sarif_schema.py): findings with and without fixes, awkward paths and
//! messages, and an empty report.

use std::path::PathBuf;
use std::process::Command;

use server::review::findings::{Dropped, Finding, Severity};
use server::review::report::Report;

fn schema() -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/sarif_schema.py");
    let output = Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 runs (the test fetches the SARIF schema)");
    assert!(
        output.status.success(),
        "fetching the schema failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(&std::fs::read_to_string(path.trim()).unwrap()).unwrap()
}

fn finding(path: &str, lines: (usize, usize), severity: Severity, rule: &str) -> Finding {
    Finding {
        path: path.into(),
        start_line: lines.0,
        end_line: lines.1,
        severity,
        rule: rule.into(),
        message: "a message with \"quotes\", 100% and a\ttab".into(),
        replacement: None,
    }
}

/// Replaces every `pattern` equal to `broken` with `good`; returns how many.
fn fix_patterns(value: &mut serde_json::Value, broken: &str, good: &str) -> usize {
    match value {
        serde_json::Value::Object(map) => {
            let mut count = 0;
            if map.get("pattern").and_then(|p| p.as_str()) == Some(broken) {
                map.insert("pattern".into(), good.into());
                count += 1;
            }
            count
                + map
                    .values_mut()
                    .map(|v| fix_patterns(v, broken, good))
                    .sum::<usize>()
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .map(|v| fix_patterns(v, broken, good))
            .sum(),
        _ => 0,
    }
}

fn assert_valid(validator: &jsonschema::Validator, sarif: &str) {
    let instance: serde_json::Value = serde_json::from_str(sarif).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}\n{sarif}", errors.join("\n"));
}

#[test]
fn review_sarif_validates_against_the_official_schema() {
    let mut schema = schema();
    // The 2.1.0 schema's pattern for `language` properties is not a valid regular expression
    // (an unbalanced `]`), and the validator refuses to compile it. Our logs never write a
    // `language`, so the test makes that pattern well-formed and keeps the rest as it is.
    let fixed = fix_patterns(
        &mut schema,
        "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$",
        "^[a-zA-Z]{2}(-[a-zA-Z]{2})?$",
    );
    assert_eq!(fixed, 2, "run.language and toolComponent.language");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let mut with_fix = finding("src/café b.py", (4, 5), Severity::Warning, "possible-bug");
    with_fix.replacement = Some("for x in xs:\n    total += x".into());
    let findings = vec![
        with_fix,
        finding("src/app.rs", (9, 9), Severity::Error, "security"),
        finding("lib/x.go", (1, 3), Severity::Note, "style"),
        finding("a/b.ts", (7, 7), Severity::Warning, "performance"),
    ];
    let mut report = Report::new(findings, |f| {
        (f.start_line..=f.end_line)
            .map(|l| format!("line {l}"))
            .collect()
    });
    report.tool_version = "0.1.0".into();
    report.base = "origin/main".into();
    report.head = "HEAD".into();
    report.dropped.insert(Dropped::OutsideDiff, 1);
    assert_valid(&validator, &report.render("sarif").unwrap());

    let empty = Report::new(Vec::new(), |_| Vec::new());
    assert_valid(&validator, &empty.render("sarif").unwrap());

    // The validator does catch a broken log: a result without its message.
    let mut broken: serde_json::Value =
        serde_json::from_str(&report.render("sarif").unwrap()).unwrap();
    broken["runs"][0]["results"][0]
        .as_object_mut()
        .unwrap()
        .remove("message");
    assert!(!validator.is_valid(&broken));
}

//! GitHub Actions workflow commands (`::warning file=...::message`): annotations on the pull
//! request's diff without any upload step.

use super::Report;
use crate::review::findings::Severity;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for reported in &report.findings {
        let f = &reported.finding;
        let command = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "notice",
        };
        out.push_str(&format!(
            "::{command} file={},line={},endLine={},title={}::{}\n",
            escape_property(&f.path),
            f.start_line,
            f.end_line,
            escape_property(&format!("deepseek-lsp: {}", f.rule)),
            escape_data(&f.message),
        ));
    }
    out
}

/// Workflow command data: `%`, CR and LF are percent-encoded.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Workflow command properties also encode `:` and `,`.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_escaped() {
        let text = render(&super::super::tests::sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "::warning file=src/café b.py,line=4,endLine=5,title=deepseek-lsp%3A possible-bug::off by one, \"xs[1:]\" skips the first item: 100%25 wrong"
        );
        assert!(lines[1].starts_with("::error file=src/app.rs,line=9,endLine=9,"));
        assert!(lines[1].ends_with("input,%0Aline two"));
        assert_eq!(
            lines.len(),
            2,
            "a newline in a message never starts a new command"
        );
    }
}

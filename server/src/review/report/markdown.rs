//! A Markdown summary for a pull request comment or `$GITHUB_STEP_SUMMARY`.

use super::Report;

pub fn render(report: &Report) -> String {
    let mut out = format!(
        "## deepseek-lsp review of `{}...{}`\n\n{} finding(s) in {} hunk(s)",
        report.base,
        report.head,
        report.findings.len(),
        report.hunks
    );
    if report.dropped_total() > 0 {
        out.push_str(&format!(
            "; {} unusable answer line(s) dropped",
            report.dropped_total()
        ));
    }
    out.push_str(".\n");
    if report.findings.is_empty() {
        return out;
    }
    out.push_str("\n| severity | location | rule | message |\n|---|---|---|---|\n");
    for reported in &report.findings {
        let f = &reported.finding;
        let lines = if f.start_line == f.end_line {
            f.start_line.to_string()
        } else {
            format!("{}-{}", f.start_line, f.end_line)
        };
        out.push_str(&format!(
            "| {} | `{}:{lines}` | {} | {} |\n",
            f.severity.as_str(),
            cell(&f.path),
            f.rule,
            cell(&f.message)
        ));
    }
    out
}

/// Text safe inside a table cell: no pipes or line breaks, no stray backticks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_row_per_finding() {
        let text = render(&super::super::tests::sample());
        assert!(text.starts_with(
            "## deepseek-lsp review of `main...HEAD`\n\n2 finding(s) in 3 hunk(s); 2 unusable"
        ));
        assert!(text.contains("| warning | `src/café b.py:4-5` | possible-bug |"));
        assert!(text.contains(
            "| error | `src/app.rs:9` | security | a shell command built from input, line two |"
        ));
    }
}

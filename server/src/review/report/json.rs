//! The whole report as one JSON object, for scripts.

use super::Report;

pub fn render(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("plain data serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_summary_and_dropped_counts() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&super::super::tests::sample())).unwrap();
        assert_eq!(value["findings"][0]["start_line"], 4);
        assert_eq!(value["findings"][0]["severity"], "warning");
        assert!(value["findings"][0]["fingerprint"].is_string());
        assert_eq!(value["dropped"]["unparseable"], 2);
        assert_eq!(value["hunks"], 3);
    }
}

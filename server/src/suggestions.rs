//! Recent suggestions, so typing the characters a suggestion proposed serves the rest of it
//! without asking the model again.

use std::collections::VecDeque;

const CAPACITY: usize = 32;

#[derive(Debug, Clone)]
struct Entry {
    uri: String,
    line: u32,
    /// Hash of the document before the cursor line and after the cursor, at suggestion time.
    context: u64,
    /// The cursor line before the cursor, at suggestion time.
    anchor: String,
    suggestion: String,
}

#[derive(Debug, Default)]
pub struct RecentSuggestions {
    entries: VecDeque<Entry>,
}

impl RecentSuggestions {
    pub fn remember(&mut self, uri: &str, line: u32, context: u64, anchor: &str, suggestion: &str) {
        self.entries.retain(|e| {
            !(e.uri == uri && e.line == line && e.context == context && e.anchor == anchor)
        });
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            uri: uri.to_string(),
            line,
            context,
            anchor: anchor.to_string(),
            suggestion: suggestion.to_string(),
        });
    }

    /// The rest of a remembered suggestion when the user has typed its beginning since.
    pub fn rest(&self, uri: &str, line: u32, context: u64, line_before: &str) -> Option<String> {
        self.entries.iter().rev().find_map(|e| {
            if e.uri != uri || e.line != line || e.context != context {
                return None;
            }
            let typed = line_before.strip_prefix(e.anchor.as_str())?;
            let rest = e.suggestion.strip_prefix(typed)?;
            (!rest.trim().is_empty()).then(|| rest.to_string())
        })
    }

    pub fn forget_document(&mut self, uri: &str) {
        self.entries.retain(|e| e.uri != uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_the_suggestion_serves_its_rest() {
        let mut recent = RecentSuggestions::default();
        recent.remember("file:///a", 3, 42, "    let x = ", "compute(1, 2);");
        assert_eq!(
            recent
                .rest("file:///a", 3, 42, "    let x = comp")
                .as_deref(),
            Some("ute(1, 2);")
        );
        assert_eq!(
            recent.rest("file:///a", 3, 42, "    let x = ").as_deref(),
            Some("compute(1, 2);")
        );
        assert_eq!(
            recent.rest("file:///a", 3, 42, "    let x = cot"),
            None,
            "typed something else"
        );
        assert_eq!(
            recent.rest("file:///a", 3, 7, "    let x = comp"),
            None,
            "the rest of the file changed"
        );
        assert_eq!(
            recent.rest("file:///a", 3, 42, "    let x = compute(1, 2);"),
            None,
            "nothing left"
        );
        recent.forget_document("file:///a");
        assert_eq!(recent.rest("file:///a", 3, 42, "    let x = comp"), None);
    }
}

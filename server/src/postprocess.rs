//! Turning a model's stream into a suggestion worth showing: stop where the suggestion is done,
//! then trim what the document already has and drop what is not worth a glance. `Shaper` runs
//! the whole path, the same for the language server and the command line.

use ropey::Rope;

use crate::indent_healing::IndentHealing;
use crate::syntax::{Mode, indent_width};
use crate::syntax_trim::trim_to_syntax;

/// From a model's stream to the suggestion an editor shows: indentation healing, the stream
/// filter, the cleanup, then the cut where the syntax goes wrong.
pub struct Shaper {
    healing: IndentHealing,
    filter: StreamFilter,
}

impl Shaper {
    /// For a prompt that left out `cut_indentation` (`BuiltContext::cut_indentation`), in `mode`.
    pub fn new(cut_indentation: &str, mode: Mode) -> Self {
        Self {
            healing: IndentHealing::new(cut_indentation),
            filter: StreamFilter::new(mode),
        }
    }

    /// Tokens the generation may not start with (see `IndentHealing`).
    pub fn suppressed_first_tokens(&self, tokenizer: &engine::TextTokenizer) -> Vec<u32> {
        self.healing.suppressed_first_tokens(tokenizer)
    }

    /// Feeds a streamed delta; returns false once the suggestion is complete (stop generating).
    pub fn push(&mut self, delta: &str) -> bool {
        self.filter.push(&self.healing.push(delta))
    }

    /// The suggestion for the cursor at byte `cursor` of `text`, or `None` when nothing is worth
    /// showing.
    pub fn finish(
        self,
        around: &Surroundings,
        text: &Rope,
        cursor: usize,
        language_id: &str,
    ) -> Option<Suggestion> {
        let mut suggestion = finalize(&self.filter.finish(), around)?;
        suggestion.text = trim_to_syntax(text, cursor, language_id, &suggestion.text);
        Some(suggestion)
    }
}

/// Watches streamed text and says when the suggestion is complete.
pub struct StreamFilter {
    mode: Mode,
    text: String,
    /// Bracket depth so far; below zero means the suggestion closed a bracket opened before the
    /// cursor, which the document already closes.
    depth: i64,
    /// Whether a bracket the suggestion opened stayed open across a line break: a block.
    block_opened: bool,
    /// Bytes of `text` that make the suggestion once generation stops.
    end: Option<usize>,
}

impl StreamFilter {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            text: String::new(),
            depth: 0,
            block_opened: false,
            end: None,
        }
    }

    /// Feeds a delta; returns false once the suggestion is complete (stop generating).
    pub fn push(&mut self, delta: &str) -> bool {
        if self.end.is_some() {
            return false;
        }
        let from = self.text.len();
        self.text.push_str(delta);
        self.scan(from);
        self.end.is_none()
    }

    /// The suggestion: everything up to where it completed, or all of it.
    pub fn finish(self) -> String {
        let end = self.end.unwrap_or(self.text.len());
        self.text[..end].to_string()
    }

    fn scan(&mut self, from: usize) {
        let bytes: Vec<(usize, char)> = self.text[from..]
            .char_indices()
            .map(|(i, c)| (from + i, c))
            .collect();
        for (at, c) in bytes {
            match (self.mode, c) {
                (Mode::SingleLine, '\n') => {
                    self.end = Some(at);
                    return;
                }
                (Mode::MultiLine { .. }, '(' | '[' | '{') => self.depth += 1,
                (Mode::MultiLine { .. }, ')' | ']' | '}') => {
                    self.depth -= 1;
                    if self.depth < 0 {
                        // Keep the text before the closing bracket, less trailing blank space.
                        self.end = Some(self.text[..at].trim_end().len());
                        return;
                    }
                }
                (Mode::MultiLine { min_indent }, '\n') => {
                    // A block the suggestion opened and closed again is complete at its line end.
                    if self.block_opened && self.depth == 0 {
                        self.end = Some(at);
                        return;
                    }
                    self.block_opened |= self.depth > 0;
                    self.check_dedent_after(at, min_indent);
                    if self.end.is_some() {
                        return;
                    }
                }
                _ => {}
            }
        }
        // The last line may already be complete enough to judge its indentation.
        if let Mode::MultiLine { min_indent } = self.mode
            && let Some(newline) = self.text.rfind('\n')
        {
            self.check_dedent_after(newline, min_indent);
        }
    }

    /// Ends the suggestion before the line starting after `newline` if it has code and less
    /// indentation than the block.
    fn check_dedent_after(&mut self, newline: usize, min_indent: usize) {
        let line = &self.text[newline + 1..];
        let line = line.split('\n').next().unwrap_or("");
        let has_code = line.trim_start().chars().next().is_some();
        if has_code && indent_width(line) < min_indent {
            self.end = Some(self.text[..newline].trim_end().len());
        }
    }
}

/// A suggestion ready to show: the text to insert and how many bytes of the current line after
/// the cursor it replaces (text the suggestion rewrote identically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub text: String,
    pub replaces: usize,
}

/// What surrounds the cursor, for cleaning up a suggestion.
pub struct Surroundings<'a> {
    /// The cursor line before the cursor.
    pub line_before: &'a str,
    /// The cursor line after the cursor (without its line break).
    pub line_after: &'a str,
    /// The lines after the cursor line.
    pub following: &'a str,
    /// The last non-blank line before the cursor line.
    pub previous_line: &'a str,
}

/// Cleans up a completed suggestion, or drops it (None).
pub fn finalize(raw: &str, around: &Surroundings) -> Option<Suggestion> {
    let mut text = raw.trim_end().to_string();
    // Lines that repeat the start of the document after the cursor are already there.
    let following: Vec<&str> = around
        .following
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let repeated_tail = (1..lines.len()).rev().find(|&k| {
        k <= following.len()
            && lines[lines.len() - k..]
                .iter()
                .zip(&following)
                .all(|(a, b)| a.trim() == b.trim())
    });
    if let Some(k) = repeated_tail {
        text = lines[..lines.len() - k].join("\n").trim_end().to_string();
    }
    // A one-line suggestion ending with the start of the rest of the line replaces that text.
    let after = around.line_after;
    let replaces = if text.contains('\n') {
        0
    } else {
        (1..=after.len())
            .rev()
            .filter(|&k| after.is_char_boundary(k))
            .find(|&k| text.ends_with(&after[..k]))
            .unwrap_or(0)
    };
    if text.trim().is_empty() {
        return None;
    }
    let first_line = text.lines().next().unwrap_or("").trim();
    let repeats_previous = !first_line.is_empty()
        && (first_line == around.previous_line.trim()
            || format!("{}{}", around.line_before, first_line).trim()
                == around.previous_line.trim());
    let only_rewrites_rest_of_line = replaces == text.len();
    if repeats_previous || only_rewrites_rest_of_line || repeats_itself(&text) {
        return None;
    }
    Some(Suggestion { text, replaces })
}

/// The same non-trivial line three times or more in a row: a model stuck in a loop.
fn repeats_itself(text: &str) -> bool {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() > 2)
        .collect();
    lines.windows(3).any(|w| w[0] == w[1] && w[1] == w[2])
}

/// A short label for a completion menu: the first line, trimmed, at most `max` characters.
pub fn label(text: &str, max: usize) -> String {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if first.chars().count() <= max {
        first.to_string()
    } else {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// The identifier characters right before the cursor: what a completion menu filters by.
pub fn word_before(line_before: &str) -> &str {
    let start = line_before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(line_before.len(), |(i, _)| i);
    &line_before[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_before_the_cursor_is_its_identifier_characters() {
        assert_eq!(word_before("    total = su"), "su");
        assert_eq!(word_before("    print("), "");
        assert_eq!(word_before("x.näme_1"), "näme_1");
        assert_eq!(word_before(""), "");
    }

    fn stream(mode: Mode, deltas: &[&str]) -> (String, bool) {
        let mut filter = StreamFilter::new(mode);
        let mut stopped = false;
        for delta in deltas {
            if !filter.push(delta) {
                stopped = true;
                break;
            }
        }
        (filter.finish(), stopped)
    }

    fn around<'a>(
        before: &'a str,
        after: &'a str,
        following: &'a str,
        previous: &'a str,
    ) -> Surroundings<'a> {
        Surroundings {
            line_before: before,
            line_after: after,
            following,
            previous_line: previous,
        }
    }

    #[test]
    fn single_line_stops_at_the_first_newline() {
        assert_eq!(
            stream(Mode::SingleLine, &["x + ", "1;\nlet y"]),
            ("x + 1;".into(), true)
        );
        assert_eq!(
            stream(Mode::SingleLine, &["x + 1"]),
            ("x + 1".into(), false)
        );
    }

    #[test]
    fn a_block_stops_where_it_closes_what_it_opened() {
        let mode = Mode::MultiLine { min_indent: 4 };
        let (text, stopped) = stream(
            mode,
            &["    if x {\n", "        y();\n", "    }\n", "    more();\n"],
        );
        assert!(stopped);
        assert_eq!(text, "    if x {\n        y();\n    }");
    }

    #[test]
    fn balanced_brackets_on_one_line_do_not_end_a_block() {
        let mode = Mode::MultiLine { min_indent: 0 };
        let (text, stopped) = stream(mode, &["foo(a)\n", "bar(b)\n", "baz()"]);
        assert!(!stopped);
        assert_eq!(text, "foo(a)\nbar(b)\nbaz()");
    }

    #[test]
    fn closing_a_bracket_opened_before_the_cursor_stops_before_it() {
        let mode = Mode::MultiLine { min_indent: 4 };
        let (text, stopped) = stream(mode, &["    println!(\"hi\");\n", "}\n", "fn next() {"]);
        assert!(stopped);
        assert_eq!(text, "    println!(\"hi\");");
    }

    #[test]
    fn a_dedent_below_the_block_stops_before_that_line() {
        let mode = Mode::MultiLine { min_indent: 4 };
        let (text, stopped) = stream(mode, &["    return x\n", "\n", "def", " other():\n"]);
        assert!(stopped);
        assert_eq!(text, "    return x");
    }

    #[test]
    fn the_suffix_already_in_the_document_is_not_suggested_again() {
        // The rest of the line: replaced rather than duplicated.
        let s = finalize("a, b)", &around("call(", ")", "", "x = 1")).unwrap();
        assert_eq!(
            s,
            Suggestion {
                text: "a, b)".into(),
                replaces: 1
            }
        );
        // Following lines the model repeated are trimmed.
        let s = finalize(
            "    y = 2\n    z = 3\n    return z",
            &around("", "", "    return z\n", "def f():"),
        )
        .unwrap();
        assert_eq!(s.text, "    y = 2\n    z = 3");
    }

    #[test]
    fn empty_repeated_and_looping_suggestions_are_dropped() {
        assert_eq!(finalize("   \n  ", &around("", "", "", "x")), None);
        assert_eq!(
            finalize("let a = 1;", &around("", "", "", "let a = 1;")),
            None,
            "repeats the previous line"
        );
        assert_eq!(
            finalize(")", &around("f(", ")", "", "")),
            None,
            "only rewrites the rest of the line"
        );
        assert_eq!(
            finalize("x += 1\nx += 1\nx += 1", &around("", "", "", "x = 0")),
            None
        );
        assert!(finalize("x += 1", &around("", "", "", "x = 0")).is_some());
    }

    #[test]
    fn labels_are_the_first_line_shortened() {
        assert_eq!(label("\n  fn main() {\n}", 60), "fn main() {");
        assert_eq!(label("abcdefgh", 5), "abcd…");
    }
}

//! A completion at a cursor: the window of text around it, which keys the recent-suggestion
//! cache and tells the cleanup what surrounds the cursor, and the options of a completion. The
//! prompt itself comes from `workspace::context`.
//!
//! The window's start moves in steps of `ANCHOR_LINES` lines, so it holds still while the user
//! types and the cache key stays the same.

use std::hash::{Hash, Hasher};

use engine::SamplingParams;
use ropey::Rope;

use crate::postprocess::Surroundings;

/// The window's first line is a multiple of this, so it changes rarely as the cursor moves.
const ANCHOR_LINES: usize = 64;
/// Characters per token assumed when turning a token budget into a text budget.
const CHARS_PER_TOKEN: usize = 3;

/// Tokens a completion prompt takes when nobody said otherwise.
pub const DEFAULT_PROMPT_BUDGET: usize = 4096;

/// The default prompt budget for a model whose config allows `context_window` positions and a
/// generation of `max_new_tokens`: a model trained on short sequences (the embedded one saw
/// 1,024 tokens) writes noise past them, so the prompt leaves the generation room inside the
/// window, keeping at least a quarter of the window for the prompt.
pub fn default_prompt_budget(context_window: usize, max_new_tokens: usize) -> usize {
    let room = context_window
        .saturating_sub(max_new_tokens)
        .max(context_window / 4);
    DEFAULT_PROMPT_BUDGET.min(room).max(16)
}

/// What the caller wants from one completion.
#[derive(Debug, Clone)]
pub struct CompletionOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// The text around a cursor, cut to the budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionWindow {
    /// From the window's first line to the cursor.
    pub prefix: String,
    /// From the cursor to the end of the suffix window.
    pub suffix: String,
    /// The cursor line, before and after the cursor (without its line break).
    pub line_before: String,
    pub line_after: String,
    /// The last non-blank line before the cursor line.
    pub previous_line: String,
}

impl CompletionWindow {
    /// Cuts the window at byte `cursor` of `text`: about `context_tokens` tokens before it and
    /// `suffix_lines` lines after the cursor line.
    pub fn around(text: &Rope, cursor: usize, context_tokens: usize, suffix_lines: usize) -> Self {
        let cursor_line = text.byte_to_line(cursor);
        let budget = context_tokens * CHARS_PER_TOKEN;
        let mut first_line = text.byte_to_line(cursor.saturating_sub(budget));
        if cursor > budget {
            // Snap forward to an anchor so the start holds still while the cursor moves.
            first_line = first_line.div_ceil(ANCHOR_LINES) * ANCHOR_LINES;
        }
        let first_line = first_line.min(cursor_line);
        let start = text.line_to_byte(first_line);
        let last_line = (cursor_line + 1 + suffix_lines).min(text.len_lines());
        let end = if last_line >= text.len_lines() {
            text.len_bytes()
        } else {
            text.line_to_byte(last_line)
        };
        let line_start = text.line_to_byte(cursor_line);
        let line = text.line(cursor_line).to_string();
        let line = line.trim_end_matches(['\n', '\r']);
        let split = (cursor - line_start).min(line.len());
        let previous_line = (first_line..cursor_line)
            .rev()
            .map(|i| text.line(i).to_string())
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        Self {
            prefix: text.byte_slice(start..cursor).to_string(),
            suffix: text.byte_slice(cursor..end).to_string(),
            line_before: line[..split].to_string(),
            line_after: line[split..].to_string(),
            previous_line: previous_line.trim_end_matches(['\n', '\r']).to_string(),
        }
    }

    /// What the cleanup of a suggestion needs to know.
    pub fn surroundings(&self) -> Surroundings<'_> {
        let following = self.suffix.split_once('\n').map_or("", |(_, rest)| rest);
        Surroundings {
            line_before: &self.line_before,
            line_after: &self.line_after,
            following,
            previous_line: &self.previous_line,
        }
    }

    /// A fingerprint of everything but the cursor line's text before the cursor: equal while
    /// the user only types at the cursor.
    pub fn context_hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.prefix[..self.prefix.len() - self.line_before.len()].hash(&mut hasher);
        self.suffix.hash(&mut hasher);
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prompt_budget_leaves_room_in_the_window() {
        // A long-context model keeps the default.
        assert_eq!(default_prompt_budget(163_840, 64), DEFAULT_PROMPT_BUDGET);
        // The embedded model saw 1,024 positions: prompt and generation share them.
        assert_eq!(default_prompt_budget(1024, 64), 960);
        // A generation longer than the window still leaves the prompt a quarter of it.
        assert_eq!(default_prompt_budget(1024, 5000), 256);
        let mut settings = crate::settings::Settings::default();
        assert_eq!(settings.prompt_budget(1024), 960);
        settings.context_budget = Some(3000);
        assert_eq!(
            settings.prompt_budget(1024),
            3000,
            "an explicit budget is kept"
        );
    }

    fn numbered(lines: usize) -> Rope {
        Rope::from_str(
            &(0..lines)
                .map(|i| format!("line {i}\n"))
                .collect::<String>(),
        )
    }

    #[test]
    fn the_window_holds_the_cursor_line_split_at_the_cursor() {
        let text = Rope::from_str("a\n  let x = f(1);\nb\nc\n");
        let cursor = "a\n  let x = ".len();
        let w = CompletionWindow::around(&text, cursor, 100, 1);
        assert_eq!(w.prefix, "a\n  let x = ");
        assert_eq!(w.suffix, "f(1);\nb\n");
        assert_eq!(
            (w.line_before.as_str(), w.line_after.as_str()),
            ("  let x = ", "f(1);")
        );
        assert_eq!(w.previous_line, "a");
    }

    #[test]
    fn the_window_start_holds_still_while_the_cursor_moves_nearby() {
        let text = numbered(10_000);
        let at = |line: usize| text.line_to_byte(line) + 3;
        let start_of = |w: &CompletionWindow| w.prefix.lines().next().unwrap().to_string();
        let a = CompletionWindow::around(&text, at(5000), 1000, 10);
        let b = CompletionWindow::around(&text, at(5010), 1000, 10);
        assert_eq!(start_of(&a), start_of(&b));
        assert!(
            a.prefix.len() <= 1000 * CHARS_PER_TOKEN,
            "within the budget"
        );
        assert!(
            a.prefix.len() > 1000 * CHARS_PER_TOKEN - ANCHOR_LINES * 12,
            "and not much below it"
        );
        assert_eq!(
            a.suffix.lines().count(),
            11,
            "the rest of the cursor line and 10 more"
        );
    }

    #[test]
    fn typing_at_the_cursor_keeps_the_context_hash() {
        let before = Rope::from_str("fn a() {\n    let x = \n}\n");
        let after = Rope::from_str("fn a() {\n    let x = co\n}\n");
        let w1 = CompletionWindow::around(&before, "fn a() {\n    let x = ".len(), 100, 5);
        let w2 = CompletionWindow::around(&after, "fn a() {\n    let x = co".len(), 100, 5);
        assert_eq!(w1.context_hash(), w2.context_hash());
        let elsewhere = Rope::from_str("fn b() {\n    let x = co\n}\n");
        let w3 = CompletionWindow::around(&elsewhere, "fn b() {\n    let x = co".len(), 100, 5);
        assert_ne!(w2.context_hash(), w3.context_hash());
    }
}

//! Reviewing a change: each hunk of `git diff base...head`, shown to the model inside its
//! enclosing function with numbered lines and the definitions it uses, answered as findings in
//! a strict, checkable form (see `findings`), written out for CI (see `report`).

pub mod diff;
pub mod findings;
pub mod report;

use std::ops::RangeInclusive;

use engine::Prompt;

use crate::explain::fence_language;
use findings::RULES;

/// Lines of code shown around a hunk when no function encloses it.
pub const AROUND_LINES: usize = 6;
/// Most lines of a function shown; a longer one is cut around the hunk.
pub const MAX_SHOWN_LINES: usize = 120;

/// What the model is told: the answer format first, so a long code block cannot bury it.
fn instructions() -> String {
    let rules: Vec<String> = RULES
        .iter()
        .map(|(id, description)| format!("`{id}` ({})", description.to_lowercase()))
        .collect();
    format!(
        "You review a code change. The lines marked `+` were added; report only problems in \
         them. Answer with one JSON object per line and nothing else, for example:\n\
         {{\"line\": 12, \"end_line\": 13, \"severity\": \"warning\", \"rule\": \"possible-bug\", \
         \"message\": \"what is wrong and why\", \"replacement\": \"the corrected lines\"}}\n\
         `line`/`end_line` are the numbers shown at the left; `severity` is error, warning or \
         note; `rule` is one of {}; `replacement` is optional. If nothing is wrong, answer NONE.",
        rules.join(", ")
    )
}

/// The lines of the new file shown for a hunk: its enclosing function (`function`, 1-based
/// inclusive, when there is one), else the hunk with a few lines around it, never more than
/// `MAX_SHOWN_LINES`.
pub fn shown_lines(
    hunk: &RangeInclusive<usize>,
    function: Option<RangeInclusive<usize>>,
    line_count: usize,
) -> RangeInclusive<usize> {
    let (mut first, mut last) = match function {
        Some(f) if f.contains(hunk.start()) && f.contains(hunk.end()) => (*f.start(), *f.end()),
        _ => (
            hunk.start().saturating_sub(AROUND_LINES).max(1),
            (hunk.end() + AROUND_LINES).min(line_count.max(1)),
        ),
    };
    if last + 1 - first > MAX_SHOWN_LINES {
        let hunk_lines = hunk.end() + 1 - hunk.start();
        let margin = MAX_SHOWN_LINES.saturating_sub(hunk_lines) / 2;
        first = first.max(hunk.start().saturating_sub(margin).max(1));
        last = last.min(hunk.end() + margin).max(*hunk.end());
    }
    first..=last
}

/// `shown` brought halfway closer to `hunk` on both sides (equal to `shown` once it is the hunk).
pub fn narrowed(
    shown: &RangeInclusive<usize>,
    hunk: &RangeInclusive<usize>,
) -> RangeInclusive<usize> {
    let before = hunk.start().saturating_sub(*shown.start());
    let after = shown.end().saturating_sub(*hunk.end());
    (shown.start() + before.div_ceil(2))..=(shown.end() - after.div_ceil(2))
}

/// `text`'s lines `shown` numbered like `  12 + code` (`+` on added lines).
pub fn numbered(text: &str, shown: &RangeInclusive<usize>, added: &[usize]) -> String {
    let width = shown.end().to_string().len();
    let mut out = String::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if !shown.contains(&number) {
            continue;
        }
        let mark = if added.binary_search(&number).is_ok() {
            '+'
        } else {
            ' '
        };
        out.push_str(&format!("{number:>width$} {mark} {line}\n"));
    }
    out
}

/// What the prompt for one hunk is made of.
pub struct HunkPrompt<'a> {
    pub path: &'a str,
    /// The numbered code (see `numbered`).
    pub code: &'a str,
    /// Lines the change removed there, shown for what they were.
    pub removed: &'a [String],
    /// Definitions from elsewhere that the code uses (the context builder's blocks).
    pub definitions: &'a [String],
}

/// The chat prompt asking for findings about one hunk.
pub fn review_prompt(hunk: &HunkPrompt) -> Prompt {
    let language = fence_language(hunk.path);
    let mut user = instructions();
    if !hunk.definitions.is_empty() {
        user.push_str("\n\nDefinitions the code uses:\n");
        for definition in hunk.definitions {
            user.push_str(&format!("```{language}\n{}\n```\n", definition.trim_end()));
        }
    }
    if !hunk.removed.is_empty() {
        user.push_str(&format!(
            "\nThe change removed these lines:\n```{language}\n{}\n```\n",
            hunk.removed.join("\n")
        ));
    }
    user.push_str(&format!(
        "\n{}:\n```{language}\n{}```",
        hunk.path, hunk.code
    ));
    Prompt::chat(None, &user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::prompt::PromptPart;

    #[test]
    fn the_enclosing_function_is_shown_or_a_window_around_the_hunk() {
        assert_eq!(shown_lines(&(10..=11), Some(5..=20), 100), 5..=20);
        assert_eq!(shown_lines(&(10..=11), None, 100), 4..=17);
        assert_eq!(shown_lines(&(2..=2), None, 5), 1..=5);
        // A function that does not hold the whole hunk is ignored.
        assert_eq!(shown_lines(&(10..=30), Some(5..=20), 100), 4..=36);
        // A huge function is cut around the hunk.
        let cut = shown_lines(&(500..=501), Some(1..=1000), 1000);
        assert!(cut.contains(&500) && cut.contains(&501));
        assert!(cut.end() + 1 - cut.start() <= MAX_SHOWN_LINES);
    }

    #[test]
    fn narrowing_closes_in_on_the_hunk() {
        assert_eq!(narrowed(&(1..=40), &(10..=12)), 6..=26);
        assert_eq!(narrowed(&(9..=13), &(10..=12)), 10..=12);
        assert_eq!(narrowed(&(10..=12), &(10..=12)), 10..=12);
    }

    #[test]
    fn added_lines_are_marked_and_numbered() {
        let text = "a\nb\nc\nd\n";
        assert_eq!(numbered(text, &(2..=4), &[3]), "2   b\n3 + c\n4   d\n");
    }

    #[test]
    fn the_prompt_states_the_format_before_the_code() {
        let prompt = review_prompt(&HunkPrompt {
            path: "src/app.py",
            code: " 4 + for x in xs[1:]:\n",
            removed: &["for x in xs:".to_string()],
            definitions: &["def total(xs): ...".to_string()],
        });
        let [PromptPart::Text { text, .. }] = prompt.parts() else {
            panic!("one chat part")
        };
        let format_at = text.find("one JSON object per line").unwrap();
        let code_at = text.find("src/app.py:\n```python\n 4 + for x").unwrap();
        assert!(format_at < code_at);
        assert!(text.contains("`possible-bug`"));
        assert!(text.contains("The change removed these lines:\n```python\nfor x in xs:\n```"));
        assert!(text.contains("Definitions the code uses:\n```python\ndef total(xs): ...\n```"));
    }
}

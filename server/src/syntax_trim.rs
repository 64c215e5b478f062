//! Cutting a multi-line suggestion where its syntax goes wrong. A model that is unsure often
//! writes a good first line or two and then a line that breaks the code (an unclosed call, a
//! stray `def` inside a body). Each prefix of whole lines is put into the document and parsed
//! with tree-sitter; the longest prefix with the fewest syntax errors wins, so what is shown
//! leaves the code as parseable as any cut of the suggestion can.

use ropey::Rope;
use tree_sitter::{Node, Parser};

use crate::syntax::language_for;

/// Lines parsed before and after the cursor (enough for the enclosing definitions).
const LINES_BEFORE: usize = 200;
const LINES_AFTER: usize = 50;
/// Suggestions longer than this are left alone (each line costs a parse).
const MAX_LINES: usize = 40;

/// `suggestion` (to be inserted at byte `cursor` of `text`) cut to the longest prefix of whole
/// lines with the fewest syntax errors. Unchanged for a single line, a language without a
/// grammar, or a suggestion too long to check.
pub fn trim_to_syntax(text: &Rope, cursor: usize, language_id: &str, suggestion: &str) -> String {
    let lines: Vec<&str> = suggestion.split_inclusive('\n').collect();
    if lines.len() < 2 || lines.len() > MAX_LINES {
        return suggestion.to_string();
    }
    let Some(language) = language_for(language_id) else {
        return suggestion.to_string();
    };
    let mut parser = Parser::new();
    if parser.set_language(&language).is_err() {
        return suggestion.to_string();
    }
    let line = text.byte_to_line(cursor.min(text.len_bytes()));
    let start = text.line_to_byte(line.saturating_sub(LINES_BEFORE));
    let end_line = (line + LINES_AFTER + 1).min(text.len_lines());
    let end = if end_line >= text.len_lines() {
        text.len_bytes()
    } else {
        text.line_to_byte(end_line)
    };
    let before = text.byte_slice(start..cursor).to_string();
    let after = text.byte_slice(cursor..end).to_string();
    // tree-sitter-python accepts a block with no statement (`def f():` and nothing under it),
    // which Python does not: such a block counts as an error.
    let python = language_id == "python";
    let mut best = (usize::MAX, 0);
    let mut prefix_len = 0;
    for (count, line) in lines.iter().enumerate() {
        prefix_len += line.len();
        let candidate = suggestion[..prefix_len].trim_end_matches(['\n', '\r']);
        let Some(tree) = parser.parse(format!("{before}{candidate}{after}"), None) else {
            return suggestion.to_string();
        };
        let errors = error_nodes(tree.root_node(), python);
        // Fewer errors win; as few with more lines win too.
        if errors <= best.0 {
            best = (errors, count + 1);
        }
    }
    let kept: usize = lines[..best.1].iter().map(|l| l.len()).sum();
    suggestion[..kept]
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

/// ERROR and MISSING nodes under `node` (an ERROR subtree counts once), and empty blocks
/// when `empty_blocks_are_errors`.
fn error_nodes(node: Node, empty_blocks_are_errors: bool) -> usize {
    if node.is_error() || node.is_missing() {
        return 1;
    }
    if empty_blocks_are_errors && node.kind() == "block" && node.named_child_count() == 0 {
        return 1;
    }
    if !node.has_error() && !empty_blocks_are_errors {
        return 0;
    }
    let mut cursor = node.walk();
    node.children(&mut cursor)
        .map(|child| error_nodes(child, empty_blocks_are_errors))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_cleanly_parsing_prefix_is_kept() {
        let text = Rope::from_str("def f(xs):\n    \n\nprint(f([1]))\n");
        let cursor = "def f(xs):\n    ".len();
        // The third line opens a call it never closes: cut before it.
        let suggestion = "total = sum(xs)\n    return total\n    print(total,";
        assert_eq!(
            trim_to_syntax(&text, cursor, "python", suggestion),
            "total = sum(xs)\n    return total"
        );
        // A definition left without a body is cut too.
        let dangling = "total = sum(xs)\n    return total\n\n    def g():";
        assert_eq!(
            trim_to_syntax(&text, cursor, "python", dangling),
            "total = sum(xs)\n    return total"
        );
        // All of it parses: all of it stays.
        let fine = "total = sum(xs)\n    return total";
        assert_eq!(trim_to_syntax(&text, cursor, "python", fine), fine);
    }

    #[test]
    fn single_lines_and_unknown_languages_are_left_alone() {
        let text = Rope::from_str("x = (\n");
        assert_eq!(trim_to_syntax(&text, 4, "python", "1, 2"), "1, 2");
        assert_eq!(trim_to_syntax(&text, 4, "cobol", "a\nb("), "a\nb(");
    }
}

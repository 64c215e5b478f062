//! What the syntax around the cursor says: whether to suggest one line or a block, and which
//! function encloses a position. Tree-sitter parses a window of lines around the cursor (cheap
//! on any file size); a plain-text reading covers languages without a grammar and code too broken
//! to parse.

use ropey::Rope;
use tree_sitter::{Language, Node, Parser, Tree};

/// How much a completion may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The rest of the current line.
    SingleLine,
    /// Several lines; `min_indent` columns is the least indentation a line of the block may have.
    MultiLine { min_indent: usize },
}

/// Lines parsed before and after the cursor.
const WINDOW_BEFORE: usize = 400;
const WINDOW_AFTER: usize = 100;

/// The grammar for an LSP language id, from the language table.
pub fn language_for(language_id: &str) -> Option<Language> {
    crate::workspace::languages::for_lsp_id(language_id).map(|l| l.language.clone())
}

/// A parsed window of the document: lines `first_line..` starting at byte `start`.
struct Window {
    tree: Tree,
    text: String,
    first_line: usize,
    start: usize,
}

fn parse_window(text: &Rope, around_line: usize, language_id: &str) -> Option<Window> {
    let language = language_for(language_id)?;
    let first_line = around_line.saturating_sub(WINDOW_BEFORE);
    let end_line = (around_line + WINDOW_AFTER + 1).min(text.len_lines());
    let start = text.line_to_byte(first_line);
    let end = if end_line >= text.len_lines() {
        text.len_bytes()
    } else {
        text.line_to_byte(end_line)
    };
    let window = text.byte_slice(start..end).to_string();
    let mut parser = Parser::new();
    parser.set_language(&language).ok()?;
    let tree = parser.parse(&window, None)?;
    Some(Window {
        tree,
        text: window,
        first_line,
        start,
    })
}

/// Decides how much to suggest at byte `cursor`.
pub fn completion_mode(
    text: &Rope,
    cursor: usize,
    language_id: &str,
    single_line_only: bool,
) -> Mode {
    let line_index = text.byte_to_line(cursor);
    let line_start = text.line_to_byte(line_index);
    let line = text.line(line_index).to_string();
    let (before, after) = line.split_at((cursor - line_start).min(line.len()));
    if single_line_only || !after.trim().is_empty() {
        return Mode::SingleLine;
    }
    let blank_line = before.trim().is_empty();
    // The line that may open a block: this one when the cursor ends it, else the last non-blank.
    let opener = if blank_line {
        (0..line_index)
            .rev()
            .find(|&i| !text.line(i).to_string().trim().is_empty())
    } else {
        Some(line_index)
    };
    let Some(opener) = opener else {
        return Mode::MultiLine { min_indent: 0 };
    };
    let opener_text = text.line(opener).to_string();
    let opener_indent = indent_width(&opener_text);
    if line_opens_block(&opener_text) || opens_block_by_syntax(text, opener, language_id) {
        let min_indent = if blank_line {
            indent_width(before).max(opener_indent + 1)
        } else {
            opener_indent + 1
        };
        return Mode::MultiLine { min_indent };
    }
    if blank_line {
        Mode::MultiLine {
            min_indent: indent_width(before).min(opener_indent),
        }
    } else {
        Mode::SingleLine
    }
}

/// Whether a line, read as plain text, ends by opening a block or a bracket.
pub fn line_opens_block(line: &str) -> bool {
    let code = strip_line_comment(line).trim_end();
    code.ends_with(['{', '(', '[', ':'])
        || code.ends_with("=>")
        || code.ends_with("->")
        || code.ends_with(" do")
        || code.ends_with(" then")
}

fn strip_line_comment(line: &str) -> &str {
    // Good enough for a hint: a `//` or ` #` outside quotes ends the code.
    let mut in_string: Option<char> = None;
    let bytes: Vec<(usize, char)> = line.char_indices().collect();
    for (i, &(at, c)) in bytes.iter().enumerate() {
        match in_string {
            Some(q) if c == q => in_string = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => in_string = Some(c),
            None if c == '/' && bytes.get(i + 1).is_some_and(|&(_, n)| n == '/') => {
                return &line[..at];
            }
            None if c == '#' && (at == 0 || line[..at].ends_with(' ')) => return &line[..at],
            None => {}
        }
    }
    line
}

/// Whether a syntax node other than the file itself starts on `line` and goes on past it,
/// containing the line's last character: the line opened it.
fn opens_block_by_syntax(text: &Rope, line: usize, language_id: &str) -> bool {
    let Some(window) = parse_window(text, line, language_id) else {
        return false;
    };
    let local_line = line - window.first_line;
    let Some(line_text) = window.text.split_inclusive('\n').nth(local_line) else {
        return false;
    };
    let trimmed = line_text.trim_end();
    if trimmed.is_empty() {
        return false;
    }
    let line_start: usize = window
        .text
        .split_inclusive('\n')
        .take(local_line)
        .map(str::len)
        .sum();
    let last = line_start + trimmed.len() - 1;
    let root = window.tree.root_node();
    let mut node = root.descendant_for_byte_range(last, last + 1);
    while let Some(n) = node {
        if n.id() == root.id() {
            break;
        }
        if !n.is_error()
            && n.start_position().row == local_line
            && n.end_position().row > local_line
        {
            return true;
        }
        node = n.parent();
    }
    false
}

/// Byte range of the smallest function, method or class-like item containing `offset`.
pub fn enclosing_function(text: &Rope, offset: usize, language_id: &str) -> Option<(usize, usize)> {
    let line = text.byte_to_line(offset.min(text.len_bytes()));
    let window = parse_window(text, line, language_id)?;
    let local = offset.checked_sub(window.start)?.min(window.text.len());
    let root = window.tree.root_node();
    let mut node: Option<Node> = root.descendant_for_byte_range(local, local);
    while let Some(n) = node {
        if is_function_like(n.kind()) {
            return Some((window.start + n.start_byte(), window.start + n.end_byte()));
        }
        node = n.parent();
    }
    None
}

pub(crate) fn is_function_like(kind: &str) -> bool {
    kind.contains("function") && !kind.contains("call") && !kind.contains("type")
        || kind.contains("method") && !kind.contains("call") && !kind.contains("invocation")
        || matches!(
            kind,
            "arrow_function" | "impl_item" | "class_definition" | "class_declaration"
        )
}

/// Columns of leading whitespace (a tab counts 4).
pub fn indent_width(line: &str) -> usize {
    line.chars()
        .take_while(|c| c.is_whitespace() && *c != '\n' && *c != '\r')
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(text: &str, language: &str) -> Mode {
        let cursor = text.find('|').unwrap();
        let rope = Rope::from_str(&text.replace('|', ""));
        completion_mode(&rope, cursor, language, false)
    }

    #[test]
    fn mid_line_is_single_line() {
        assert_eq!(mode("let x = foo(|);\n", "rust"), Mode::SingleLine);
        assert_eq!(mode("let x = |\n", "rust"), Mode::SingleLine);
    }

    #[test]
    fn after_a_line_that_opens_a_block_is_multi_line() {
        assert_eq!(
            mode("fn main() {|\n}\n", "rust"),
            Mode::MultiLine { min_indent: 1 }
        );
        assert_eq!(
            mode("fn main() {\n    |\n}\n", "rust"),
            Mode::MultiLine { min_indent: 4 }
        );
        assert_eq!(
            mode("def f(x):\n    |", "python"),
            Mode::MultiLine { min_indent: 4 }
        );
        assert_eq!(
            mode("if x {  // start\n|", "rust"),
            Mode::MultiLine { min_indent: 1 }
        );
    }

    #[test]
    fn the_syntax_tree_finds_blocks_the_text_does_not_show() {
        // The call's arguments open on line 0 and close on line 2: the line opened them.
        let text = Rope::from_str("let x = compute(a,\n    b,\n);\n");
        assert!(!line_opens_block("let x = compute(a,"));
        assert!(opens_block_by_syntax(&text, 0, "rust"));
        assert!(!opens_block_by_syntax(
            &Rope::from_str("let y = 1;\n"),
            0,
            "rust"
        ));
    }

    #[test]
    fn a_string_brace_does_not_open_a_block() {
        assert!(!line_opens_block(r#"let s = "{"; // x {"#));
        assert!(line_opens_block("for i in range(3):  # loop"));
    }

    #[test]
    fn the_single_line_setting_wins() {
        let rope = Rope::from_str("fn main() {\n");
        assert_eq!(completion_mode(&rope, 11, "rust", true), Mode::SingleLine);
    }

    #[test]
    fn enclosing_functions_are_found_in_several_languages() {
        let rust = "struct S;\nfn add(a: i32) -> i32 {\n    a + 1\n}\n";
        let (s, e) =
            enclosing_function(&Rope::from_str(rust), rust.find("a + 1").unwrap(), "rust").unwrap();
        assert_eq!(&rust[s..e], "fn add(a: i32) -> i32 {\n    a + 1\n}");
        let python = "import os\n\ndef f(x):\n    return x\n";
        let (s, e) = enclosing_function(
            &Rope::from_str(python),
            python.find("return").unwrap(),
            "python",
        )
        .unwrap();
        assert_eq!(&python[s..e], "def f(x):\n    return x");
        assert_eq!(
            enclosing_function(&Rope::from_str(python), 2, "python"),
            None
        );
        assert_eq!(
            enclosing_function(&Rope::from_str("x"), 0, "plaintext"),
            None
        );
    }
}

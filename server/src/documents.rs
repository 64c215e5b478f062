//! Open documents as ropes, the one door through which edits come in.
//!
//! Positions arrive in the encoding negotiated at initialize (UTF-8 bytes or UTF-16 code units)
//! and are converted exactly, surrogate pairs included. Edits are applied strictly in version
//! order: the protocol layer may run notification handlers concurrently, so a change that arrives
//! ahead of its predecessor waits until the gap is filled.

use std::collections::BTreeMap;

use dashmap::DashMap;
use ropey::Rope;
use tree_sitter::{InputEdit, Point, Tree};

use crate::workspace::languages::{self, Compiled};

/// How the client counts characters in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionEncoding {
    Utf8,
    Utf16,
}

/// A (line, character) position as the protocol sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinePosition {
    pub line: u32,
    pub character: u32,
}

/// One edit: replace `range` (or the whole text when `None`) with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub range: Option<(LinePosition, LinePosition)>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    NotOpen,
    /// The position lies outside the document; clamping would edit the wrong text.
    OutOfRange {
        line: u32,
        character: u32,
        lines: usize,
    },
    /// A range whose end comes before its start.
    Inverted,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotOpen => write!(f, "the document is not open"),
            Self::OutOfRange {
                line,
                character,
                lines,
            } => {
                write!(
                    f,
                    "position {line}:{character} is outside the document ({lines} lines)"
                )
            }
            Self::Inverted => write!(f, "the range ends before it starts"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Document {
    pub text: Rope,
    pub version: i32,
    pub language_id: String,
    /// The language table's row for it, when it has one.
    pub language: Option<&'static Compiled>,
    /// Its syntax tree, `None` for languages without a grammar and documents larger than
    /// `MAX_PARSED_BYTES`. Every change edits it (`Tree::edit`, cheap); the incremental re-parse
    /// waits until someone asks for the tree (`DocumentStore::syntax_tree`), so keystrokes never
    /// pay for it.
    pub tree: Option<Tree>,
    /// Whether `tree` has been re-parsed since the last change.
    pub tree_is_current: bool,
}

/// Larger documents are not parsed (a 20 MB log file is not code worth a syntax tree).
pub const MAX_PARSED_BYTES: usize = 4 << 20;

fn parse(language: Option<&'static Compiled>, text: &Rope, old: Option<&Tree>) -> Option<Tree> {
    if text.len_bytes() > MAX_PARSED_BYTES {
        return None;
    }
    crate::workspace::symbols::parse_rope(language?, text, old)
}

impl Document {
    /// The byte offset of a protocol position.
    pub fn offset(
        &self,
        position: LinePosition,
        encoding: PositionEncoding,
    ) -> Result<usize, DocumentError> {
        byte_offset(&self.text, position, encoding)
    }

    /// The protocol position of a byte offset (which must lie on a character boundary).
    pub fn position(&self, offset: usize, encoding: PositionEncoding) -> LinePosition {
        position_of(&self.text, offset, encoding)
    }
}

/// Byte offset of `position` in `text`. The character may point at the line's end (before its
/// newline) but not past it; line `len_lines()` is not a line.
pub fn byte_offset(
    text: &Rope,
    position: LinePosition,
    encoding: PositionEncoding,
) -> Result<usize, DocumentError> {
    let out_of_range = || DocumentError::OutOfRange {
        line: position.line,
        character: position.character,
        lines: text.len_lines(),
    };
    let line_index = position.line as usize;
    if line_index >= text.len_lines() {
        return Err(out_of_range());
    }
    let line = text.line(line_index);
    let line_start = text.line_to_byte(line_index);
    // Characters of the line without its line break.
    let content_chars = line.len_chars() - trailing_break_chars(&line);
    let character = position.character as usize;
    let chars_in = match encoding {
        PositionEncoding::Utf8 => {
            let content_bytes = line.char_to_byte(content_chars);
            if character > content_bytes {
                return Err(out_of_range());
            }
            // A byte inside a character rounds down to its start.
            line.byte_to_char(character)
        }
        PositionEncoding::Utf16 => {
            let content_units = line.char_to_utf16_cu(content_chars);
            if character > content_units {
                return Err(out_of_range());
            }
            // A unit inside a surrogate pair rounds down to the pair's start.
            line.utf16_cu_to_char(character)
        }
    };
    Ok(line_start + line.char_to_byte(chars_in))
}

/// Protocol position of byte `offset`.
pub fn position_of(text: &Rope, offset: usize, encoding: PositionEncoding) -> LinePosition {
    let offset = offset.min(text.len_bytes());
    let line_index = text.byte_to_line(offset);
    let line = text.line(line_index);
    let in_line = offset - text.line_to_byte(line_index);
    let character = match encoding {
        PositionEncoding::Utf8 => in_line,
        PositionEncoding::Utf16 => line.char_to_utf16_cu(line.byte_to_char(in_line)),
    };
    LinePosition {
        line: line_index as u32,
        character: character as u32,
    }
}

fn trailing_break_chars(line: &ropey::RopeSlice) -> usize {
    let n = line.len_chars();
    if n >= 2 && line.char(n - 2) == '\r' && line.char(n - 1) == '\n' {
        2
    } else if n >= 1 && matches!(line.char(n - 1), '\n' | '\r') {
        1
    } else {
        0
    }
}

/// Out-of-order changes held back at most before they are applied anyway.
const MAX_WAITING: usize = 8;

/// Every open document, keyed by URI string.
#[derive(Default)]
pub struct DocumentStore {
    documents: DashMap<String, Slot>,
}

struct Slot {
    document: Document,
    /// Changes that arrived before their predecessors, by version.
    waiting: BTreeMap<i32, Vec<Change>>,
}

impl DocumentStore {
    pub fn open(&self, uri: &str, text: &str, version: i32, language_id: &str) {
        let language = languages::for_lsp_id(language_id)
            .or_else(|| languages::for_path(std::path::Path::new(uri)));
        // Parsed on first use: opening a large file does not hold up the requests behind it.
        let document = Document {
            text: Rope::from_str(text),
            version,
            language_id: language_id.to_string(),
            language,
            tree: None,
            tree_is_current: false,
        };
        self.documents.insert(
            uri.to_string(),
            Slot {
                document,
                waiting: BTreeMap::new(),
            },
        );
    }

    pub fn close(&self, uri: &str) {
        self.documents.remove(uri);
    }

    /// Applies the changes of `version`, and any waiting ones that follow it. Changes for a
    /// version already applied are ignored. A change with a position outside the document is an
    /// error; the document keeps its last good state.
    pub fn change(
        &self,
        uri: &str,
        version: i32,
        changes: Vec<Change>,
        encoding: PositionEncoding,
    ) -> Result<(), DocumentError> {
        let mut slot = self.documents.get_mut(uri).ok_or(DocumentError::NotOpen)?;
        if version <= slot.document.version {
            return Ok(());
        }
        slot.waiting.insert(version, changes);
        // Apply in order while the next version is present. Versions increase by one per change
        // notification; should a client skip numbers, a backlog of MAX_WAITING flushes in order.
        while let Some((&next, _)) = slot.waiting.first_key_value() {
            let in_order = next == slot.document.version + 1 || slot.waiting.len() >= MAX_WAITING;
            if !in_order {
                break;
            }
            let changes = slot.waiting.remove(&next).expect("key just seen");
            // A version whose edits do not apply is skipped whole, so later ones can proceed.
            slot.document.version = next;
            let mut text = slot.document.text.clone();
            let mut tree = slot.document.tree.take();
            for change in changes {
                match apply(&mut text, &change, encoding)? {
                    Some(edit) => {
                        if let Some(tree) = tree.as_mut() {
                            tree.edit(&edit);
                        }
                    }
                    None => tree = None,
                }
            }
            // A whole-text replacement loses the tree; the next request parses from scratch.
            slot.document.tree = tree;
            slot.document.tree_is_current = false;
            slot.document.text = text;
        }
        Ok(())
    }

    /// The syntax tree of version `version` of the document, re-parsing incrementally from the
    /// edited old tree when changes arrived since the last call. `None` when the document has
    /// moved on to another version (or has no tree).
    pub fn syntax_tree(&self, uri: &str, version: i32) -> Option<Tree> {
        let mut slot = self.documents.get_mut(uri)?;
        let document = &mut slot.document;
        if document.version != version {
            return None;
        }
        if !document.tree_is_current {
            document.tree = parse(document.language, &document.text, document.tree.as_ref());
            document.tree_is_current = true;
        }
        document.tree.clone()
    }

    /// A snapshot of the document (ropes clone in O(1)).
    pub fn get(&self, uri: &str) -> Option<Document> {
        self.documents.get(uri).map(|slot| slot.document.clone())
    }

    pub fn len(&self) -> usize {
        self.documents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }
}

/// Applies one change; returns the edit for the syntax tree, `None` when the whole text was
/// replaced.
fn apply(
    text: &mut Rope,
    change: &Change,
    encoding: PositionEncoding,
) -> Result<Option<InputEdit>, DocumentError> {
    match change.range {
        None => {
            *text = Rope::from_str(&change.text);
            Ok(None)
        }
        Some((start, end)) => {
            let start = byte_offset(text, start, encoding)?;
            let end = byte_offset(text, end, encoding)?;
            if end < start {
                return Err(DocumentError::Inverted);
            }
            let start_position = point(text, start);
            let old_end_position = point(text, end);
            let (start_char, end_char) = (text.byte_to_char(start), text.byte_to_char(end));
            text.remove(start_char..end_char);
            text.insert(start_char, &change.text);
            let new_end = start + change.text.len();
            Ok(Some(InputEdit {
                start_byte: start,
                old_end_byte: end,
                new_end_byte: new_end,
                start_position,
                old_end_position,
                new_end_position: point(text, new_end),
            }))
        }
    }
}

/// Tree-sitter's position of a byte: row and byte column.
fn point(text: &Rope, offset: usize) -> Point {
    let row = text.byte_to_line(offset);
    Point {
        row,
        column: offset - text.line_to_byte(row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> LinePosition {
        LinePosition { line, character }
    }

    fn edit(start: (u32, u32), end: (u32, u32), text: &str) -> Change {
        Change {
            range: Some((pos(start.0, start.1), pos(end.0, end.1))),
            text: text.to_string(),
        }
    }

    #[test]
    fn utf16_positions_count_surrogate_pairs_as_two_units() {
        // "a😀b": 😀 is 4 UTF-8 bytes and 2 UTF-16 units.
        let text = Rope::from_str("a😀b\nx");
        assert_eq!(
            byte_offset(&text, pos(0, 3), PositionEncoding::Utf16),
            Ok(5),
            "after the emoji"
        );
        assert_eq!(byte_offset(&text, pos(0, 5), PositionEncoding::Utf8), Ok(5));
        assert_eq!(position_of(&text, 5, PositionEncoding::Utf16), pos(0, 3));
        assert_eq!(position_of(&text, 5, PositionEncoding::Utf8), pos(0, 5));
        assert_eq!(
            byte_offset(&text, pos(0, 4), PositionEncoding::Utf16),
            Ok(6),
            "end of line 0"
        );
        assert!(byte_offset(&text, pos(0, 5), PositionEncoding::Utf16).is_err());
        assert_eq!(
            byte_offset(&text, pos(1, 1), PositionEncoding::Utf16),
            Ok(8)
        );
    }

    #[test]
    fn positions_past_the_end_are_errors_not_clamps() {
        let text = Rope::from_str("ab\r\ncd");
        assert_eq!(
            byte_offset(&text, pos(0, 2), PositionEncoding::Utf16),
            Ok(2),
            "before the CRLF"
        );
        assert!(
            byte_offset(&text, pos(0, 3), PositionEncoding::Utf16).is_err(),
            "inside the CRLF"
        );
        assert!(byte_offset(&text, pos(2, 0), PositionEncoding::Utf16).is_err());
        let empty = Rope::from_str("");
        assert_eq!(
            byte_offset(&empty, pos(0, 0), PositionEncoding::Utf8),
            Ok(0)
        );
    }

    #[test]
    fn incremental_edits_with_astral_characters() {
        let store = DocumentStore::default();
        store.open("file:///a", "fn 𝔣() {}\n", 1, "rust");
        // Replace 𝔣 (2 UTF-16 units at 3..5) with "main".
        store
            .change(
                "file:///a",
                2,
                vec![edit((0, 3), (0, 5), "main")],
                PositionEncoding::Utf16,
            )
            .unwrap();
        assert_eq!(
            store.get("file:///a").unwrap().text.to_string(),
            "fn main() {}\n"
        );
        store
            .change(
                "file:///a",
                3,
                vec![edit((1, 0), (1, 0), "// ünï\n")],
                PositionEncoding::Utf16,
            )
            .unwrap();
        store
            .change(
                "file:///a",
                4,
                vec![edit((1, 3), (1, 5), "u")],
                PositionEncoding::Utf16,
            )
            .unwrap();
        assert_eq!(
            store.get("file:///a").unwrap().text.to_string(),
            "fn main() {}\n// uï\n"
        );
    }

    #[test]
    fn changes_apply_in_version_order_whatever_their_arrival() {
        let store = DocumentStore::default();
        store.open("file:///a", "", 0, "text");
        let append = |at: u32, s: &str| vec![edit((0, at), (0, at), s)];
        store
            .change("file:///a", 3, append(2, "c"), PositionEncoding::Utf8)
            .unwrap();
        store
            .change("file:///a", 2, append(1, "b"), PositionEncoding::Utf8)
            .unwrap();
        assert_eq!(
            store.get("file:///a").unwrap().text.to_string(),
            "",
            "version 1 is still missing"
        );
        store
            .change("file:///a", 1, append(0, "a"), PositionEncoding::Utf8)
            .unwrap();
        let doc = store.get("file:///a").unwrap();
        assert_eq!((doc.text.to_string().as_str(), doc.version), ("abc", 3));
        store
            .change("file:///a", 2, append(0, "x"), PositionEncoding::Utf8)
            .unwrap();
        assert_eq!(
            store.get("file:///a").unwrap().text.to_string(),
            "abc",
            "stale versions are ignored"
        );
    }

    #[test]
    fn a_bad_edit_leaves_the_document_as_it_was() {
        let store = DocumentStore::default();
        store.open("file:///a", "abc", 1, "text");
        let bad = vec![edit((0, 1), (0, 2), "X"), edit((5, 0), (5, 1), "Y")];
        assert!(
            store
                .change("file:///a", 2, bad, PositionEncoding::Utf8)
                .is_err()
        );
        assert_eq!(store.get("file:///a").unwrap().text.to_string(), "abc");
        assert_eq!(
            store.change("file:///nope", 1, vec![], PositionEncoding::Utf8),
            Err(DocumentError::NotOpen)
        );
    }

    #[test]
    fn incremental_reparses_equal_a_fresh_parse() {
        let store = DocumentStore::default();
        store.open("file:///a.rs", "fn a() {\n    let x = 1;\n}\n", 1, "rust");
        let edits = [
            edit((1, 12), (1, 13), "f(2, \"😀\")"),
            edit((2, 1), (2, 1), "\nfn b(y: u8) -> u8 {\n    y\n}"),
            edit((0, 3), (0, 4), "first"),
        ];
        for (i, change) in edits.into_iter().enumerate() {
            store
                .change(
                    "file:///a.rs",
                    i as i32 + 2,
                    vec![change],
                    PositionEncoding::Utf16,
                )
                .unwrap();
            let document = store.get("file:///a.rs").unwrap();
            assert!(!document.tree_is_current, "changes only edit the tree");
            let fresh = crate::workspace::symbols::parse_rope(
                document.language.unwrap(),
                &document.text,
                None,
            )
            .unwrap();
            let incremental = &store.syntax_tree("file:///a.rs", document.version).unwrap();
            assert!(
                store
                    .syntax_tree("file:///a.rs", document.version - 1)
                    .is_none()
            );
            assert_eq!(
                incremental.root_node().to_sexp(),
                fresh.root_node().to_sexp()
            );
            assert!(!incremental.root_node().has_error(), "{}", document.text);
        }
        let text = store.get("file:///a.rs").unwrap().text.to_string();
        assert_eq!(
            text,
            "fn first() {\n    let x = f(2, \"😀\");\n}\nfn b(y: u8) -> u8 {\n    y\n}\n"
        );
    }
}

//! Cursor positions in a text: (0-based line, 0-based UTF-8 byte column) to a byte offset,
//! with errors that say what is wrong and how positions count.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PositionError {
    LinePastEnd {
        line: usize,
        lines: usize,
    },
    ColumnPastEnd {
        line: usize,
        column: usize,
        length: usize,
    },
    InsideCharacter {
        line: usize,
        column: usize,
    },
}

impl fmt::Display for PositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinePastEnd { line, lines } => write!(
                f,
                "line {line} is past the end: the text has {lines} line{} (lines count from 0)",
                if *lines == 1 { "" } else { "s" }
            ),
            Self::ColumnPastEnd {
                line,
                column,
                length,
            } => write!(
                f,
                "column {column} is past the end of line {line}, which is {length} bytes long \
                 (columns are 0-based UTF-8 byte offsets)"
            ),
            Self::InsideCharacter { line, column } => write!(
                f,
                "column {column} of line {line} falls inside a multi-byte character \
                 (columns are UTF-8 byte offsets)"
            ),
        }
    }
}

impl std::error::Error for PositionError {}

/// Number of lines as editors count them: a text ending in a newline has an empty last line.
pub fn line_count(text: &str) -> usize {
    text.split('\n').count()
}

/// The byte offset of (`line`, `column`), where `column` is a UTF-8 byte offset in the line
/// (the line's `\r`, if any, counts as part of it).
pub fn byte_offset(text: &str, line: usize, column: usize) -> Result<usize, PositionError> {
    let mut start = 0;
    for (index, content) in text.split('\n').enumerate() {
        if index == line {
            if column > content.len() {
                return Err(PositionError::ColumnPastEnd {
                    line,
                    column,
                    length: content.len(),
                });
            }
            if !content.is_char_boundary(column) {
                return Err(PositionError::InsideCharacter { line, column });
            }
            return Ok(start + column);
        }
        start += content.len() + 1;
    }
    Err(PositionError::LinePastEnd {
        line,
        lines: line_count(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_lines_from_zero_and_columns_in_bytes() {
        let text = "fn a() {\n    é = 1;\n}\n";
        assert_eq!(byte_offset(text, 0, 0), Ok(0));
        assert_eq!(byte_offset(text, 1, 4), Ok(13));
        assert_eq!(byte_offset(text, 1, 6), Ok(15), "after the two bytes of é");
        assert_eq!(byte_offset(text, 2, 1), Ok(text.len() - 1));
        assert_eq!(
            byte_offset(text, 3, 0),
            Ok(text.len()),
            "the empty line after the last newline"
        );
    }

    #[test]
    fn positions_outside_the_text_are_explained() {
        let text = "ab\ncé\n";
        assert_eq!(
            byte_offset(text, 3, 0),
            Err(PositionError::LinePastEnd { line: 3, lines: 3 })
        );
        assert_eq!(
            byte_offset(text, 0, 3),
            Err(PositionError::ColumnPastEnd {
                line: 0,
                column: 3,
                length: 2
            })
        );
        assert_eq!(
            byte_offset(text, 1, 2),
            Err(PositionError::InsideCharacter { line: 1, column: 2 })
        );
        assert!(
            PositionError::LinePastEnd { line: 3, lines: 3 }
                .to_string()
                .contains("lines count from 0")
        );
    }

    #[test]
    fn carriage_returns_belong_to_their_line() {
        assert_eq!(byte_offset("a\r\nb", 0, 2), Ok(2));
        assert_eq!(byte_offset("a\r\nb", 1, 1), Ok(4));
    }
}

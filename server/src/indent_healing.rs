//! A cursor after nothing but indentation: the editor typed the indentation, but a model reads a
//! prompt that ends in bare spaces as a line cut mid-token (code never tokenizes its indentation
//! apart from what follows it), and often writes more indentation or nothing useful. So the
//! context builder ends the prompt at the start of the line (`Cursor::heal_indentation`), the
//! model writes the line with its own indentation, and this takes the indentation the document
//! already has off the suggestion's first line.

/// Heals one suggestion's indentation; a no-op unless the cursor line is blank before the cursor.
pub struct IndentHealing {
    /// The indentation before the cursor (empty when there is nothing to heal).
    typed: String,
    /// Text held back until the first line's indentation is complete; `None` once released.
    pending: Option<String>,
}

impl IndentHealing {
    /// For a prompt whose prefix left out `cut` (`BuiltContext::cut_indentation`; empty: no-op).
    pub fn new(cut: &str) -> Self {
        Self {
            typed: cut.to_string(),
            pending: (!cut.is_empty()).then(String::new),
        }
    }

    /// Tokens the suggestion may not start with: line breaks when healing (the model is to
    /// write the cursor's line, and a blank first line is never worth showing there).
    pub fn suppressed_first_tokens(&self, tokenizer: &engine::TextTokenizer) -> Vec<u32> {
        if self.pending.is_some() {
            tokenizer.line_break_tokens().to_vec()
        } else {
            Vec::new()
        }
    }

    /// Takes a streamed delta and returns what to pass on: nothing until the first line's
    /// indentation is known, then that line without the typed indentation.
    pub fn push(&mut self, delta: &str) -> String {
        let Some(pending) = self.pending.as_mut() else {
            return delta.to_string();
        };
        pending.push_str(delta);
        let Some(content) = pending.find(|c: char| c != ' ' && c != '\t') else {
            return String::new();
        };
        let text = std::mem::take(pending);
        self.pending = None;
        let (indent, rest) = text.split_at(content);
        if rest.starts_with(['\n', '\r']) {
            // A blank first line: the suggestion starts below the cursor line, keep it whole.
            return text;
        }
        // More indentation than typed keeps the extra; less or different is the editor's call.
        let extra = indent.strip_prefix(self.typed.as_str()).unwrap_or("");
        format!("{extra}{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `deltas` become for a prompt that left out `cut`.
    fn healed(cut: &str, deltas: &[&str]) -> String {
        let mut healing = IndentHealing::new(cut);
        deltas.iter().map(|d| healing.push(d)).collect()
    }

    #[test]
    fn the_typed_indentation_comes_off_the_first_line_only() {
        assert_eq!(
            healed("    ", &["  ", "  ret", "urn 1\n    pass"]),
            "return 1\n    pass"
        );
        assert_eq!(
            healed("    ", &["        x = 1"]),
            "    x = 1",
            "extra kept"
        );
        assert_eq!(
            healed("        ", &["    x = 1"]),
            "x = 1",
            "less: the editor's"
        );
        assert_eq!(
            healed("    ", &["\n    x"]),
            "\n    x",
            "a blank first line stays"
        );
        assert_eq!(
            healed("    ", &["    "]),
            "",
            "held back until content comes"
        );
        assert_eq!(healed("", &["  y"]), "  y", "nothing cut, nothing healed");
    }
}

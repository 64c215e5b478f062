//! Exact token counts for prompt budgets, through the model's own tokenizer, memoised: the same
//! definitions and lines are counted again on every keystroke.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// What the context builder needs of a tokenizer.
pub trait TokenCounter: Send + Sync {
    /// Tokens of `text` encoded on its own (as a prompt part is).
    fn count(&self, text: &str) -> usize;
    /// Tokens the prompt format adds around the parts (BOS and the fill-in-the-middle markers).
    fn fixed_tokens(&self) -> usize;
    /// True when no token spans a line break, so a text's count is the sum of its lines'
    /// (DeepSeek's pre-tokenizer splits line breaks off first).
    fn lines_are_independent(&self) -> bool;
}

/// Entries kept before the memo starts over.
const MEMO_LIMIT: usize = 500_000;

/// A counter with a memo of counts by text.
pub struct CountCache<'a> {
    counter: &'a dyn TokenCounter,
    memo: &'a Mutex<HashMap<u64, usize>>,
}

impl<'a> CountCache<'a> {
    pub fn new(counter: &'a dyn TokenCounter, memo: &'a Mutex<HashMap<u64, usize>>) -> Self {
        Self { counter, memo }
    }

    pub fn fixed_tokens(&self) -> usize {
        self.counter.fixed_tokens()
    }

    pub fn lines_are_independent(&self) -> bool {
        self.counter.lines_are_independent()
    }

    /// The exact count of `text` as one prompt part.
    pub fn text(&self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        if self.counter.lines_are_independent() {
            text.split_inclusive('\n')
                .map(|line| self.memoised(line))
                .sum()
        } else {
            self.memoised(text)
        }
    }

    /// The count of one line (with its line break), for budgeting before the exact count.
    pub fn line(&self, line: &str) -> usize {
        self.memoised(line)
    }

    fn memoised(&self, text: &str) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(&count) = self
            .memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return count;
        }
        let count = self.counter.count(text);
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if memo.len() >= MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(key, count);
        count
    }
}

/// The model's tokenizer as a counter, with the fixed tokens of the prompt format the engine
/// will use (fill-in-the-middle or prefix only).
pub struct ModelTokens {
    tokenizer: std::sync::Arc<engine::TextTokenizer>,
    fixed: usize,
    independent: bool,
}

impl ModelTokens {
    pub fn new(tokenizer: std::sync::Arc<engine::TextTokenizer>) -> Self {
        let format = if tokenizer.supports_fim() {
            engine::Prompt::fill_in_middle(&[], "", "")
        } else {
            engine::Prompt::prefix_only(&[], "")
        };
        let fixed = tokenizer.encode_prompt(&format).map_or(0, |ids| ids.len());
        let independent = tokenizer.isolates_line_breaks();
        Self {
            tokenizer,
            fixed,
            independent,
        }
    }
}

impl TokenCounter for ModelTokens {
    fn count(&self, text: &str) -> usize {
        // Encoding fails only on inputs the tokenizer cannot represent; count bytes then, an
        // upper bound for byte-level vocabularies.
        self.tokenizer.count_text(text).unwrap_or(text.len())
    }

    fn fixed_tokens(&self) -> usize {
        self.fixed
    }

    fn lines_are_independent(&self) -> bool {
        self.independent
    }
}

#[cfg(test)]
pub mod testing {
    use super::TokenCounter;

    /// A stand-in tokenizer for unit tests: one token per word or punctuation mark, and per
    /// line break; lines are independent.
    pub struct WordCounter;

    impl TokenCounter for WordCounter {
        fn count(&self, text: &str) -> usize {
            let mut count = 0;
            let mut in_word = false;
            for c in text.chars() {
                if c.is_alphanumeric() || c == '_' {
                    if !in_word {
                        count += 1;
                    }
                    in_word = true;
                } else {
                    in_word = false;
                    if !c.is_whitespace() || c == '\n' {
                        count += 1;
                    }
                }
            }
            count
        }

        fn fixed_tokens(&self) -> usize {
            4
        }

        fn lines_are_independent(&self) -> bool {
            true
        }
    }
}

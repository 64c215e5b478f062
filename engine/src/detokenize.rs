//! Incremental detokenization: text for each generated token as soon as it forms whole
//! characters. Byte-level BPE splits multi-byte characters across tokens; a broken character is
//! never emitted, it waits for the bytes that complete it.

use std::sync::Arc;

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

pub struct Detokenizer {
    tokenizer: Arc<TextTokenizer>,
    /// Byte-level mode: bytes not yet emitted (an incomplete character at most, or invalid bytes).
    pending: Vec<u8>,
    /// Fallback mode: ids, and the window still being decoded.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    pub fn new(tokenizer: Arc<TextTokenizer>) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token and returns the text it completes (often empty inside a character).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if let Some(bytes) = self.tokenizer.token_bytes(id) {
            self.pending.extend_from_slice(bytes);
            return Ok(take_complete_text(&mut self.pending, false));
        }
        self.push_by_decoding(id)
    }

    /// Ends the stream: whatever bytes remain, with broken characters replaced by U+FFFD.
    pub fn finish(&mut self) -> String {
        take_complete_text(&mut self.pending, true)
    }

    /// For tokenizers that are not byte-level: decode a sliding window and emit what grew,
    /// holding back while the window ends in a replacement character.
    fn push_by_decoding(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(now[before.len()..].to_string());
        }
        Ok(String::new())
    }
}

/// Removes and returns the longest prefix of `bytes` that is whole characters. Invalid bytes
/// become U+FFFD; an incomplete character at the end is kept unless `flush`.
fn take_complete_text(bytes: &mut Vec<u8>, flush: bool) -> String {
    let mut text = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(valid) => {
                text.push_str(valid);
                start = bytes.len();
                break;
            }
            Err(error) => {
                let valid_end = start + error.valid_up_to();
                text.push_str(
                    std::str::from_utf8(&bytes[start..valid_end]).expect("checked valid"),
                );
                match error.error_len() {
                    Some(bad) => {
                        text.push('\u{FFFD}');
                        start = valid_end + bad;
                    }
                    None if flush => {
                        text.push('\u{FFFD}');
                        start = bytes.len();
                        break;
                    }
                    None => {
                        start = valid_end;
                        break;
                    }
                }
            }
        }
    }
    bytes.drain(..start);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_pushes_waits_for_its_last_byte() {
        let euro = "€".as_bytes(); // E2 82 AC
        let mut pending = euro[..2].to_vec();
        assert_eq!(take_complete_text(&mut pending, false), "");
        pending.push(euro[2]);
        assert_eq!(take_complete_text(&mut pending, false), "€");
        assert!(pending.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_text_goes_on() {
        let mut pending = vec![b'a', 0xFF, b'b', 0xE2, 0x82];
        assert_eq!(take_complete_text(&mut pending, false), "a\u{FFFD}b");
        assert_eq!(pending, vec![0xE2, 0x82]);
        assert_eq!(take_complete_text(&mut pending, true), "\u{FFFD}");
        assert!(pending.is_empty());
    }
}

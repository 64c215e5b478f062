//! A vocabulary of any size for synthetic GGUF files, stored as llama.cpp's converter stores a
//! DeepSeek-V2 tokenizer (`tokenizer.ggml.*`, byte-level BPE, pre-tokenizer `deepseek-llm`), so
//! that both this engine and llama.cpp build a working tokenizer from it.
//!
//! Ids: the 256 byte tokens first (every text can be encoded), then a handful of merges and the
//! tokens they make, then DeepSeek's special tokens, then filler tokens up to the embedding's
//! row count. llama.cpp's loader asks for unique token strings, an array of merges (two tokens
//! joined by a space) and int32 token types (src/llama-vocab.cpp, `llama_vocab::impl::load`);
//! this engine asks that every merge's parts and result be tokens. Fillers are ordinary tokens
//! spelled in printable ASCII, so that either program decodes any id to some text.

use crate::gguf::MetadataValue;
use crate::tokenizer::{BOS, EOS, FIM_BEGIN, FIM_END, FIM_HOLE};

/// llama.cpp's `llama_token_type`.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;

/// Merges in rank order; each joins two tokens that exist by then ("Ġ" is the byte-level space).
const MERGES: [(&str, &str); 10] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("r", "e"),
    ("Ġ", "Ġ"),
    ("ĠĠ", "ĠĠ"),
];

const SPECIALS: [&str; 5] = [BOS, EOS, FIM_HOLE, FIM_BEGIN, FIM_END];

/// The fewest tokens the vocabulary needs before its fillers.
pub const MIN_VOCAB: usize = 256 + MERGES.len() + SPECIALS.len();

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes stand for themselves,
/// the others for the characters from U+0100 on, in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next_unprintable = 0x100;
    std::array::from_fn(|b| {
        let b = b as u32;
        if printable(b) {
            char::from_u32(b).expect("a Latin-1 character")
        } else {
            next_unprintable += 1;
            char::from_u32(next_unprintable - 1).expect("a Latin Extended character")
        }
    })
}

/// The `tokenizer.ggml.*` metadata of a vocabulary of `vocab_size` tokens (at least
/// [`MIN_VOCAB`]).
pub fn tokenizer_metadata(vocab_size: usize) -> Vec<(String, MetadataValue)> {
    assert!(
        vocab_size >= MIN_VOCAB,
        "a vocabulary of {vocab_size} tokens has no room for its {MIN_VOCAB} fixed ones"
    );
    let mut tokens: Vec<String> = byte_chars().iter().map(char::to_string).collect();
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let mut types = vec![NORMAL; tokens.len()];
    let bos = tokens.len();
    tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
    types.resize(tokens.len(), CONTROL);
    tokens.extend((tokens.len()..vocab_size).map(|id| format!("[FILLER{id}]")));
    types.resize(vocab_size, NORMAL);

    let strings = |items: Vec<String>| {
        MetadataValue::Array(items.into_iter().map(MetadataValue::String).collect())
    };
    let merges = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    vec![
        (
            "tokenizer.ggml.model".into(),
            MetadataValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            MetadataValue::String("deepseek-llm".into()),
        ),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            MetadataValue::Array(types.into_iter().map(MetadataValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            MetadataValue::U32(bos as u32),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            MetadataValue::U32(bos as u32 + 1),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_is_gpt2s() {
        let chars = byte_chars();
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[0], 'Ā');
        assert_eq!(chars[0xAD], 'Ń');
        let unique: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn tokens_are_unique_and_merges_join_tokens() {
        let metadata = tokenizer_metadata(1000);
        let find = |key: &str| &metadata.iter().find(|(k, _)| k == key).unwrap().1;
        let tokens: Vec<&str> = find("tokenizer.ggml.tokens")
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tokens.len(), 1000);
        let unique: std::collections::HashSet<&str> = tokens.iter().copied().collect();
        assert_eq!(unique.len(), 1000);
        for (a, b) in MERGES {
            for token in [a, b, &format!("{a}{b}")] {
                assert!(unique.contains(token), "{token}");
            }
        }
    }
}

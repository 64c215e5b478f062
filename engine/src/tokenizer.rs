//! The model's tokenizer (`tokenizer.json`), its special tokens found by their strings, and
//! encoding of prompts built from named parts.
//!
//! User text is encoded with special-token matching switched off: a source file that happens to
//! contain `<｜fim▁hole｜>` is text, not an instruction to the model.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

use crate::error::{EngineError, Result};
use crate::prompt::{Prompt, PromptPart, Special};

/// The DeepSeek-Coder-V2 special token strings (the bars are U+FF5C, the spaces U+2581).
pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";
pub const FIM_BEGIN: &str = "<｜fim▁begin｜>";
pub const FIM_HOLE: &str = "<｜fim▁hole｜>";
pub const FIM_END: &str = "<｜fim▁end｜>";

/// Ids of the special tokens this tokenizer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// (begin, hole, end), present only when all three exist.
    pub fim: Option<(u32, u32, u32)>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    special: SpecialIds,
    /// The bytes each id stands for, when the tokenizer is byte-level (DeepSeek's is); `None`
    /// means decoding goes through the tokenizer's own decoder.
    token_bytes: Option<Vec<Vec<u8>>>,
    /// Ids of added special tokens: they never appear in decoded text.
    is_special: Vec<bool>,
    warned_no_fim: AtomicBool,
    /// Ids whose text starts with a line break (computed on first use).
    line_breaks: std::sync::OnceLock<Vec<u32>>,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` for a model with `vocab_size` embedding rows.
    pub fn from_dir(dir: &Path, vocab_size: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::InvalidInput(format!(
                "no tokenizer.json in {}: copy the model's tokenizer.json next to its config.json",
                dir.display()
            )));
        }
        Self::from_file(&path, vocab_size)
    }

    /// Loads a tokenizer.json file.
    pub fn from_file(path: &Path, vocab_size: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            EngineError::InvalidInput(format!("{}: not a readable tokenizer: {e}", path.display()))
        })?;
        Self::new(inner, vocab_size, &path.display().to_string())
    }

    /// Wraps a tokenizer; `origin` names it in errors.
    pub fn new(mut inner: Tokenizer, vocab_size: usize, origin: &str) -> Result<Self> {
        let largest_id = inner.get_vocab(true).values().copied().max().unwrap_or(0) as usize;
        if largest_id >= vocab_size {
            return Err(EngineError::InvalidInput(format!(
                "{origin}: token id {largest_id} does not fit the model's vocabulary of {vocab_size}: \
                 this tokenizer belongs to another model"
            )));
        }
        inner.set_encode_special_tokens(true);
        let special = SpecialIds {
            bos: inner.token_to_id(BOS),
            eos: inner.token_to_id(EOS),
            fim: match (
                inner.token_to_id(FIM_BEGIN),
                inner.token_to_id(FIM_HOLE),
                inner.token_to_id(FIM_END),
            ) {
                (Some(b), Some(h), Some(e)) => Some((b, h, e)),
                _ => None,
            },
        };
        let mut is_special = vec![false; largest_id + 1];
        for (id, token) in inner.get_added_tokens_decoder() {
            if token.special {
                is_special[id as usize] = true;
            }
        }
        let token_bytes = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {
                byte_level_table(&inner, largest_id + 1, &is_special)
            }
            _ => None,
        };
        Ok(Self {
            inner,
            special,
            token_bytes,
            is_special,
            warned_no_fim: AtomicBool::new(false),
            line_breaks: std::sync::OnceLock::new(),
        })
    }

    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    /// Whether fill-in-the-middle prompts are possible; says once in the log when they are not.
    pub fn supports_fim(&self) -> bool {
        let supported = self.special.fim.is_some();
        if !supported && !self.warned_no_fim.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "this tokenizer has no FIM tokens: completions see only the text before the cursor"
            );
        }
        supported
    }

    /// Encodes plain text (special-token strings inside it stay text).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::InvalidInput(format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokens in `text` encoded on its own (as one prompt part).
    pub fn count_text(&self, text: &str) -> Result<usize> {
        Ok(self.encode_text(text)?.len())
    }

    /// Whether line breaks are split off before any merge (DeepSeek's pre-tokenizer does this
    /// first): then no token spans two lines, and a text's count is the sum of its lines'.
    /// Decided by pre-tokenizing probes where merging tokenizers join breaks with spaces.
    pub fn isolates_line_breaks(&self) -> bool {
        use tokenizers::tokenizer::{
            OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
        };
        let Some(pre_tokenizer) = self.inner.get_pre_tokenizer() else {
            return false;
        };
        const PROBES: &[&str] = &["x  \n\n  y", "a\n b", "}\r\n\t z", "\n\n\n", " \n", "q\n"];
        PROBES.iter().all(|probe| {
            let mut split = PreTokenizedString::from(*probe);
            if pre_tokenizer.pre_tokenize(&mut split).is_err() {
                return false;
            }
            split
                .get_splits(OffsetReferential::Original, OffsetType::Byte)
                .iter()
                .all(|(_, (start, end), _)| {
                    let piece = &probe[*start..*end];
                    !piece.contains(['\n', '\r']) || piece.len() == 1
                })
        })
    }

    /// The ids whose text starts with a line break: what a suggestion that must begin on the
    /// cursor's line may not start with.
    pub fn line_break_tokens(&self) -> &[u32] {
        self.line_breaks.get_or_init(|| {
            (0..self.is_special.len() as u32)
                .filter(|&id| !self.is_special(id))
                .filter(|&id| {
                    self.decode(&[id])
                        .is_ok_and(|text| text.starts_with(['\n', '\r']))
                })
                .collect()
        })
    }

    /// Encodes a prompt: BOS (when the tokenizer has one), then each part in order. Parts are
    /// encoded separately so that a part's tokens never depend on the parts after it: what
    /// precedes the cursor tokenizes the same on every keystroke, which keeps prefix caches valid.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        ids.extend(self.special.bos);
        for part in prompt.parts() {
            match part {
                PromptPart::Text { text, .. } => ids.extend(self.encode_text(text)?),
                PromptPart::Special(special) => ids.push(self.special_id(*special)?),
            }
        }
        Ok(ids)
    }

    fn special_id(&self, special: Special) -> Result<u32> {
        let id = match special {
            Special::FimBegin => self.special.fim.map(|f| f.0),
            Special::FimHole => self.special.fim.map(|f| f.1),
            Special::FimEnd => self.special.fim.map(|f| f.2),
            Special::Eos => self.special.eos,
        };
        id.ok_or_else(|| {
            EngineError::Unsupported(format!("this tokenizer has no {special:?} token"))
        })
    }

    /// Whether `id` is an added special token (never part of the text).
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Decodes whole ids at once (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::InvalidInput(format!("cannot decode tokens: {e}")))
    }

    /// The raw bytes of one token, for byte-level tokenizers.
    pub(crate) fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes
            .as_ref()
            .map(|table| table.get(id as usize).map_or(&[][..], Vec::as_slice))
    }
}

/// The bytes of every token of a byte-level BPE, by inverting GPT-2's byte-to-character map.
/// Special tokens decode to nothing; other added tokens are stored as plain text and decode to
/// its UTF-8. `None` if a vocabulary entry is not byte-level (then the tokenizer's decoder is used).
fn byte_level_table(
    tokenizer: &Tokenizer,
    ids: usize,
    is_special: &[bool],
) -> Option<Vec<Vec<u8>>> {
    let char_to_byte = gpt2_char_to_byte();
    let added = tokenizer.get_added_tokens_decoder();
    (0..ids as u32)
        .map(|id| {
            if is_special[id as usize] {
                return Some(Vec::new());
            }
            if let Some(token) = added.get(&id) {
                return Some(token.content.as_bytes().to_vec());
            }
            match tokenizer.id_to_token(id) {
                None => Some(Vec::new()),
                Some(token) => token
                    .chars()
                    .map(|c| char_to_byte.get(&c).copied())
                    .collect(),
            }
        })
        .collect()
}

/// GPT-2's reversible map from bytes to printable characters, inverted.
fn gpt2_char_to_byte() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut next_unused = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(byte)
        } else {
            let c = char::from_u32(next_unused).expect("256..=323 are valid chars");
            next_unused += 1;
            c
        };
        map.insert(c, byte);
    }
    map
}

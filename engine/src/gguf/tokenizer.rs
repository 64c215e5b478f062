//! The tokenizer from a GGUF file's own vocabulary (`tokenizer.ggml.*`), so that one .gguf is
//! all a model needs.
//!
//! llama.cpp stores a byte-level BPE as its token strings, token types and merges, and names the
//! pre-tokenizer (`tokenizer.ggml.pre`) instead of storing it. The names DeepSeek-V2 models carry
//! are turned back into the pre-tokenizers of the Hugging Face tokenizer.json files they stand
//! for; control and user-defined tokens become added tokens (special for control ones), matched
//! whole before BPE, exactly as tokenizer.json's added_tokens are; the converter's padding
//! tokens are left out, as tokenizer.json has none.

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::file::GgufFile;
use super::metadata::MetadataValue;
use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
/// Padding the converter invents ("[PAD102399]") to fill the embedding's rows.
const TOKEN_UNUSED: i64 = 5;

/// DeepSeek-LLM / DeepSeek-V2 / DeepSeek-Coder-V2: lines, letters, punctuation, trailing space,
/// CJK runs, single digits (the regexes of their tokenizer.json; llama.cpp's "deepseek-llm").
const DEEPSEEK_LLM_SPLITS: [&str; 5] = [
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
];

/// DeepSeek-Coder (v1): the same shape with Unicode classes (llama.cpp's "deepseek-coder").
const DEEPSEEK_CODER_SPLITS: [&str; 4] =
    ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+"];

/// The engine's tokenizer for a model of `vocab_size` embedding rows, from `file`'s metadata.
pub fn text_tokenizer(file: &GgufFile, vocab_size: usize) -> Result<TextTokenizer> {
    let origin = format!("{} (tokenizer.ggml.*)", file.path().display());
    TextTokenizer::new(hf_tokenizer(file)?, vocab_size, &origin)
}

/// The Hugging Face tokenizer the metadata describes.
pub fn hf_tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let json = tokenizer_json(file)?;
    let text = serde_json::to_vec(&json).expect("a JSON value serialises");
    Tokenizer::from_bytes(text).map_err(|e| {
        EngineError::InvalidInput(format!(
            "{}: the tokenizer in its metadata cannot be built: {e}",
            file.path().display()
        ))
    })
}

fn bad(file: &GgufFile, key: &str, problem: impl Into<String>) -> EngineError {
    EngineError::ConfigField {
        path: file.path().to_path_buf(),
        field: key.to_string(),
        problem: problem.into(),
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(value) = file.metadata(key) else {
        return Ok(None);
    };
    let items = value
        .as_array()
        .ok_or_else(|| bad(file, key, "must be an array of strings"))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .ok_or_else(|| bad(file, key, "must be an array of strings"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// tokenizer.json's text for the metadata's vocabulary.
fn tokenizer_json(file: &GgufFile) -> Result<Value> {
    match file
        .metadata("tokenizer.ggml.model")
        .map(MetadataValue::as_str)
    {
        Some(Some("gpt2")) => {}
        Some(Some(other)) => {
            return Err(bad(
                file,
                "tokenizer.ggml.model",
                format!(
                    "is `{other}`; only `gpt2` (byte-level BPE, as DeepSeek-V2 uses) is supported"
                ),
            ));
        }
        Some(None) => return Err(bad(file, "tokenizer.ggml.model", "must be a string")),
        None => {
            return Err(bad(
                file,
                "tokenizer.ggml.model",
                "is missing: this GGUF file has no tokenizer",
            ));
        }
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| bad(file, "tokenizer.ggml.tokens", "is missing"))?;
    let merges = strings(file, "tokenizer.ggml.merges")?.unwrap_or_default();
    let types = token_types(file, tokens.len())?;

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        // Left out, as tokenizer.json leaves them out: such an id decodes to nothing.
        if ty == TOKEN_UNUSED {
            continue;
        }
        vocab.insert(token.to_string(), id.into());
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TOKEN_CONTROL,
            }));
        }
    }
    let merges = merges
        .iter()
        .map(|merge| {
            // llama.cpp splits at the first space after the first character.
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    bad(
                        file,
                        "tokenizer.ggml.merges",
                        format!("holds `{merge}`, which is not two tokens joined by a space"),
                    )
                })?;
            Ok(json!([&merge[..split], &merge[split + 1..]]))
        })
        .collect::<Result<Vec<_>>>()?;

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(file)?,
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
        },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// Each token's llama.cpp type; normal when the file lists none.
fn token_types(file: &GgufFile, count: usize) -> Result<Vec<i64>> {
    let key = "tokenizer.ggml.token_type";
    let Some(value) = file.metadata(key) else {
        return Ok(vec![1; count]);
    };
    let types = value
        .as_array()
        .ok_or_else(|| bad(file, key, "must be an array of integers"))?
        .iter()
        .map(|t| {
            t.as_i64()
                .ok_or_else(|| bad(file, key, "must be an array of integers"))
        })
        .collect::<Result<Vec<_>>>()?;
    if types.len() != count {
        return Err(bad(
            file,
            key,
            format!("lists {} types for {count} tokens", types.len()),
        ));
    }
    Ok(types)
}

fn pre_tokenizer(file: &GgufFile) -> Result<Value> {
    let key = "tokenizer.ggml.pre";
    let splits: &[&str] = match file.metadata(key).map(MetadataValue::as_str) {
        Some(Some("deepseek-llm")) => &DEEPSEEK_LLM_SPLITS,
        Some(Some("deepseek-coder")) => &DEEPSEEK_CODER_SPLITS,
        Some(Some(other)) => {
            return Err(bad(
                file,
                key,
                format!(
                    "is `{other}`; the DeepSeek pre-tokenizers `deepseek-llm` and \
                     `deepseek-coder` are supported"
                ),
            ));
        }
        Some(None) => return Err(bad(file, key, "must be a string")),
        None => {
            return Err(bad(
                file,
                key,
                "is missing; DeepSeek-V2 files name their pre-tokenizer (`deepseek-llm`)",
            ));
        }
    };
    let mut steps: Vec<Value> = splits
        .iter()
        .map(|regex| {
            json!({
                "type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                "invert": false,
            })
        })
        .collect();
    steps.push(json!({"type": "Digits", "individual_digits": true}));
    steps.push(json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false
    }));
    Ok(json!({"type": "Sequence", "pretokenizers": steps}))
}

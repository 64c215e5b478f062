//! The tokenizer built from a GGUF file's vocabulary against the tokenizer.json it was converted
//! from: the shipped model's 12,288-token DeepSeek-V2-style vocabulary, through llama.cpp's
//! converter (`--vocab-only`, tiny-coder-vocab.gguf).

use std::path::Path;

use engine::gguf::{GgufFile, text_tokenizer};
use engine::{Prompt, TextTokenizer};

use super::gguf_fixture;

const TINY_CODER_VOCAB: usize = 12_288;

fn from_json() -> TextTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-coder");
    TextTokenizer::from_dir(&dir, TINY_CODER_VOCAB).unwrap()
}

fn from_gguf() -> TextTokenizer {
    let file = GgufFile::open(&gguf_fixture("tiny-coder-vocab.gguf")).unwrap();
    text_tokenizer(&file, TINY_CODER_VOCAB).unwrap()
}

const TEXTS: &[&str] = &[
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() {\r\n\tlet v: Vec<u8> = vec![0xff; 1_024];\r\n\tprintln!(\"{:?}\", &v[..3]);\r\n}\r\n",
    "const x = a?.b ?? `${c}`; // TODO: fix!!!  \n\n\n",
    "naïve café — 東京タワー 北京欢迎你 한국어 Привет, мир! Ελληνικά 🚀🦙 ✅ 😶‍🌫️",
    "3.14159 12345 x1y22 0x1F 1e-9 ١٢٣",
    "a   \n\n   b\t\t c  \u{a0}\u{3000}end   ",
    "<｜fim▁hole｜> in a file is text, not a hole <｜end▁of▁sentence｜>",
    "'''quotes''' \"\"\"docstring\"\"\" I've 'RE you sure? We'Ve",
    "",
];

#[test]
fn text_encodes_to_the_same_ids_as_tokenizer_json() {
    let (json, gguf) = (from_json(), from_gguf());
    for text in TEXTS {
        let ids = json.encode_text(text).unwrap();
        assert_eq!(gguf.encode_text(text).unwrap(), ids, "{text:?}");
        assert_eq!(
            gguf.decode(&ids).unwrap(),
            json.decode(&ids).unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn fill_in_the_middle_prompts_and_special_tokens_agree() {
    let (json, gguf) = (from_json(), from_gguf());
    assert_eq!(gguf.special_ids(), json.special_ids());
    assert!(gguf.special_ids().fim.is_some());
    for (prefix, suffix) in [
        ("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"),
        ("let s = \"東京", "\";\n"),
        ("", ""),
    ] {
        let prompt = Prompt::fill_in_middle(&[], prefix, suffix);
        let ids = json.encode_prompt(&prompt).unwrap();
        assert_eq!(
            gguf.encode_prompt(&prompt).unwrap(),
            ids,
            "{prefix:?} {suffix:?}"
        );
    }
    for id in 0..8 {
        assert_eq!(gguf.is_special(id), json.is_special(id), "id {id}");
    }
    assert!(gguf.isolates_line_breaks());
    assert_eq!(gguf.line_break_tokens(), json.line_break_tokens());
}

#[test]
fn a_vocabulary_only_file_gives_config_and_tokenizer_without_weights() {
    let (config, tokenizer) =
        engine::load_config_and_tokenizer(&gguf_fixture("tiny-coder-vocab.gguf")).unwrap();
    assert_eq!(config.vocab_size, TINY_CODER_VOCAB);
    assert_eq!(tokenizer.special_ids(), from_json().special_ids());
}

#[test]
fn every_token_decodes_as_in_tokenizer_json() {
    let (json, gguf) = (from_json(), from_gguf());
    let ids: Vec<u32> = (0..TINY_CODER_VOCAB as u32).collect();
    for chunk in ids.chunks(512) {
        for &id in chunk {
            assert_eq!(
                gguf.decode(&[id]).unwrap(),
                json.decode(&[id]).unwrap(),
                "id {id}"
            );
        }
    }
}

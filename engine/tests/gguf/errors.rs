//! Broken, foreign and unsupported GGUF files: each gives an error that names the file and
//! what is wrong with it, and none panics.

use std::path::{Path, PathBuf};

use engine::gguf::{GgufFile, GgufWeights};
use engine::weights::WeightSource;
use engine::{LoadOptions, load_checkpoint};

use super::gguf_fixture;
use super::writer::{Gguf, Tensor, Value};

/// Writes `bytes` as a .gguf file in a fresh directory.
fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// The error loading `path` gives, which must name the file.
fn load_error(path: &Path) -> String {
    match load_checkpoint(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "the file is not named: {message}"
            );
            message
        }
    }
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(gguf_fixture(name)).unwrap()
}

#[test]
fn a_truncated_file_says_it_is_truncated() {
    let bytes = fixture_bytes("lite-q8_0.gguf");
    let file = GgufFile::open(&gguf_fixture("lite-q8_0.gguf")).unwrap();
    let ranges = file.tensors().iter().map(|t| t.file_range());
    let data_start = ranges.clone().map(|r| r.start).min().unwrap();
    let data_end = ranges.map(|r| r.end).max().unwrap();
    let cuts = [
        0,
        3,
        6,
        20,
        100,
        2000,
        data_start / 2,
        data_start - 1,
        data_start + 1000,
        data_end - 1,
    ];
    for cut in cuts {
        let (_dir, path) = file_with(&bytes[..cut]);
        let message = load_error(&path);
        assert!(
            message.contains("truncated") || message.contains("tensor data out of bounds"),
            "cut at {cut}: {message}"
        );
    }
}

#[test]
fn a_file_that_is_not_gguf_says_so() {
    let mut bytes = fixture_bytes("lite-q8_0.gguf");
    bytes[..4].copy_from_slice(b"GGML");
    let (_dir, path) = file_with(&bytes);
    let message = load_error(&path);
    assert!(message.contains("not the magic `GGUF`"), "{message}");
    // A safetensors file renamed .gguf.
    let safetensors =
        std::fs::read(super::support::fixture("lite").join("model.safetensors")).unwrap();
    let (_dir, path) = file_with(&safetensors);
    assert!(load_error(&path).contains("not the magic `GGUF`"));
}

#[test]
fn unsupported_versions_are_named() {
    let bytes = fixture_bytes("lite-q8_0.gguf");
    for (version, expected) in [
        (
            1u32,
            "GGUF version 1 is not supported (versions 2 and 3 are)",
        ),
        (7, "GGUF version 7 is not supported"),
        (3u32.swap_bytes(), "big-endian GGUF (version 3)"),
    ] {
        let mut bytes = bytes.clone();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let (_dir, path) = file_with(&bytes);
        let message = load_error(&path);
        assert!(message.contains(expected), "{message}");
    }
    // Version 2 has the same layout as 3 and is read.
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let (_dir, path) = file_with(&v2);
    load_checkpoint(&path, &LoadOptions::default()).unwrap();
}

#[test]
fn another_architecture_is_named() {
    let gguf = Gguf::new(vec![("general.architecture", Value::Str("llama"))], vec![]);
    let (_dir, path) = file_with(&gguf.bytes());
    assert_eq!(
        load_error(&path),
        format!(
            "{}: architecture `llama` is not supported; this engine runs `deepseek2` GGUF files \
             (DeepSeek-V2 and DeepSeek-Coder-V2)",
            path.display()
        )
    );
    let nameless = Gguf::new(vec![("general.name", Value::Str("x"))], vec![]);
    let (_dir, path) = file_with(&nameless.bytes());
    assert!(load_error(&path).contains("`general.architecture` is missing"));
}

/// Sets the ggml type of tensor `name` in a file's header.
fn set_tensor_type(bytes: &mut [u8], name: &str, type_id: u32) {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("no tensor info for {name}"))
        + needle.len();
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * dims;
    bytes[type_at..type_at + 4].copy_from_slice(&type_id.to_le_bytes());
}

#[test]
fn a_tensor_type_the_engine_cannot_read_is_named() {
    // IQ2_XXS rows are 256 values: a file of its own.
    let gguf = Gguf::new(
        vec![("general.architecture", Value::Str("deepseek2"))],
        vec![Tensor {
            name: "token_embd.weight",
            dims: vec![256, 2],
            type_id: 16,
            offset: None,
            data: vec![0; 2 * 66],
        }],
    );
    let (_dir, path) = file_with(&gguf.bytes());
    let weights = GgufWeights::new(GgufFile::open(&path).unwrap());
    let message = weights
        .tensor("model.embed_tokens.weight", &[2, 256])
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "tensor `token_embd.weight` in {} is stored as IQ2_XXS, which this engine does not \
             read; supported: F32, F16,",
            path.display()
        )),
        "{message}"
    );
    // The same through the whole model: lite's embedding relabelled Q4_1 (its bytes fit).
    let mut bytes = fixture_bytes("lite-f32.gguf");
    set_tensor_type(&mut bytes, "token_embd.weight", 3);
    let (_dir, path) = file_with(&bytes);
    let message = load_error(&path);
    assert!(
        message.contains("`token_embd.weight`") && message.contains("Q4_1"),
        "{message}"
    );
}

fn open_error(gguf: &Gguf) -> String {
    let (_dir, path) = file_with(&gguf.bytes());
    let message = load_error(&path);
    assert!(
        message.starts_with(&format!("{}: not a readable GGUF file: ", path.display())),
        "{message}"
    );
    message
}

fn embedding(type_id: u32, offset: Option<u64>, data: usize) -> Tensor {
    Tensor {
        name: "token_embd.weight",
        dims: vec![32, 2],
        type_id,
        offset,
        data: vec![0; data],
    }
}

#[test]
fn corrupt_tensor_infos_are_refused_at_open() {
    let arch = || vec![("general.architecture", Value::Str("deepseek2"))];
    let cases = [
        (
            embedding(99, None, 256),
            "type id 99, which is no ggml tensor type",
        ),
        (
            embedding(0, Some(4096), 256),
            "tensor data out of bounds: `token_embd.weight` (F32 [32, 2]) needs 256 bytes",
        ),
        (
            embedding(0, Some(8), 256),
            "not a multiple of the alignment 32",
        ),
        (embedding(0, None, 100), "tensor data out of bounds"),
        (
            Tensor {
                dims: vec![33, 2],
                ..embedding(8, None, 256)
            },
            "rows of 33 values, not a whole number of Q8_0 blocks of 32",
        ),
        (
            Tensor {
                dims: vec![32, 0],
                ..embedding(0, None, 128)
            },
            "each must be at least 1",
        ),
        (
            Tensor {
                dims: vec![32, 1, 1, 1, 1],
                ..embedding(0, None, 128)
            },
            "has 5 dimensions; GGUF allows 1 to 4",
        ),
        (
            Tensor {
                dims: vec![32, u64::MAX / 2],
                ..embedding(0, None, 128)
            },
            "their product must fit in 63 bits",
        ),
    ];
    for (tensor, expected) in cases {
        let message = open_error(&Gguf::new(arch(), vec![tensor]));
        assert!(
            message.contains(expected),
            "expected `{expected}` in: {message}"
        );
    }
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut many_tensors = Gguf::new(vec![], vec![]);
    many_tensors.tensor_count = Some(u64::MAX);
    let message = open_error(&many_tensors);
    assert!(message.contains("the header's tensor count claims 18446744073709551615 entries"));
    let hollow = Gguf::new(
        vec![(
            "tokenizer.ggml.tokens",
            Value::HollowArray { count: 1 << 60 },
        )],
        vec![],
    );
    let message = open_error(&hollow);
    assert!(message.contains("array `tokenizer.ggml.tokens` claims 1152921504606846976 entries"));
    let duplicate = Gguf::new(
        vec![
            ("general.alignment", Value::U32(32)),
            ("general.alignment", Value::U32(64)),
        ],
        vec![],
    );
    assert!(open_error(&duplicate).contains("metadata key `general.alignment` appears twice"));
    let odd_alignment = Gguf::new(vec![("general.alignment", Value::U32(24))], vec![]);
    assert!(open_error(&odd_alignment).contains("`general.alignment` must be a power of two"));
}

#[test]
fn files_the_v2_forward_pass_would_misread_are_refused() {
    let arch = || ("general.architecture", Value::Str("deepseek2"));
    let split = Gguf::new(vec![arch(), ("split.count", Value::U32(3))], vec![]);
    let (_dir, path) = file_with(&split.bytes());
    assert!(load_error(&path).contains("one of 3 split GGUF files; merge them first"));
    let v3 = Gguf::new(
        vec![arch()],
        vec![Tensor {
            name: "blk.1.exp_probs_b.bias",
            dims: vec![8],
            type_id: 0,
            offset: None,
            data: vec![0; 32],
        }],
    );
    let (_dir, path) = file_with(&v3.bytes());
    assert!(load_error(&path).contains("is a DeepSeek-V3 router bias"));
}

#[test]
fn missing_or_mistyped_hyperparameters_name_the_key() {
    let gguf = Gguf::new(
        vec![
            ("general.architecture", Value::Str("deepseek2")),
            ("deepseek2.rope.dimension_count", Value::Str("sixty-four")),
        ],
        vec![],
    );
    let (_dir, path) = file_with(&gguf.bytes());
    let message = load_error(&path);
    assert!(
        message.starts_with(&format!(
            "{}: `deepseek2.rope.dimension_count` must be a non-negative integer",
            path.display()
        )),
        "{message}"
    );
}

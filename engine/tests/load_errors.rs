//! Broken checkpoints: each gives an error that names what is wrong and where, never a panic.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use engine::{EngineError, LoadOptions, Logits, load_checkpoint};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A writable copy of the single-file `lite` fixture (config + weights).
fn lite_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    fs::create_dir(&model).unwrap();
    for file in ["config.json", "model.safetensors"] {
        fs::copy(fixture("lite").join(file), model.join(file)).unwrap();
    }
    (dir, model)
}

fn tensors(model: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn save(model: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, model.join("model.safetensors")).unwrap();
}

fn edit_config(model: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    fs::write(path, config.to_string()).unwrap();
}

fn load_error(model: &Path) -> EngineError {
    match load_checkpoint(model, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not have", model.display()),
        Err(e) => e,
    }
}

#[test]
fn a_missing_directory_or_a_file_path_says_what_to_pass() {
    let message = load_error(Path::new("/no/such/model")).to_string();
    assert!(
        message.contains("/no/such/model does not exist"),
        "{message}"
    );
    let (_dir, model) = lite_copy();
    let message = load_error(&model.join("config.json")).to_string();
    assert!(message.contains("is a file"), "{message}");
}

#[test]
fn a_missing_config_names_the_file() {
    let (_dir, model) = lite_copy();
    fs::remove_file(model.join("config.json")).unwrap();
    let message = load_error(&model).to_string();
    assert!(
        message.starts_with(&format!(
            "cannot read {}",
            model.join("config.json").display()
        )),
        "{message}"
    );
}

#[test]
fn a_directory_without_weights_is_refused() {
    let (_dir, model) = lite_copy();
    fs::remove_file(model.join("model.safetensors")).unwrap();
    assert!(matches!(load_error(&model), EngineError::NoWeights { .. }));
    assert!(load_error(&model).to_string().contains("no weights found"));
}

#[test]
fn a_truncated_safetensors_file_names_the_file() {
    let (_dir, model) = lite_copy();
    let path = model.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(&model).to_string();
    assert!(
        message.starts_with(&format!(
            "{}: not a readable safetensors file",
            path.display()
        )),
        "{message}"
    );

    fs::write(&path, b"garbage").unwrap();
    assert!(matches!(
        load_error(&model),
        EngineError::BadSafetensors { .. }
    ));
}

#[test]
fn a_missing_tensor_is_named() {
    let (_dir, model) = lite_copy();
    let mut all = tensors(&model);
    all.remove("model.layers.1.mlp.experts.5.up_proj.weight")
        .unwrap();
    save(&model, &all);
    let message = load_error(&model).to_string();
    assert!(
        message.starts_with("tensor `model.layers.1.mlp.experts.5.up_proj.weight` is missing"),
        "{message}"
    );
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let (_dir, model) = lite_copy();
    let mut all = tensors(&model);
    all.insert(
        "model.layers.2.self_attn.kv_b_proj.weight".into(),
        Tensor::zeros((7, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    save(&model, &all);
    match load_error(&model) {
        EngineError::TensorShape {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "model.layers.2.self_attn.kv_b_proj.weight");
            assert_eq!(expected, vec![4 * (16 + 12), 32]);
            assert_eq!(found, vec![7, 32]);
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn an_integer_weight_is_refused_by_dtype() {
    let (_dir, model) = lite_copy();
    let mut all = tensors(&model);
    all.insert(
        "model.norm.weight".into(),
        Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap(),
    );
    save(&model, &all);
    let message = load_error(&model).to_string();
    assert!(
        message.contains("`model.norm.weight`") && message.contains("has dtype I64"),
        "{message}"
    );
}

#[test]
fn config_flags_that_promise_missing_tensors_are_caught() {
    let (_dir, model) = lite_copy();
    edit_config(&model, |c| {
        c.insert("attention_bias".into(), true.into());
    });
    assert!(
        load_error(&model)
            .to_string()
            .contains("`model.layers.0.self_attn.kv_a_proj_with_mqa.bias` is missing")
    );

    let (_dir, model) = lite_copy();
    let mut all = tensors(&model);
    all.remove("lm_head.weight");
    save(&model, &all);
    assert!(
        load_error(&model)
            .to_string()
            .contains("`lm_head.weight` is missing")
    );
    // ... unless the embeddings are tied.
    edit_config(&model, |c| {
        c.insert("tie_word_embeddings".into(), true.into());
    });
    load_checkpoint(&model, &LoadOptions::default()).unwrap();
}

#[test]
fn a_shard_index_naming_a_missing_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("v2");
    fs::create_dir(&model).unwrap();
    for entry in fs::read_dir(fixture("v2")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    load_checkpoint(&model, &LoadOptions::default()).unwrap();
    fs::remove_file(model.join("model-00003-of-00008.safetensors")).unwrap();
    let message = load_error(&model).to_string();
    assert!(
        message.contains("model.safetensors.index.json: shard index is invalid"),
        "{message}"
    );
    assert!(
        message.contains("model-00003-of-00008.safetensors"),
        "{message}"
    );

    fs::write(
        model.join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "../escape.safetensors"}}"#,
    )
    .unwrap();
    assert!(
        load_error(&model)
            .to_string()
            .contains("not a file name inside the model directory")
    );
}

#[test]
fn bad_token_ids_are_input_errors_not_panics() {
    let model = load_checkpoint(&fixture("lite"), &LoadOptions::default()).unwrap();
    let mut cache = model.new_cache();
    let error = model
        .forward(&[1, 320], &mut cache, Logits::All)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "token id 320 is outside the vocabulary (size 320)"
    );
    assert_eq!(cache.len(), 0, "a refused step leaves the cache as it was");
    assert!(model.forward(&[], &mut cache, Logits::All).is_err());
}

#[test]
fn bf16_compute_on_the_cpu_is_refused_with_the_alternative() {
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::BF16),
    };
    let message = load_checkpoint(&fixture("lite"), &options)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("use f32 or f16"), "{message}");
}

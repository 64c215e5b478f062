//! The model's hyper-parameters from llama.cpp's `deepseek2` metadata keys.
//!
//! The keys are translated into the Hugging Face `config.json` fields they came from, and that
//! text goes through the same parser and checks as a real config.json: one definition of what a
//! DeepSeek-V2 config means. The GGUF is read the way llama.cpp reads it (src/models/deepseek2.cpp,
//! src/llama-context.cpp), which is what the file means to every other program:
//!
//! - Per-head sizes: converters since llama.cpp's MLA split (2025) write `attention.key_length` =
//!   kv_lora_rank + rope and `value_length` = kv_lora_rank (the absorbed "MQA" view) and the real
//!   sizes as `key_length_mla` / `value_length_mla`; older files have only the real sizes in
//!   `key_length` / `value_length`.
//! - YaRN: the file keeps only `rope.scaling.yarn_log_multiplier` = 0.1 * mscale_all_dim, and
//!   llama.cpp takes mscale to equal mscale_all_dim (true of every DeepSeek-V2 release), so
//!   cos/sin are unscaled and the softmax scale carries mscale_all_dim. Without the key llama.cpp
//!   uses mscale(factor, 1) for both.
//! - Routing: softmax unless `expert_gating_func` says otherwise; groups when
//!   `expert_group_count` > 1; `expert_weights_norm` and `expert_weights_scale` as written.
//! - Every layer from `leading_dense_block_count` on is MoE (no `moe_layer_freq` in GGUF).

use serde_json::{Map, Value, json};

use super::file::GgufFile;
use super::metadata::MetadataValue;
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// The only architecture this engine runs.
pub const ARCHITECTURE: &str = "deepseek2";

/// llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_*`.
const GATING_SOFTMAX: u64 = 1;
const GATING_SIGMOID: u64 = 2;

/// The DeepSeek-V2 config of a `deepseek2` GGUF file.
pub fn model_config(file: &GgufFile) -> Result<ModelConfig> {
    check_architecture(file)?;
    let config = hf_config(file)?;
    ModelConfig::from_json_str(&Value::Object(config).to_string(), file.path())
        .map_err(|e| relabel(e, file))
}

/// Refuses files of any architecture but `deepseek2`, naming the one found.
pub fn check_architecture(file: &GgufFile) -> Result<()> {
    match file.metadata("general.architecture") {
        Some(MetadataValue::String(arch)) if arch == ARCHITECTURE => Ok(()),
        Some(MetadataValue::String(arch)) => Err(EngineError::UnsupportedArchitecture {
            path: file.path().to_path_buf(),
            found: arch.clone(),
        }),
        Some(other) => Err(field_error(
            file,
            "general.architecture",
            format!("must be a string, found {}", other.type_name()),
        )),
        None => Err(field_error(
            file,
            "general.architecture",
            "is missing (expected \"deepseek2\")",
        )),
    }
}

fn field_error(file: &GgufFile, key: &str, problem: impl Into<String>) -> EngineError {
    EngineError::ConfigField {
        path: file.path().to_path_buf(),
        field: key.to_string(),
        problem: problem.into(),
    }
}

/// Typed reads of `deepseek2.*` keys with errors naming the key and the file.
struct Keys<'a> {
    file: &'a GgufFile,
}

impl Keys<'_> {
    fn name(key: &str) -> String {
        format!("{ARCHITECTURE}.{key}")
    }

    fn error(&self, key: &str, problem: impl Into<String>) -> EngineError {
        field_error(self.file, &Self::name(key), problem)
    }

    fn value(&self, key: &str) -> Option<&MetadataValue> {
        self.file.metadata(&Self::name(key))
    }

    fn count(&self, key: &str) -> Result<Option<u64>> {
        self.value(key)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    self.error(key, format!("must be a non-negative integer, found {v:?}"))
                })
            })
            .transpose()
    }

    fn required_count(&self, key: &str) -> Result<u64> {
        self.count(key)?
            .ok_or_else(|| self.error(key, "is missing"))
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        self.value(key)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.error(key, format!("must be a float, found {v:?}")))
            })
            .transpose()
    }

    fn flag(&self, key: &str) -> Result<Option<bool>> {
        self.value(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.error(key, format!("must be a bool, found {v:?}")))
            })
            .transpose()
    }

    fn text(&self, key: &str) -> Result<Option<&str>> {
        self.value(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.error(key, format!("must be a string, found {v:?}")))
            })
            .transpose()
    }
}

/// The config.json fields the metadata stands for.
fn hf_config(file: &GgufFile) -> Result<Map<String, Value>> {
    let k = Keys { file };
    let rope_dim = k.required_count("rope.dimension_count")?;
    let (qk_head_dim, v_head_dim) = head_dims(&k)?;
    let qk_nope_head_dim = qk_head_dim
        .checked_sub(rope_dim)
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            k.error(
                "attention.key_length_mla",
                format!(
                    "is {qk_head_dim}, which leaves no room for the non-rotary part beside \
                 rope.dimension_count ({rope_dim})"
                ),
            )
        })?;
    let mut c = Map::new();
    c.insert("model_type".into(), "deepseek_v2".into());
    c.insert("vocab_size".into(), vocab_size(&k)?.into());
    c.insert(
        "hidden_size".into(),
        k.required_count("embedding_length")?.into(),
    );
    c.insert(
        "intermediate_size".into(),
        json!(k.count("feed_forward_length")?),
    );
    c.insert(
        "num_hidden_layers".into(),
        k.required_count("block_count")?.into(),
    );
    c.insert(
        "num_attention_heads".into(),
        k.required_count("attention.head_count")?.into(),
    );
    // Written only when the model has a query bottleneck; 0 means none too.
    c.insert(
        "q_lora_rank".into(),
        json!(k.count("attention.q_lora_rank")?.filter(|&r| r > 0)),
    );
    c.insert(
        "kv_lora_rank".into(),
        k.required_count("attention.kv_lora_rank")?.into(),
    );
    c.insert("qk_rope_head_dim".into(), rope_dim.into());
    c.insert("qk_nope_head_dim".into(), qk_nope_head_dim.into());
    c.insert("v_head_dim".into(), v_head_dim.into());
    c.insert(
        "rms_norm_eps".into(),
        k.number("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| k.error("attention.layer_norm_rms_epsilon", "is missing"))?
            .into(),
    );
    c.insert(
        "rope_theta".into(),
        k.number("rope.freq_base")?.unwrap_or(10000.0).into(),
    );
    c.insert("rope_scaling".into(), rope_scaling(&k)?);
    if let Some(context) = k.count("context_length")? {
        c.insert("max_position_embeddings".into(), context.into());
    }
    insert_moe(&k, &mut c)?;
    // No output tensor: llama.cpp ties the output to token_embd.
    c.insert(
        "tie_word_embeddings".into(),
        file.tensor_info("output.weight").is_none().into(),
    );
    // llama.cpp has no biases for deepseek2; a file that has them says so by having them.
    let has = |name: &str| file.tensor_info(name).is_some();
    c.insert(
        "attention_bias".into(),
        has("blk.0.attn_kv_a_mqa.bias").into(),
    );
    let first_moe = k.count("leading_dense_block_count")?.unwrap_or(0);
    c.insert(
        "mlp_bias".into(),
        (has("blk.0.ffn_gate.bias") || has(&format!("blk.{first_moe}.ffn_gate_shexp.bias"))).into(),
    );
    Ok(c)
}

/// (qk_head_dim, v_head_dim) per head, from whichever keys this file's converter wrote.
fn head_dims(k: &Keys) -> Result<(u64, u64)> {
    if let Some(key) = k.count("attention.key_length_mla")? {
        let value = k.count("attention.value_length_mla")?.ok_or_else(|| {
            k.error(
                "attention.value_length_mla",
                "is missing (key_length_mla is present)",
            )
        })?;
        return Ok((key, value));
    }
    // Split kv_b without the *_mla keys: key_length is the absorbed size, so read the real
    // sizes off the halves ([nope, kv_lora, heads] and [kv_lora, v, heads]).
    if let (Some(k_b), Some(v_b)) = (
        k.file.tensor_info("blk.0.attn_k_b.weight"),
        k.file.tensor_info("blk.0.attn_v_b.weight"),
    ) && k_b.dims().len() == 3
        && v_b.dims().len() == 3
    {
        let rope = k.required_count("rope.dimension_count")?;
        return Ok((k_b.dims()[0].saturating_add(rope), v_b.dims()[1]));
    }
    Ok((
        k.required_count("attention.key_length")?,
        k.required_count("attention.value_length")?,
    ))
}

fn vocab_size(k: &Keys) -> Result<u64> {
    if let Some(size) = k.count("vocab_size")? {
        return Ok(size);
    }
    if let Some(tokens) = k
        .file
        .metadata("tokenizer.ggml.tokens")
        .and_then(MetadataValue::as_array)
    {
        return Ok(tokens.len() as u64);
    }
    match k.file.tensor_info("token_embd.weight") {
        Some(embedding) if embedding.dims().len() == 2 => Ok(embedding.dims()[1]),
        _ => Err(k.error(
            "vocab_size",
            "is missing, and there is neither a token list nor a token_embd tensor to count",
        )),
    }
}

fn rope_scaling(k: &Keys) -> Result<Value> {
    match k.text("rope.scaling.type")?.unwrap_or("none") {
        "none" => Ok(Value::Null),
        "yarn" => {
            let factor = k
                .number("rope.scaling.factor")?
                .ok_or_else(|| k.error("rope.scaling.factor", "is missing (YaRN needs it)"))?;
            let original = k.required_count("rope.scaling.original_context_length")?;
            // llama.cpp keeps 0.1 * mscale_all_dim; 0 or absent means no such key.
            let mscale_all_dim = match k.number("rope.scaling.yarn_log_multiplier")? {
                Some(log_mul) if log_mul != 0.0 => Some((log_mul as f32 / 0.1f32) as f64),
                _ => None,
            };
            let mut yarn = json!({
                "type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": original,
                "beta_fast": k.number("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                "beta_slow": k.number("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            });
            match mscale_all_dim {
                // cos/sin unscaled (mscale == mscale_all_dim), softmax scaled by mscale_all_dim.
                Some(m) => {
                    yarn["mscale"] = m.into();
                    yarn["mscale_all_dim"] = m.into();
                }
                // cos/sin and softmax both scaled by mscale(factor, 1), as llama.cpp does.
                None => yarn["mscale_all_dim"] = 1.0.into(),
            }
            Ok(yarn)
        }
        other => Err(k.error(
            "rope.scaling.type",
            format!("`{other}` is not supported (none or yarn)"),
        )),
    }
}

fn insert_moe(k: &Keys, c: &mut Map<String, Value>) -> Result<()> {
    let experts = k.count("expert_count")?.filter(|&n| n > 0);
    c.insert("n_routed_experts".into(), json!(experts));
    if experts.is_none() {
        return Ok(());
    }
    match k.count("expert_gating_func")? {
        None | Some(GATING_SOFTMAX) => {}
        Some(GATING_SIGMOID) => {
            return Err(k.error(
                "expert_gating_func",
                "is sigmoid (DeepSeek-V3-style routing); this engine runs DeepSeek-V2's softmax \
                 routing",
            ));
        }
        Some(other) => {
            return Err(k.error(
                "expert_gating_func",
                format!("is {other}; only softmax (1) is supported"),
            ));
        }
    }
    c.insert("scoring_func".into(), "softmax".into());
    c.insert(
        "num_experts_per_tok".into(),
        k.required_count("expert_used_count")?.into(),
    );
    c.insert(
        "moe_intermediate_size".into(),
        k.required_count("expert_feed_forward_length")?.into(),
    );
    c.insert(
        "n_shared_experts".into(),
        k.count("expert_shared_count")?.unwrap_or(0).into(),
    );
    c.insert(
        "first_k_dense_replace".into(),
        k.count("leading_dense_block_count")?.unwrap_or(0).into(),
    );
    c.insert("moe_layer_freq".into(), 1.into());
    match k.count("expert_group_count")? {
        Some(groups) if groups > 1 => {
            c.insert("topk_method".into(), "group_limited_greedy".into());
            c.insert("n_group".into(), groups.into());
            c.insert(
                "topk_group".into(),
                k.required_count("expert_group_used_count")?.into(),
            );
        }
        _ => {
            c.insert("topk_method".into(), "greedy".into());
        }
    }
    c.insert(
        "norm_topk_prob".into(),
        k.flag("expert_weights_norm")?.unwrap_or(false).into(),
    );
    c.insert(
        "routed_scaling_factor".into(),
        k.number("expert_weights_scale")?.unwrap_or(1.0).into(),
    );
    Ok(())
}

/// The GGUF key behind each config.json field, so the shared checks' errors name the key the
/// user can find in the file.
const FIELD_KEYS: &[(&str, &str)] = &[
    ("vocab_size", "vocab_size"),
    ("hidden_size", "embedding_length"),
    ("intermediate_size", "feed_forward_length"),
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("q_lora_rank", "attention.q_lora_rank"),
    ("kv_lora_rank", "attention.kv_lora_rank"),
    ("qk_rope_head_dim", "rope.dimension_count"),
    ("qk_nope_head_dim", "attention.key_length_mla"),
    ("v_head_dim", "attention.value_length_mla"),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    ("rope_theta", "rope.freq_base"),
    ("rope_scaling.factor", "rope.scaling.factor"),
    (
        "rope_scaling.original_max_position_embeddings",
        "rope.scaling.original_context_length",
    ),
    ("max_position_embeddings", "context_length"),
    ("n_routed_experts", "expert_count"),
    ("num_experts_per_tok", "expert_used_count"),
    ("moe_intermediate_size", "expert_feed_forward_length"),
    ("n_shared_experts", "expert_shared_count"),
    ("first_k_dense_replace", "leading_dense_block_count"),
    ("n_group", "expert_group_count"),
    ("topk_group", "expert_group_used_count"),
    ("routed_scaling_factor", "expert_weights_scale"),
];

fn relabel(error: EngineError, file: &GgufFile) -> EngineError {
    match error {
        EngineError::ConfigField { field, problem, .. } => {
            let key = FIELD_KEYS
                .iter()
                .find(|(hf, _)| *hf == field)
                .map_or(field, |(_, key)| Keys::name(key));
            field_error(file, &key, problem)
        }
        other => other,
    }
}

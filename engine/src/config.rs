//! The DeepSeek-V2 `config.json`: every field that changes the math, parsed and checked once.
//!
//! Both spellings found in the wild are accepted: the Hugging Face hub checkpoints
//! (`rope_theta` + `rope_scaling: {"type": "yarn", ...}`) and what transformers 5 writes
//! (`rope_parameters: {"rope_type": "yarn", "rope_theta": ..., ...}`).
//! Where transformers and DeepSeek's own modelling code disagree, the choice is commented.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{EngineError, Result};

/// The architecture of one DeepSeek-V2 checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLP used by the first `first_k_dense_replace` layers.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None`: queries come from one `q_proj` (V2-Lite). `Some(r)`: a low-rank
    /// `q_a_proj -> q_a_layernorm -> q_b_proj` path (V2, 236B).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// `None` for a model without routed experts: every layer is dense.
    pub moe: Option<MoeConfig>,
    pub rope: RopeConfig,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Bias on `q_a_proj`/`q_proj`-less paths as transformers does: q_a_proj, kv_a_proj_with_mqa, o_proj.
    pub attention_bias: bool,
    /// Bias on the dense and shared-expert MLPs.
    pub mlp_bias: bool,
    pub max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    /// 0 when the checkpoint has no shared experts.
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub routing: Routing,
    /// DeepSeek-V2 rule: when true (and top-k > 1) the chosen weights are renormalised to sum
    /// to one and `routed_scaling_factor` is not applied; when false they are multiplied by it.
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
}

/// How the router picks experts from the softmax scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Top-k over all experts (V2-Lite).
    Greedy,
    /// V2 rule: score each group by its best expert, keep `topk_group` groups, top-k inside them.
    GroupLimitedGreedy { n_group: usize, topk_group: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub yarn: Option<YarnConfig>,
}

/// YaRN parameters, resolved the way transformers' `_compute_yarn_parameters` resolves them.
#[derive(Debug, Clone, PartialEq)]
pub struct YarnConfig {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Explicit cos/sin scale; derived from the mscales when absent.
    pub attention_factor: Option<f64>,
    pub truncate: bool,
}

/// YaRN's magnitude correction: 0.1 * mscale * ln(scale) + 1 for scale > 1.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl YarnConfig {
    /// Scale applied to cos and sin, hence to both q_pe and k_pe.
    pub fn cos_sin_scale(&self) -> f64 {
        if let Some(factor) = self.attention_factor {
            return factor;
        }
        match (self.mscale, self.mscale_all_dim) {
            (Some(m), Some(m_all)) if m != 0.0 && m_all != 0.0 => {
                yarn_mscale(self.factor, m) / yarn_mscale(self.factor, m_all)
            }
            _ => yarn_mscale(self.factor, 1.0),
        }
    }
}

impl ModelConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config text; `path` is only used to name the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| EngineError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(EngineError::Json {
                path: path.to_path_buf(),
                message: "the top level must be an object".into(),
            });
        };
        let fields = Fields { map: &map, path };
        let config = parse(&fields)?;
        config.check(path)?;
        Ok(config)
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Whether layer `index` uses routed experts (DeepSeek's rule; transformers 5.24 ignores
    /// `moe_layer_freq`, which every published checkpoint sets to 1).
    pub fn is_moe_layer(&self, index: usize) -> bool {
        self.moe.as_ref().is_some_and(|moe| {
            index >= moe.first_k_dense_replace && index.is_multiple_of(moe.moe_layer_freq)
        })
    }

    /// Softmax scale of attention: 1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2
    /// under YaRN. A wrong value here is invisible at position 0.
    pub fn softmax_scale(&self) -> f64 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        match &self.rope.yarn {
            Some(yarn) => match yarn.mscale_all_dim {
                Some(m_all) if m_all != 0.0 => {
                    let m = yarn_mscale(yarn.factor, m_all);
                    base * m * m
                }
                _ => base,
            },
            None => base,
        }
    }

    /// Bytes the latent cache holds per token: the normalised c_kv and the roped k_pe of every layer.
    pub fn kv_bytes_per_token(&self, element_size: usize) -> usize {
        (self.kv_lora_rank + self.qk_rope_head_dim) * self.num_hidden_layers * element_size
    }

    /// Bytes expanded per-head K and V would need per token, for comparison with the latent cache.
    pub fn expanded_kv_bytes_per_token(&self, element_size: usize) -> usize {
        self.num_attention_heads
            * (self.qk_head_dim() + self.v_head_dim)
            * self.num_hidden_layers
            * element_size
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, problem: String| EngineError::ConfigField {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(bad(
                "qk_rope_head_dim",
                format!(
                    "must be even (RoPE rotates pairs), found {}",
                    self.qk_rope_head_dim
                ),
            ));
        }
        let any_dense = (0..self.num_hidden_layers).any(|i| !self.is_moe_layer(i));
        if any_dense && self.intermediate_size == 0 {
            return Err(bad(
                "intermediate_size",
                "is required (a positive integer) because some layers are dense".into(),
            ));
        }
        if let Some(moe) = &self.moe {
            if moe.num_experts_per_tok > moe.n_routed_experts {
                return Err(bad(
                    "num_experts_per_tok",
                    format!(
                        "is {} but there are only {} routed experts (n_routed_experts)",
                        moe.num_experts_per_tok, moe.n_routed_experts
                    ),
                ));
            }
            if let Routing::GroupLimitedGreedy {
                n_group,
                topk_group,
            } = moe.routing
            {
                if moe.n_routed_experts % n_group != 0 {
                    return Err(bad(
                        "n_group",
                        format!(
                            "is {n_group}, which does not divide n_routed_experts ({})",
                            moe.n_routed_experts
                        ),
                    ));
                }
                if topk_group > n_group {
                    return Err(bad(
                        "topk_group",
                        format!("is {topk_group}, more than n_group ({n_group})"),
                    ));
                }
                let reachable = topk_group * (moe.n_routed_experts / n_group);
                if moe.num_experts_per_tok > reachable {
                    return Err(bad(
                        "num_experts_per_tok",
                        format!(
                            "is {} but the {topk_group} kept groups hold only {reachable} experts",
                            moe.num_experts_per_tok
                        ),
                    ));
                }
            }
        }
        if let Some(yarn) = &self.rope.yarn {
            // Parsed numbers are finite, so `<=` is the whole test.
            if yarn.factor <= 0.0 {
                return Err(bad(
                    "rope_scaling.factor",
                    format!("must be positive, found {}", yarn.factor),
                ));
            }
            if yarn.original_max_position_embeddings <= 0.0 {
                return Err(bad(
                    "rope_scaling.original_max_position_embeddings",
                    "must be positive".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Typed access to the JSON object with errors that name the field and the file.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn error(&self, field: &str, problem: impl Into<String>) -> EngineError {
        EngineError::ConfigField {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    fn present(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn count_of(&self, field: &str, value: &Value, min: u64) -> Result<usize> {
        match value.as_u64() {
            Some(n) if n >= min => Ok(n as usize),
            _ => Err(self.error(
                field,
                format!(
                    "must be an integer >= {min}, found {}",
                    serde_json::to_string(value).unwrap_or_default()
                ),
            )),
        }
    }

    /// A required integer of at least `min`.
    fn count(&self, field: &str, min: u64) -> Result<usize> {
        match self.map.get(field) {
            None => Err(self.error(field, "is missing")),
            Some(v) => self.count_of(field, v, min),
        }
    }

    /// An integer that may be absent or null.
    fn optional_count(&self, field: &str, min: u64) -> Result<Option<usize>> {
        self.present(field)
            .map(|v| self.count_of(field, v, min))
            .transpose()
    }

    /// A key that must be written out, even if only as `null` (its transformers default is model-specific).
    fn nullable_count(&self, field: &str, min: u64) -> Result<Option<usize>> {
        if !self.map.contains_key(field) {
            return Err(self.error(field, "is missing (write null if the model has none)"));
        }
        self.optional_count(field, min)
    }

    fn number_of(&self, field: &str, value: &Value) -> Result<f64> {
        value
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.error(field, format!("must be a number, found {value}")))
    }

    fn number_or(&self, field: &str, default: f64) -> Result<f64> {
        self.present(field)
            .map_or(Ok(default), |v| self.number_of(field, v))
    }

    fn flag_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.present(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(field, format!("must be true or false, found {v}"))),
        }
    }

    fn text_or<'v>(&'v self, field: &str, default: &'v str) -> Result<&'v str> {
        match self.present(field) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.error(field, format!("must be a string, found {v}"))),
        }
    }
}

fn parse(f: &Fields) -> Result<ModelConfig> {
    match f.map.get("model_type") {
        None => return Err(f.error("model_type", "is missing (expected \"deepseek_v2\")")),
        Some(Value::String(t)) if t == "deepseek_v2" => {}
        Some(other) => {
            return Err(EngineError::UnsupportedModelType {
                path: f.path.to_path_buf(),
                found: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
            });
        }
    }
    let activation = f.text_or("hidden_act", "silu")?;
    if activation != "silu" {
        return Err(f.error(
            "hidden_act",
            format!("`{activation}` is not supported (only silu)"),
        ));
    }

    let num_hidden_layers = f.count("num_hidden_layers", 1)?;
    let max_position_embeddings = f
        .optional_count("max_position_embeddings", 1)?
        .unwrap_or(2048);
    Ok(ModelConfig {
        vocab_size: f.count("vocab_size", 1)?,
        hidden_size: f.count("hidden_size", 1)?,
        intermediate_size: f.optional_count("intermediate_size", 1)?.unwrap_or(0),
        num_hidden_layers,
        num_attention_heads: f.count("num_attention_heads", 1)?,
        q_lora_rank: f.nullable_count("q_lora_rank", 1)?,
        kv_lora_rank: f.count("kv_lora_rank", 1)?,
        qk_nope_head_dim: f.count("qk_nope_head_dim", 1)?,
        qk_rope_head_dim: f.count("qk_rope_head_dim", 2)?,
        v_head_dim: f.count("v_head_dim", 1)?,
        moe: parse_moe(f)?,
        rope: parse_rope(f, max_position_embeddings)?,
        rms_norm_eps: positive(f, "rms_norm_eps", f.number_or("rms_norm_eps", 1e-6)?)?,
        tie_word_embeddings: f.flag_or("tie_word_embeddings", false)?,
        attention_bias: f.flag_or("attention_bias", false)?,
        mlp_bias: f.flag_or("mlp_bias", false)?,
        max_position_embeddings,
    })
}

fn positive(f: &Fields, field: &str, x: f64) -> Result<f64> {
    if x > 0.0 {
        Ok(x)
    } else {
        Err(f.error(field, format!("must be positive, found {x}")))
    }
}

fn parse_moe(f: &Fields) -> Result<Option<MoeConfig>> {
    let Some(n_routed_experts) = f.nullable_count("n_routed_experts", 0)? else {
        return Ok(None);
    };
    if n_routed_experts == 0 {
        return Ok(None);
    }
    let scoring = f.text_or("scoring_func", "softmax")?;
    if scoring != "softmax" {
        return Err(f.error(
            "scoring_func",
            format!("`{scoring}` is not supported (DeepSeek-V2 routes with softmax)"),
        ));
    }
    let routing = match f.text_or("topk_method", "greedy")? {
        "greedy" => Routing::Greedy,
        "group_limited_greedy" => Routing::GroupLimitedGreedy {
            n_group: f.optional_count("n_group", 1)?.ok_or_else(|| {
                f.error("n_group", "is required by topk_method group_limited_greedy")
            })?,
            topk_group: f.optional_count("topk_group", 1)?.ok_or_else(|| {
                f.error(
                    "topk_group",
                    "is required by topk_method group_limited_greedy",
                )
            })?,
        },
        other => {
            return Err(f.error(
                "topk_method",
                format!("`{other}` is not supported (greedy or group_limited_greedy)"),
            ));
        }
    };
    Ok(Some(MoeConfig {
        n_routed_experts,
        n_shared_experts: f.nullable_count("n_shared_experts", 0)?.unwrap_or(0),
        num_experts_per_tok: f
            .optional_count("num_experts_per_tok", 1)?
            .ok_or_else(|| f.error("num_experts_per_tok", "is missing"))?,
        moe_intermediate_size: f.count("moe_intermediate_size", 1)?,
        first_k_dense_replace: f.optional_count("first_k_dense_replace", 0)?.unwrap_or(0),
        moe_layer_freq: f.optional_count("moe_layer_freq", 1)?.unwrap_or(1),
        routing,
        norm_topk_prob: f.flag_or("norm_topk_prob", false)?,
        routed_scaling_factor: f.number_or("routed_scaling_factor", 1.0)?,
    }))
}

fn parse_rope(f: &Fields, max_position_embeddings: usize) -> Result<RopeConfig> {
    // transformers 5 nests everything under `rope_parameters`; hub checkpoints use `rope_scaling`.
    let (section_name, section) = match (f.present("rope_parameters"), f.present("rope_scaling")) {
        (Some(v), _) => ("rope_parameters", Some(v)),
        (None, Some(v)) => ("rope_scaling", Some(v)),
        (None, None) => ("rope_scaling", None),
    };
    let empty = Map::new();
    let params = match section {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(v) => return Err(f.error(section_name, format!("must be an object, found {v}"))),
    };
    let nested = Fields {
        map: params,
        path: f.path,
    };
    let name = |key: &str| format!("{section_name}.{key}");
    let relabel = |e: EngineError, key: &str| match e {
        EngineError::ConfigField { path, problem, .. } => EngineError::ConfigField {
            path,
            field: name(key),
            problem,
        },
        other => other,
    };

    let theta = match nested.present("rope_theta") {
        Some(v) => nested
            .number_of("rope_theta", v)
            .map_err(|e| relabel(e, "rope_theta"))?,
        None => f.number_or("rope_theta", 10000.0)?,
    };
    let theta = positive(f, "rope_theta", theta)?;
    let kind = match nested
        .present("rope_type")
        .or_else(|| nested.present("type"))
    {
        None => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(f.error(&name("rope_type"), format!("must be a string, found {v}"))),
    };
    let yarn = match kind {
        "default" => None,
        "yarn" => {
            let number = |key: &str| -> Result<Option<f64>> {
                nested
                    .present(key)
                    .map(|v| nested.number_of(key, v))
                    .transpose()
                    .map_err(|e| relabel(e, key))
            };
            let original = match number("original_max_position_embeddings")? {
                Some(x) => x,
                None => f.number_or(
                    "original_max_position_embeddings",
                    max_position_embeddings as f64,
                )?,
            };
            // transformers derives a missing factor from the context extension.
            let factor = number("factor")?.unwrap_or(max_position_embeddings as f64 / original);
            // `or` semantics of transformers: 0 and null both fall back to the paper's defaults.
            let or_default = |x: Option<f64>, d: f64| x.filter(|v| *v != 0.0).unwrap_or(d);
            Some(YarnConfig {
                factor,
                original_max_position_embeddings: original,
                beta_fast: or_default(number("beta_fast")?, 32.0),
                beta_slow: or_default(number("beta_slow")?, 1.0),
                mscale: number("mscale")?,
                mscale_all_dim: number("mscale_all_dim")?,
                attention_factor: number("attention_factor")?,
                truncate: nested
                    .flag_or("truncate", true)
                    .map_err(|e| relabel(e, "truncate"))?,
            })
        }
        other => {
            return Err(f.error(
                &name("rope_type"),
                format!("`{other}` is not supported (default or yarn)"),
            ));
        }
    };
    Ok(RopeConfig { theta, yarn })
}

/// Where a model directory keeps its config.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DeepSeek-Coder-V2-Lite-Base's config.json as published on the hub (the fields that matter).
    const LITE_HUB: &str = r#"{
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
        "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
        "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
        "routed_scaling_factor": 1.0, "kv_lora_rank": 512, "q_lora_rank": null,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
        "topk_method": "greedy", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6,
        "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": false,
        "scoring_func": "softmax", "aux_loss_alpha": 0.001, "seq_aux": true, "hidden_act": "silu",
        "max_position_embeddings": 163840, "initializer_range": 0.02, "rms_norm_eps": 1e-06,
        "use_cache": true, "pad_token_id": null, "bos_token_id": 100000, "eos_token_id": 100001,
        "pretraining_tp": 1, "tie_word_embeddings": false, "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
            "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"},
        "attention_bias": false, "attention_dropout": 0.0, "torch_dtype": "bfloat16"
    }"#;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(text, Path::new("model/config.json"))
    }

    fn edited(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut value: Value = serde_json::from_str(LITE_HUB).unwrap();
        edit(value.as_object_mut().unwrap());
        value.to_string()
    }

    fn error_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_published_lite_config_parses_to_its_architecture() {
        let c = parse(LITE_HUB).unwrap();
        assert_eq!(c.q_lora_rank, None);
        assert_eq!(c.qk_head_dim(), 192);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(
            (
                moe.n_routed_experts,
                moe.n_shared_experts,
                moe.num_experts_per_tok
            ),
            (64, 2, 6)
        );
        assert_eq!(moe.routing, Routing::Greedy);
        assert!(!c.is_moe_layer(0) && c.is_moe_layer(1) && c.is_moe_layer(26));
        let yarn = c.rope.yarn.as_ref().unwrap();
        assert_eq!(
            (yarn.factor, yarn.original_max_position_embeddings),
            (40.0, 4096.0)
        );
        // mscale == mscale_all_dim: cos/sin unscaled.
        assert_eq!(yarn.cos_sin_scale(), 1.0);
    }

    #[test]
    fn latent_cache_of_lite_is_8_9x_smaller_than_expanded_kv() {
        let c = parse(LITE_HUB).unwrap();
        assert_eq!(c.kv_bytes_per_token(2), (512 + 64) * 27 * 2);
        let ratio = c.expanded_kv_bytes_per_token(2) as f64 / c.kv_bytes_per_token(2) as f64;
        assert!((ratio - 8.89).abs() < 0.01, "ratio {ratio}");
    }

    #[test]
    fn softmax_scale_includes_the_squared_yarn_mscale() {
        let c = parse(LITE_HUB).unwrap();
        // 0.1 * 0.707 * ln(40) + 1, squared, over sqrt(192): the value DeepSeek's code computes.
        let m = 0.1 * 0.707 * 40f64.ln() + 1.0;
        assert!((c.softmax_scale() - m * m / 192f64.sqrt()).abs() < 1e-12);
        let plain = parse(&edited(|m| {
            m.insert("rope_scaling".into(), Value::Null);
        }))
        .unwrap();
        assert!((plain.softmax_scale() - 1.0 / 192f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn transformers_5_rope_parameters_mean_the_same_as_hub_rope_scaling() {
        let hub = parse(LITE_HUB).unwrap();
        let v5 = parse(&edited(|m| {
            let mut rope = m.remove("rope_scaling").unwrap();
            rope.as_object_mut().unwrap().remove("type");
            rope["rope_type"] = "yarn".into();
            rope["rope_theta"] = m.remove("rope_theta").unwrap();
            m.insert("rope_parameters".into(), rope);
        }))
        .unwrap();
        assert_eq!(hub, v5);
    }

    #[test]
    fn yarn_defaults_follow_transformers() {
        let c = parse(&edited(|m| {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": "yarn", "factor": 4, "beta_fast": 0}),
            );
        }))
        .unwrap();
        let yarn = c.rope.yarn.unwrap();
        assert_eq!(
            yarn.original_max_position_embeddings, 163840.0,
            "defaults to max_position_embeddings"
        );
        assert_eq!(
            (yarn.beta_fast, yarn.beta_slow),
            (32.0, 1.0),
            "0 and absent both mean the default"
        );
        // Without both mscales the cos/sin scale is mscale(factor) with mscale 1.
        assert!((yarn.cos_sin_scale() - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn moe_layer_freq_spaces_the_moe_layers() {
        let c = parse(&edited(|m| {
            m.insert("moe_layer_freq".into(), 2.into());
            m.insert("first_k_dense_replace".into(), 3.into());
        }))
        .unwrap();
        let moe_layers: Vec<usize> = (0..10).filter(|&i| c.is_moe_layer(i)).collect();
        assert_eq!(moe_layers, vec![4, 6, 8]);
    }

    #[test]
    fn a_null_routed_expert_count_means_a_dense_model() {
        let c = parse(&edited(|m| {
            m.insert("n_routed_experts".into(), Value::Null);
        }))
        .unwrap();
        assert!(c.moe.is_none());
        assert!(!(0..27).any(|i| c.is_moe_layer(i)));
    }

    #[test]
    fn group_limited_routing_reads_its_groups() {
        let c = parse(&edited(|m| {
            m.insert("topk_method".into(), "group_limited_greedy".into());
            m.insert("n_group".into(), 8.into());
            m.insert("topk_group".into(), 3.into());
        }))
        .unwrap();
        assert_eq!(
            c.moe.unwrap().routing,
            Routing::GroupLimitedGreedy {
                n_group: 8,
                topk_group: 3
            }
        );
    }

    #[test]
    fn errors_name_the_field_and_the_file() {
        let cases: Vec<(String, &str)> = vec![
            (
                edited(|m| {
                    m.remove("kv_lora_rank");
                }),
                "`kv_lora_rank` is missing",
            ),
            (
                edited(|m| {
                    m.remove("q_lora_rank");
                }),
                "`q_lora_rank` is missing",
            ),
            (
                edited(|m| {
                    m.insert("hidden_size".into(), "big".into());
                }),
                "`hidden_size` must be an integer",
            ),
            (
                edited(|m| {
                    m.insert("hidden_size".into(), 0.into());
                }),
                "`hidden_size` must be an integer >= 1",
            ),
            (
                edited(|m| {
                    m.insert("qk_rope_head_dim".into(), 63.into());
                }),
                "`qk_rope_head_dim` must be even",
            ),
            (
                edited(|m| {
                    m.insert("num_experts_per_tok".into(), 65.into());
                }),
                "`num_experts_per_tok` is 65",
            ),
            (
                edited(|m| {
                    m.insert("topk_method".into(), "group_limited_greedy".into());
                    m.insert("n_group".into(), 5.into());
                }),
                "`n_group` is 5, which does not divide",
            ),
            (
                edited(|m| {
                    m.insert("topk_method".into(), "group_limited_greedy".into());
                    m.insert("n_group".into(), 8.into());
                    m.insert("topk_group".into(), 9.into());
                }),
                "`topk_group` is 9, more than n_group",
            ),
            (
                edited(|m| {
                    m.insert("topk_method".into(), "group_limited_greedy".into());
                    m.insert("n_group".into(), 8.into());
                    m.insert("topk_group".into(), 0.into());
                }),
                "`topk_group` must be an integer >= 1",
            ),
            (
                edited(|m| {
                    m.insert("topk_method".into(), "noaux_tc".into());
                }),
                "`topk_method` `noaux_tc` is not supported",
            ),
            (
                edited(|m| {
                    m.insert("scoring_func".into(), "sigmoid".into());
                }),
                "`scoring_func` `sigmoid` is not supported",
            ),
            (
                edited(|m| {
                    m.insert("hidden_act".into(), "gelu".into());
                }),
                "`hidden_act` `gelu` is not supported",
            ),
            (
                edited(|m| {
                    m.insert(
                        "rope_scaling".into(),
                        serde_json::json!({"type": "dynamic", "factor": 2}),
                    );
                }),
                "`rope_scaling.rope_type` `dynamic` is not supported",
            ),
            (
                edited(|m| {
                    m.insert(
                        "rope_scaling".into(),
                        serde_json::json!({"type": "yarn", "factor": "x"}),
                    );
                }),
                "`rope_scaling.factor` must be a number",
            ),
            (
                edited(|m| {
                    m.insert("tie_word_embeddings".into(), 1.into());
                }),
                "`tie_word_embeddings` must be true or false",
            ),
            (
                edited(|m| {
                    m.remove("model_type");
                }),
                "`model_type` is missing",
            ),
            (
                edited(|m| {
                    m.insert("intermediate_size".into(), Value::Null);
                }),
                "`intermediate_size` is required",
            ),
        ];
        for (text, expected) in cases {
            let message = error_text(&text);
            assert!(
                message.starts_with("model/config.json: "),
                "no file in: {message}"
            );
            assert!(
                message.contains(expected),
                "expected `{expected}` in: {message}"
            );
        }
    }

    #[test]
    fn other_model_types_and_bad_json_are_refused_clearly() {
        let llama = edited(|m| {
            m.insert("model_type".into(), "llama".into());
        });
        assert_eq!(
            error_text(&llama),
            "model/config.json: model_type `llama` is not supported; this engine runs `deepseek_v2` checkpoints"
        );
        assert!(error_text("{ not json").starts_with("model/config.json: not valid JSON"));
        assert!(error_text("[1, 2]").contains("the top level must be an object"));
    }
}

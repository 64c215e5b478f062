//! Which type llama-quantize gives each tensor of a `deepseek2` file, for the two mixes the
//! synthetic files offer: Q8_0 and Q4_K_M.
//!
//! Copied from llama.cpp's src/llama-quant.cpp (the version vendored in llama-cpp-python
//! 0.3.36): `tensor_allows_quantization`, `tensor_get_category`, `llama_tensor_get_type_impl`
//! and `tensor_type_fallback`, keeping only the branches these two file types and this
//! architecture reach (no imatrix, no overrides, not Falcon, not a "70B"). The fallback is what
//! gives Lite its mixed files: a row of 1408 or 10944 values is not whole 256-value blocks, so a
//! Q4_K choice becomes Q5_0 and a Q6_K choice Q8_0.

use std::fmt;
use std::str::FromStr;

use crate::config::ModelConfig;
use crate::gguf::TensorType;

/// The weight formats a synthetic GGUF file can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticQuant {
    /// Every quantizable weight Q8_0 (llama-quantize's `Q8_0`).
    Q8_0,
    /// llama-quantize's `Q4_K_M` mix: mostly Q4_K, some Q6_K, and their fallbacks.
    Q4KM,
}

impl SyntheticQuant {
    /// The name llama-quantize gives the file type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4KM => "Q4_K_M",
        }
    }

    /// llama.cpp's `llama_ftype`, stored as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
        }
    }

    fn default_type(self) -> TensorType {
        match self {
            Self::Q8_0 => ggml(Q8_0),
            Self::Q4KM => ggml(Q4_K),
        }
    }
}

impl fmt::Display for SyntheticQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SyntheticQuant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "Q8_0" => Ok(Self::Q8_0),
            "Q4_K" | "Q4_K_M" => Ok(Self::Q4KM),
            _ => Err(format!(
                "unknown quantization `{s}`; use Q4_K (llama.cpp's Q4_K_M mix) or Q8_0"
            )),
        }
    }
}

// ggml's type ids.
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q5_0: u32 = 6;
const Q5_1: u32 = 7;
const Q8_0: u32 = 8;
const Q2_K: u32 = 10;
const Q3_K: u32 = 11;
const Q4_K: u32 = 12;
const Q5_K: u32 = 13;
const Q6_K: u32 = 14;

fn ggml(id: u32) -> TensorType {
    TensorType::from_id(id).expect("a ggml type id")
}

/// llama.cpp's `tensor_category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttentionQkv,
    AttentionKvB,
    AttentionV,
    AttentionK,
    AttentionQ,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

/// `tensor_get_category`: by substrings of the name, first match wins.
fn category(name: &str) -> Category {
    let has = |part: &str| name.contains(part);
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if has("attn_qkv.weight") {
        Category::AttentionQkv
    } else if has("attn_kv_b.weight") {
        Category::AttentionKvB
    } else if has("attn_v.weight") {
        Category::AttentionV
    } else if has("attn_k.weight") {
        Category::AttentionK
    } else if has("attn_q.weight") {
        Category::AttentionQ
    } else if has("attn_output.weight") {
        Category::AttentionOutput
    } else if has("ffn_up") {
        Category::FfnUp
    } else if has("ffn_gate") {
        Category::FfnGate
    } else if has("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// `category_is_attn_v`: the tensors quantization hurts most.
fn is_attention_v_like(category: Category) -> bool {
    matches!(
        category,
        Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB
    )
}

/// `tensor_allows_quantization`, for the names a `deepseek2` file has: 2-D and 3-D weights,
/// not norms and not the router.
fn allows_quantization(name: &str, dims: &[u64]) -> bool {
    dims.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

/// Layers in the first and last eighth, and every third in between, get more bits.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// llama-quantize's choices for one file, in the order its tensors are visited.
pub struct QuantMix {
    quant: SyntheticQuant,
    layers: usize,
    experts: usize,
    /// Whether the file has no `output.weight` (the embedding doubles as the output).
    tied_embeddings: bool,
    attention_v_count: usize,
    attention_v_seen: usize,
    ffn_down_seen: usize,
}

impl QuantMix {
    /// The mix for a model of `config` whose file holds the tensors `names`.
    pub fn new<'a>(
        quant: SyntheticQuant,
        config: &ModelConfig,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut attention_v_count = 0;
        let mut tied_embeddings = true;
        for name in names {
            let category = category(name);
            attention_v_count += usize::from(is_attention_v_like(category));
            tied_embeddings &= category != Category::Output;
        }
        Self {
            quant,
            layers: config.num_hidden_layers,
            experts: config.moe.as_ref().map_or(0, |m| m.n_routed_experts),
            tied_embeddings,
            attention_v_count,
            attention_v_seen: 0,
            ffn_down_seen: 0,
        }
    }

    /// The type of the tensor `name` with ggml dims `dims` (row length first), which llama.cpp's
    /// converter wrote as `converted` (F32 for norms and the router, F16 for other weights).
    /// Call once per tensor, in file order.
    pub fn choose(&mut self, name: &str, dims: &[u64], converted: TensorType) -> TensorType {
        if !allows_quantization(name, dims) {
            return converted;
        }
        let chosen = self.preferred(name, dims);
        fallback(chosen, dims[0])
    }

    /// `llama_tensor_get_type_impl` before shapes are considered.
    fn preferred(&mut self, name: &str, dims: &[u64]) -> TensorType {
        let q4_k_m = self.quant == SyntheticQuant::Q4KM;
        let mut chosen = self.quant.default_type();
        match category(name) {
            Category::Output => chosen = output_type(chosen, dims[0]),
            Category::TokenEmbd if self.tied_embeddings => chosen = output_type(chosen, dims[0]),
            // An untied embedding keeps the file type's default.
            Category::TokenEmbd => {}
            category if is_attention_v_like(category) => {
                if q4_k_m && use_more_bits(self.attention_v_seen, self.attention_v_count) {
                    chosen = ggml(Q6_K);
                }
                if self.experts == 8 {
                    chosen = ggml(Q8_0);
                }
                self.attention_v_seen += 1;
            }
            Category::AttentionK if self.experts == 8 => chosen = ggml(Q8_0),
            Category::FfnDown => {
                let layer = self.ffn_down_layer(name);
                if q4_k_m && use_more_bits(layer, self.layers) {
                    chosen = ggml(Q6_K);
                }
                self.ffn_down_seen += 1;
            }
            Category::AttentionOutput if q4_k_m && self.experts == 8 => chosen = ggml(Q5_K),
            _ => {}
        }
        chosen
    }

    /// The layer llama.cpp counts an ffn_down tensor in: read from the name in MoE models (whose
    /// ffn_down tensors are several per layer), else the count of ffn_down tensors so far.
    fn ffn_down_layer(&self, name: &str) -> usize {
        if self.experts <= 1 {
            return self.ffn_down_seen;
        }
        name.strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|layer| layer.parse().ok())
            .unwrap_or_else(|| panic!("llama-quantize needs a layer in the name `{name}`"))
    }
}

/// The output projection (and a tied embedding): Q8_0 when the default's blocks do not tile its
/// rows, else Q6_K unless the file is Q8_0.
fn output_type(default: TensorType, row_len: u64) -> TensorType {
    if !row_len.is_multiple_of(default.block_len() as u64) {
        ggml(Q8_0)
    } else if default.id() != Q8_0 {
        ggml(Q6_K)
    } else {
        default
    }
}

/// `tensor_type_fallback`: a type whose blocks do not tile a row of `row_len` values gives way to
/// a 32-value type, or to F16 when even that does not tile it.
fn fallback(chosen: TensorType, row_len: u64) -> TensorType {
    if row_len.is_multiple_of(chosen.block_len() as u64) {
        return chosen;
    }
    let smaller = match chosen.id() {
        Q2_K | Q3_K => ggml(Q4_0),
        Q4_K => ggml(Q5_0),
        Q5_K => ggml(Q5_1),
        Q6_K => ggml(Q8_0),
        // Already a 32-value type: nothing smaller to try.
        _ => chosen,
    };
    if row_len.is_multiple_of(smaller.block_len() as u64) {
        smaller
    } else {
        ggml(F16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::lite_config;

    #[test]
    fn more_bits_go_to_the_ends_and_every_third_layer() {
        let chosen: Vec<usize> = (0..27).filter(|&l| use_more_bits(l, 27)).collect();
        assert_eq!(chosen, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26]);
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        let f = |id, row| fallback(ggml(id), row).name();
        assert_eq!(f(Q4_K, 2048), "Q4_K");
        assert_eq!(f(Q4_K, 1408), "Q5_0");
        assert_eq!(f(Q6_K, 10944), "Q8_0");
        assert_eq!(f(Q5_K, 128), "Q5_1");
        assert_eq!(f(Q8_0, 48), "F16");
        assert_eq!(f(Q4_K, 48), "F16");
    }

    #[test]
    fn quant_names_parse_in_any_case() {
        assert_eq!("q4_k".parse(), Ok(SyntheticQuant::Q4KM));
        assert_eq!("Q4_K_M".parse(), Ok(SyntheticQuant::Q4KM));
        assert_eq!("q8_0".parse(), Ok(SyntheticQuant::Q8_0));
        let error = "Q5_1".parse::<SyntheticQuant>().unwrap_err();
        assert!(error.contains("unknown quantization `Q5_1`"), "{error}");
    }

    #[test]
    fn lite_q4_k_m_matches_llama_quantize() {
        let config = lite_config(27);
        let names = ["token_embd.weight", "output.weight"];
        let mut mix = QuantMix::new(SyntheticQuant::Q4KM, &config, names);
        let f16 = ggml(F16);
        let mut t = |name: &str, dims: &[u64]| mix.choose(name, dims, f16).name();
        assert_eq!(t("token_embd.weight", &[2048, 102400]), "Q4_K");
        assert_eq!(t("output.weight", &[2048, 102400]), "Q6_K");
        assert_eq!(t("blk.0.attn_q.weight", &[2048, 3072]), "Q4_K");
        assert_eq!(t("blk.0.attn_k_b.weight", &[128, 512, 16]), "Q5_0");
        assert_eq!(t("blk.0.attn_v_b.weight", &[512, 128, 16]), "Q4_K");
        assert_eq!(t("blk.0.ffn_down.weight", &[10944, 2048]), "Q8_0");
        assert_eq!(t("blk.3.ffn_down_exps.weight", &[1408, 2048, 64]), "Q5_0");
        assert_eq!(t("blk.5.ffn_down_exps.weight", &[1408, 2048, 64]), "Q8_0");
        assert_eq!(t("blk.5.ffn_down_shexp.weight", &[2816, 2048]), "Q6_K");
        assert_eq!(t("blk.4.ffn_down_shexp.weight", &[2816, 2048]), "Q4_K");
        assert_eq!(t("blk.4.ffn_gate_exps.weight", &[2048, 1408, 64]), "Q4_K");
        let f32 = ggml(0);
        assert_eq!(
            mix.choose("blk.4.ffn_gate_inp.weight", &[2048, 64], f32),
            f32
        );
        assert_eq!(mix.choose("blk.4.attn_norm.weight", &[2048], f32), f32);
    }
}

//! A `deepseek2` GGUF file of any DeepSeek-V2 config with seeded random weights, laid out as
//! llama.cpp's converter followed by llama-quantize lays out a real one: the converter's
//! metadata keys (the `*_mla` head sizes included), kv_b split into `attn_k_b` / `attn_v_b`,
//! experts stacked per layer, norms and the router in F32, every other weight in the
//! quantization mix's type (see quant_mix.rs), and a tokenizer in the metadata (vocab.rs).
//!
//! Weights have the spread of a trained model's initialisation (standard deviation
//! 1/sqrt(fan-in); the embedding 1), so activations keep their size through the layers.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use kernels::quant::GgmlType;

use super::quant_mix::{QuantMix, SyntheticQuant};
use super::random_blocks::{Spread, fill, group_shape};
use super::vocab::{MIN_VOCAB, tokenizer_metadata};
use crate::config::{ModelConfig, Routing};
use crate::gguf::{ARCHITECTURE, GgufWriter, MetadataValue, TensorSpec};

/// What was written.
#[derive(Debug, Clone)]
pub struct SyntheticGguf {
    pub bytes: u64,
    /// Tensors per type name ("Q4_K": 50).
    pub tensors_per_type: BTreeMap<&'static str, usize>,
}

/// One tensor of the file before its type is chosen.
struct Planned {
    name: String,
    /// Row-major, as Hugging Face writes shapes.
    shape: Vec<usize>,
    spread: Spread,
    /// What llama.cpp's converter stores it as (`--outtype f16`): F32 for 1-D tensors and the
    /// router, F16 otherwise.
    converted: GgmlType,
}

impl Planned {
    fn weight(name: String, shape: Vec<usize>, fan_in: usize) -> Self {
        Self {
            name,
            shape,
            spread: Spread::Centered {
                std: (fan_in as f32).sqrt().recip(),
            },
            converted: GgmlType::F16,
        }
    }

    fn norm(name: String, len: usize) -> Self {
        Self {
            name,
            shape: vec![len],
            spread: Spread::NearOne,
            converted: GgmlType::F32,
        }
    }
}

/// Pieces of a tensor's data generated and written at a time: large enough to keep every
/// thread busy, small enough never to matter for memory.
const PIECE_BYTES: usize = 32 << 20;

/// Writes `config`'s model with weights drawn from `seed` to `path` as a GGUF file of `quant`'s
/// mix, streaming: memory stays at a few pieces whatever the file's size.
pub fn write_synthetic_gguf(
    path: &Path,
    config: &ModelConfig,
    quant: SyntheticQuant,
    seed: u64,
) -> io::Result<SyntheticGguf> {
    let metadata = metadata(config, quant)?;
    let plan = plan(config);
    let mut mix = QuantMix::new(quant, config, plan.iter().map(|p| p.name.as_str()));
    let mut specs = Vec::with_capacity(plan.len());
    let mut types = Vec::with_capacity(plan.len());
    for planned in &plan {
        let converted = TensorSpec::new(&planned.name, &planned.shape, planned.converted);
        let chosen = mix.choose(&planned.name, &converted.dims, converted.ty);
        let readable = chosen.readable().ok_or_else(|| {
            invalid(format!(
                "llama-quantize's {quant} would store `{}` as {}, which this engine does not read",
                planned.name,
                chosen.name()
            ))
        })?;
        specs.push(TensorSpec::new(&planned.name, &planned.shape, readable));
        types.push(readable);
    }

    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut writer = GgufWriter::create(path, &metadata, &specs).map_err(with_path)?;
    let mut tensors_per_type = BTreeMap::new();
    for ((planned, spec), &ty) in plan.iter().zip(&specs).zip(&types) {
        let len = spec.byte_len().expect("the writer checked every size") as usize;
        write_data(
            &mut writer,
            ty,
            planned.spread,
            stream(seed, &planned.name),
            len,
        )
        .map_err(with_path)?;
        *tensors_per_type.entry(ty.name()).or_insert(0) += 1;
    }
    writer.finish().map_err(with_path)?;
    let bytes = std::fs::metadata(path)?.len();
    Ok(SyntheticGguf {
        bytes,
        tensors_per_type,
    })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Each tensor's own random stream, so tensors do not repeat each other.
fn stream(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    seed ^ fnv
}

/// One tensor's `len` bytes, a piece at a time.
fn write_data(
    writer: &mut GgufWriter<impl io::Write>,
    ty: GgmlType,
    spread: Spread,
    stream: u64,
    len: usize,
) -> io::Result<()> {
    let (_, group_bytes) = group_shape(ty);
    let piece_bytes = PIECE_BYTES / group_bytes * group_bytes;
    let mut buffer = vec![0u8; piece_bytes.min(len)];
    let mut written = 0;
    while written < len {
        let piece = &mut buffer[..piece_bytes.min(len - written)];
        fill(ty, spread, stream, (written / group_bytes) as u64, piece);
        writer.write_tensor_data(piece)?;
        written += piece.len();
    }
    Ok(())
}

/// Every tensor of the file, in the order the converter visits a layer.
fn plan(config: &ModelConfig) -> Vec<Planned> {
    let hidden = config.hidden_size;
    let heads = config.num_attention_heads;
    let kv_lora = config.kv_lora_rank;
    let mut plan = vec![Planned {
        spread: Spread::Centered { std: 1.0 },
        ..Planned::weight(
            "token_embd.weight".into(),
            vec![config.vocab_size, hidden],
            hidden,
        )
    }];
    for layer in 0..config.num_hidden_layers {
        let blk = |name: &str| format!("blk.{layer}.{name}.weight");
        plan.push(Planned::norm(blk("attn_norm"), hidden));
        let q_rows = heads * config.qk_head_dim();
        match config.q_lora_rank {
            Some(rank) => {
                plan.push(Planned::weight(blk("attn_q_a"), vec![rank, hidden], hidden));
                plan.push(Planned::norm(blk("attn_q_a_norm"), rank));
                plan.push(Planned::weight(blk("attn_q_b"), vec![q_rows, rank], rank));
            }
            None => plan.push(Planned::weight(blk("attn_q"), vec![q_rows, hidden], hidden)),
        }
        plan.push(Planned::weight(
            blk("attn_kv_a_mqa"),
            vec![kv_lora + config.qk_rope_head_dim, hidden],
            hidden,
        ));
        plan.push(Planned::norm(blk("attn_kv_a_norm"), kv_lora));
        // kv_b_proj [heads * (nope + v), kv_lora] as the converter splits it: W_UK transposed
        // per head, then W_UV; both multiply the latent, so kv_lora is their fan-in.
        plan.push(Planned::weight(
            blk("attn_k_b"),
            vec![heads, kv_lora, config.qk_nope_head_dim],
            kv_lora,
        ));
        plan.push(Planned::weight(
            blk("attn_v_b"),
            vec![heads, config.v_head_dim, kv_lora],
            kv_lora,
        ));
        let attention_width = heads * config.v_head_dim;
        plan.push(Planned::weight(
            blk("attn_output"),
            vec![hidden, attention_width],
            attention_width,
        ));
        plan.push(Planned::norm(blk("ffn_norm"), hidden));
        match config.moe.as_ref().filter(|_| config.is_moe_layer(layer)) {
            Some(moe) => {
                let (experts, width) = (moe.n_routed_experts, moe.moe_intermediate_size);
                plan.push(Planned {
                    converted: GgmlType::F32,
                    ..Planned::weight(blk("ffn_gate_inp"), vec![experts, hidden], hidden)
                });
                for part in ["ffn_gate_exps", "ffn_up_exps"] {
                    plan.push(Planned::weight(
                        blk(part),
                        vec![experts, width, hidden],
                        hidden,
                    ));
                }
                plan.push(Planned::weight(
                    blk("ffn_down_exps"),
                    vec![experts, hidden, width],
                    width,
                ));
                if moe.n_shared_experts > 0 {
                    let shared = moe.n_shared_experts * width;
                    plan.extend(dense_mlp(&blk, "_shexp", hidden, shared));
                }
            }
            None => plan.extend(dense_mlp(&blk, "", hidden, config.intermediate_size)),
        }
    }
    plan.push(Planned::norm("output_norm.weight".into(), hidden));
    if !config.tie_word_embeddings {
        plan.push(Planned::weight(
            "output.weight".into(),
            vec![config.vocab_size, hidden],
            hidden,
        ));
    }
    plan
}

/// A SwiGLU MLP's gate, up and down projections (`suffix` "_shexp" for shared experts).
fn dense_mlp(
    blk: &dyn Fn(&str) -> String,
    suffix: &str,
    hidden: usize,
    width: usize,
) -> [Planned; 3] {
    [
        Planned::weight(
            blk(&format!("ffn_gate{suffix}")),
            vec![width, hidden],
            hidden,
        ),
        Planned::weight(blk(&format!("ffn_up{suffix}")), vec![width, hidden], hidden),
        Planned::weight(
            blk(&format!("ffn_down{suffix}")),
            vec![hidden, width],
            width,
        ),
    ]
}

/// The converter's `deepseek2` keys for `config`, llama-quantize's file type, and the
/// tokenizer. Refuses what a GGUF file cannot say, so that reading the file gives `config`
/// back.
fn metadata(
    config: &ModelConfig,
    quant: SyntheticQuant,
) -> io::Result<Vec<(String, MetadataValue)>> {
    if config.attention_bias || config.mlp_bias {
        return Err(invalid(
            "llama.cpp's deepseek2 files have no biases; a synthetic file cannot either".into(),
        ));
    }
    if config.vocab_size < MIN_VOCAB {
        return Err(invalid(format!(
            "a synthetic vocabulary needs at least {MIN_VOCAB} tokens, not {}",
            config.vocab_size
        )));
    }
    let u32_of = |n: usize| MetadataValue::U32(n as u32);
    let f32_of = |x: f64| MetadataValue::F32(x as f32);
    let key = |k: &str| format!("{ARCHITECTURE}.{k}");
    let mut m: Vec<(String, MetadataValue)> = vec![
        (
            "general.architecture".into(),
            MetadataValue::String(ARCHITECTURE.into()),
        ),
        ("general.type".into(), MetadataValue::String("model".into())),
        (
            "general.name".into(),
            MetadataValue::String(format!("synthetic DeepSeek-V2 ({quant})")),
        ),
        (
            "general.file_type".into(),
            MetadataValue::U32(quant.file_type()),
        ),
        ("general.quantization_version".into(), MetadataValue::U32(2)),
        ("general.alignment".into(), MetadataValue::U32(32)),
        (key("block_count"), u32_of(config.num_hidden_layers)),
        (
            key("context_length"),
            u32_of(config.max_position_embeddings),
        ),
        (key("embedding_length"), u32_of(config.hidden_size)),
        (key("feed_forward_length"), u32_of(config.intermediate_size)),
        (
            key("attention.head_count"),
            u32_of(config.num_attention_heads),
        ),
        // MLA runs as multi-query attention over the latent: one shared "KV head".
        (key("attention.head_count_kv"), MetadataValue::U32(1)),
        (key("rope.freq_base"), f32_of(config.rope.theta)),
        (
            key("attention.layer_norm_rms_epsilon"),
            f32_of(config.rms_norm_eps),
        ),
        (key("vocab_size"), u32_of(config.vocab_size)),
        // The converter writes this only when set, but llama.cpp asks for it from every file
        // whose layer count is not Lite's 26 or 27; 0 means no query bottleneck to both readers.
        (
            key("attention.q_lora_rank"),
            u32_of(config.q_lora_rank.unwrap_or(0)),
        ),
        (key("attention.kv_lora_rank"), u32_of(config.kv_lora_rank)),
        // The absorbed (MQA) view's head sizes, then the real ones.
        (
            key("attention.key_length"),
            u32_of(config.kv_lora_rank + config.qk_rope_head_dim),
        ),
        (key("attention.value_length"), u32_of(config.kv_lora_rank)),
        (
            key("attention.key_length_mla"),
            u32_of(config.qk_head_dim()),
        ),
        (key("attention.value_length_mla"), u32_of(config.v_head_dim)),
        (key("rope.dimension_count"), u32_of(config.qk_rope_head_dim)),
    ];
    m.extend(rope_scaling(config)?.into_iter().map(|(k, v)| (key(k), v)));
    if let Some(moe) = &config.moe {
        if moe.moe_layer_freq != 1 {
            return Err(invalid(format!(
                "GGUF has no moe_layer_freq: every layer from the first MoE one is MoE (found \
                 moe_layer_freq {})",
                moe.moe_layer_freq
            )));
        }
        m.extend([
            (
                key("leading_dense_block_count"),
                u32_of(moe.first_k_dense_replace),
            ),
            (
                key("expert_feed_forward_length"),
                u32_of(moe.moe_intermediate_size),
            ),
            (key("expert_count"), u32_of(moe.n_routed_experts)),
            (key("expert_used_count"), u32_of(moe.num_experts_per_tok)),
            (key("expert_shared_count"), u32_of(moe.n_shared_experts)),
            (
                key("expert_weights_scale"),
                f32_of(moe.routed_scaling_factor),
            ),
        ]);
        if moe.norm_topk_prob {
            m.push((key("expert_weights_norm"), MetadataValue::Bool(true)));
        }
        if let Routing::GroupLimitedGreedy {
            n_group,
            topk_group,
        } = moe.routing
        {
            m.push((key("expert_group_count"), u32_of(n_group)));
            m.push((key("expert_group_used_count"), u32_of(topk_group)));
        }
    }
    m.extend(tokenizer_metadata(config.vocab_size));
    Ok(m)
}

/// YaRN as the converter keeps it: 0.1 * mscale_all_dim as the log multiplier, mscale taken to
/// equal mscale_all_dim (true of every DeepSeek-V2 release).
fn rope_scaling(config: &ModelConfig) -> io::Result<Vec<(&'static str, MetadataValue)>> {
    let Some(yarn) = &config.rope.yarn else {
        return Ok(vec![]);
    };
    let unsayable = yarn.attention_factor.is_some()
        || !yarn.truncate
        || yarn.mscale_all_dim.is_none()
        || yarn.mscale != yarn.mscale_all_dim;
    if unsayable {
        return Err(invalid(format!(
            "GGUF keeps YaRN's mscale_all_dim only (mscale equal to it, no attention_factor, \
             truncated); this config's YaRN is {yarn:?}"
        )));
    }
    let mscale_all_dim = yarn.mscale_all_dim.expect("checked above");
    Ok(vec![
        ("rope.scaling.type", MetadataValue::String("yarn".into())),
        (
            "rope.scaling.factor",
            MetadataValue::F32(yarn.factor as f32),
        ),
        (
            "rope.scaling.original_context_length",
            MetadataValue::U32(yarn.original_max_position_embeddings as u32),
        ),
        (
            "rope.scaling.yarn_beta_fast",
            MetadataValue::F32(yarn.beta_fast as f32),
        ),
        (
            "rope.scaling.yarn_beta_slow",
            MetadataValue::F32(yarn.beta_slow as f32),
        ),
        (
            "rope.scaling.yarn_log_multiplier",
            MetadataValue::F32((0.1 * mscale_all_dim) as f32),
        ),
    ])
}

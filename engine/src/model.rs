//! DeepSeek-V2: Multi-head Latent Attention + DeepSeekMoE, in one file, top to bottom.
//!
//! Shapes are written [rows, columns] for one sequence (no batch dimension):
//! T = new tokens this step, S = all tokens attended to (cached + new), H = heads,
//! L = kv_lora_rank, R = qk_rope_head_dim, N = qk_nope_head_dim, V = v_head_dim.
//!
//! The cache holds only the latent (normalised c_kv and roped k_pe). Attention runs in one of two
//! mathematically equal forms, chosen per step by arithmetic cost:
//! - expanded: K and V are rebuilt from the latent with kv_b_proj, then ordinary attention;
//! - absorbed: W_UK is folded into the query and W_UV applied after, so attention runs over the
//!   latent itself (cheap for few new tokens over a long cache: the decode case).

use candle_core::{D, DType, Device, Tensor};
use kernels::causal_attention::ExpandedAttention;
use kernels::cuda::MlaShape;
use kernels::paged_attention::{LatentPages, LatentQueries};
use kernels::routing::{GroupLimit, Weighting, route_token};
use rayon::prelude::*;

use crate::absorbed::{AbsorbedWeights, HeadShapes, interleaved_per_head};
use crate::config::{ModelConfig, MoeConfig, Routing};
use crate::device_blocks::DeviceBlocks;
use crate::embedding::Embedding;
use crate::error::{EngineError, Result};
use crate::latent_attention::LatentAttention;
use crate::latent_cache::LatentCache;
use crate::linear::{Linear, LinearWeight, quantized_matmul};
use crate::page_pool::{DEFAULT_PAGE_TOKENS, PageLayout, PagePool};
use crate::quantized::QuantizedWeight;
use crate::rope::Rope;
use crate::routing_trace;
use crate::stacked_experts::{ExpertMatrix, RoutingRule, StackedExperts};
use crate::weight_arena::WeightArena;
use crate::weights::{AbsorbedHalves, WeightSource};
use kernels::quant::{GgmlType, matvec_many_quant};

/// What [`Model::take_the_device_road`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRoad {
    /// MoE layers whose routed experts run stacked.
    pub stacked_moe_layers: usize,
    /// Projections whose weights are GGUF blocks on the device, the routed experts' included
    /// (counted before they are stacked).
    pub projections_in_blocks: usize,
}

/// Which attention form a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionForm {
    /// The cheaper of the two for each step's span (the default).
    #[default]
    Auto,
    Expanded,
    Absorbed,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every input position: [T, vocab].
    All,
    /// Only the last input position: [1, vocab] (generation; saves the lm_head over the prompt).
    Last,
}

pub struct Model {
    config: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
    attention_form: AttentionForm,
    prefill_chunk: usize,
    /// How a step keeps its latent rows and attends over them: through the pages' device slots
    /// and ops (a GPU), or on the host pages directly (the CPU).
    road: Road,
}

/// Where a step's latent rows and attention live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Road {
    /// The host pages, read in place by the CPU kernels.
    Host,
    /// The pages' device slots (rows written there first, committed to the host pages once per
    /// step) and candle ops with our attention op; the GPU's road.
    Device,
}

/// How a chunk of a forward pass ended.
enum ChunkOutcome {
    /// Every layer ran; the logits, if they were wanted.
    Done(Option<Tensor>),
    /// `stop` said yes before some layer; nothing was committed.
    Stopped,
}

/// Tokens per prefill chunk: large enough for efficient matmuls, small enough that a 32K-token
/// prompt never builds a 32K x 32K score matrix.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

impl Model {
    /// Builds the model from `source`, converting every weight to `dtype` on `device`.
    pub fn load(
        config: ModelConfig,
        source: &dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu() && dtype == DType::BF16 {
            return Err(EngineError::Unsupported(
                "bf16 compute needs a GPU; on the CPU use f32 or f16 (bf16 weights are converted)"
                    .into(),
            ));
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(EngineError::Unsupported(format!(
                "compute dtype {dtype:?}: use f32, f16 or bf16"
            )));
        }
        let w = Loader {
            source,
            dtype,
            device,
            arena: WeightArena::new(),
        };
        let embedding_name = "model.embed_tokens.weight";
        let embedding_shape = [config.vocab_size, config.hidden_size];
        // A table tied to the output projection is a dense matrix for it anyway.
        let embed_tokens = match source.quantized(embedding_name, &embedding_shape)? {
            Some(stored) if device.is_cpu() && !config.tie_word_embeddings => {
                Embedding::Stored(stored)
            }
            _ => Embedding::Dense(w.tensor(embedding_name, &embedding_shape)?),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(&w, &config, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&w, "model.norm", config.hidden_size, config.rms_norm_eps)?;
        // Untied, the output projection is a linear like any other: a quantized one stays
        // quantized (it is the largest matrix a decoded token reads).
        let lm_head =
            if let (true, Embedding::Dense(table)) = (config.tie_word_embeddings, &embed_tokens) {
                Linear::new(table.clone(), None)
            } else {
                w.linear("lm_head", config.vocab_size, config.hidden_size, false)?
            };
        Ok(Self {
            rope: Rope::new(&config.rope, config.qk_rope_head_dim),
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            dtype,
            device: device.clone(),
            attention_form: AttentionForm::Auto,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            road: if device.is_cpu() {
                Road::Host
            } else {
                Road::Device
            },
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Forces one attention form (tests prove both forms agree; benchmarks compare them).
    pub fn set_attention_form(&mut self, form: AttentionForm) {
        self.attention_form = form;
    }

    /// Sets the prefill chunk length (at least 1).
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// Runs the model as a GPU load does, on whatever device it is: the latent rows through
    /// the pages' device slots, attention through the device's ops, weights in GGUF blocks kept
    /// in the file's order and multiplied by the GPU's block products, and every MoE layer's
    /// routed experts stacked where their weights (f32, bf16 or blocks of one type) and routing
    /// allow. On the CPU our ops run the kernels' CPU references: tests hold the GPU's road to
    /// the reference logits this way (it is slow there; nothing else should take it).
    pub fn take_the_device_road(&mut self) -> Result<DeviceRoad> {
        self.road = Road::Device;
        let device = self.device.clone();
        let mut projections_in_blocks = 0;
        for linear in self.linears_mut() {
            linear.keep_blocks_on(&device)?;
            if matches!(linear.weight, LinearWeight::Blocks(_)) {
                projections_in_blocks += 1;
            }
        }
        Ok(DeviceRoad {
            stacked_moe_layers: self.stack_experts()?,
            projections_in_blocks,
        })
    }

    /// The formats ("Q8_0", "F32", "BF16"...) of each stacked MoE layer's gate/up and down
    /// weights, layer by layer.
    pub fn stacked_expert_formats(&self) -> Vec<(&'static str, &'static str)> {
        self.layers
            .iter()
            .filter_map(|layer| match &layer.feed_forward {
                FeedForward::Experts(Moe {
                    experts: RoutedExperts::Stacked(stacked),
                    ..
                }) => {
                    let (gate_up, down) = stacked.formats();
                    Some((gate_up.name(), down.name()))
                }
                _ => None,
            })
            .collect()
    }

    /// Every projection of the model, the routed experts' while they are not stacked.
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut linears = vec![&mut self.lm_head];
        for layer in &mut self.layers {
            linears.extend(layer.linears_mut());
        }
        linears
    }

    fn stack_experts(&mut self) -> Result<usize> {
        let mut stacked = 0;
        for layer in &mut self.layers {
            if let FeedForward::Experts(moe) = &mut layer.feed_forward
                && moe.stack_experts()?
            {
                stacked += 1;
            }
        }
        Ok(stacked)
    }

    /// An empty latent cache for this model.
    pub fn new_cache(&self) -> LatentCache {
        LatentCache::new(PagePool::new(self.page_layout(DEFAULT_PAGE_TOKENS), None))
    }

    /// How this model's latents are laid out in pages of `page_tokens` tokens.
    pub fn page_layout(&self, page_tokens: usize) -> PageLayout {
        PageLayout::for_model(&self.config, page_tokens)
    }

    /// Bytes the latent cache takes per token.
    /// The cache keeps f32 latents on the CPU whatever the compute dtype.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.kv_bytes_per_token(std::mem::size_of::<f32>())
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their latents to `cache`, and
    /// returns f32 logits. Long inputs run in chunks of `prefill_chunk` tokens, so scores never
    /// need more than heads x chunk x context values. On error the cache keeps its previous length.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut LatentCache,
        logits: Logits,
    ) -> Result<Tensor> {
        let logits = self.forward_until(tokens, cache, logits, &|| false)?;
        Ok(logits.expect("never stopped"))
    }

    /// [`Model::forward`] that asks `stop` before every chunk and every layer, and returns
    /// `None` when it says yes. The chunks already run stay in the cache (their latents are
    /// valid); the chunk it stopped in is dropped (the cache keeps the length it had before it).
    /// Asking per layer bounds the wait for a stale request to one layer of one chunk, not a
    /// whole chunk (on a CPU, seconds for a 512-token chunk of a 27-layer model).
    pub fn forward_until(
        &self,
        tokens: &[u32],
        cache: &mut LatentCache,
        logits: Logits,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("no tokens to run".into()));
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(EngineError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.config.vocab_size
            )));
        }
        let start = cache.len();
        cache.reserve(tokens.len())?;
        let chunks: Vec<&[u32]> = tokens.chunks(self.prefill_chunk).collect();
        let mut rows = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            if stop() {
                return Ok(None);
            }
            let wanted = match logits {
                Logits::All => Some(Logits::All),
                Logits::Last if i + 1 == chunks.len() => Some(Logits::Last),
                Logits::Last => None,
            };
            match self.forward_chunk(chunk, cache, wanted, stop) {
                Ok(ChunkOutcome::Stopped) => return Ok(None),
                Ok(ChunkOutcome::Done(chunk_logits)) => rows.extend(chunk_logits),
                Err(e) => {
                    cache.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(Some(Tensor::cat(&rows, 0)?))
    }

    /// One chunk at positions `cache.len()..`; commits its latents; logits only if `wanted`.
    /// Asks `stop` before each layer: a chunk stopped part way commits nothing (the latents its
    /// first layers wrote lie past the cache's length, where the next run overwrites them).
    fn forward_chunk(
        &self,
        tokens: &[u32],
        cache: &mut LatentCache,
        wanted: Option<Logits>,
        stop: &dyn Fn() -> bool,
    ) -> Result<ChunkOutcome> {
        let start = cache.len();
        let len = tokens.len();
        let mut hidden = self.embed_tokens.lookup(tokens, self.dtype, &self.device)?;
        let step = Step::new(self, start, len)?;
        for (index, layer) in self.layers.iter().enumerate() {
            if stop() {
                cache.discard_device_writes();
                return Ok(ChunkOutcome::Stopped);
            }
            hidden = layer.forward(&hidden, index, cache, &step)?;
        }
        let logits = match wanted {
            None => None,
            Some(which) => {
                let hidden = match which {
                    Logits::All => hidden,
                    Logits::Last => hidden.narrow(0, len - 1, 1)?,
                };
                let hidden = self.norm.forward(&hidden)?;
                Some(self.lm_head.forward(&hidden)?.to_dtype(DType::F32)?)
            }
        };
        // After the logits are queued, so that the one wait for the device covers them too.
        cache.commit_device_writes()?;
        cache.set_len(start + len);
        Ok(ChunkOutcome::Done(logits))
    }

    /// Weight bytes one decoded token reads (embedding row, attention, the dense MLP or the
    /// router + shared + top-k routed experts, lm_head): the numerator of achieved bandwidth.
    pub fn weight_bytes_per_token(&self) -> usize {
        let element = self.dtype.size_in_bytes();
        let c = &self.config;
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.bytes_read_per_token(c, element))
            .sum();
        2 * c.hidden_size * element + self.lm_head.bytes() + layers
    }

    /// Where the model runs and what it holds, for the log: "cuda:0, bf16 compute, 9.61 GB of
    /// weights" (a quantized file keeps its blocks, so its size shows here).
    pub fn summary(&self) -> String {
        let device = crate::device::device_name(&self.device);
        let dtype = format!("{:?}", self.dtype).to_lowercase();
        format!(
            "{device}, {dtype} compute, {:.2} GB of weights",
            self.weight_bytes() as f64 / 1e9
        )
    }

    /// Every weight's bytes.
    pub fn weight_bytes(&self) -> usize {
        let mut total =
            self.embed_tokens.bytes() + self.norm.weight.elem_count() * self.dtype.size_in_bytes();
        if !self.config.tie_word_embeddings {
            total += self.lm_head.bytes();
        }
        total
            + self
                .layers
                .iter()
                .map(DecoderLayer::weight_bytes)
                .sum::<usize>()
    }
}

/// What every layer of one forward step shares: positions, rope tables, the causal mask.
struct Step {
    start: usize,
    len: usize,
    cos: Tensor,
    sin: Tensor,
    /// [T, S] additive mask, `None` when every query may see every key (a single new token).
    mask: Option<Tensor>,
    form: AttentionForm,
    road: Road,
}

impl Step {
    fn new(model: &Model, start: usize, len: usize) -> Result<Self> {
        let (cos, sin) = model.rope.tables(start, len, model.dtype, &model.device)?;
        let total = start + len;
        let mask = if len > 1 {
            let values: Vec<f32> = (0..len)
                .flat_map(|i| {
                    (0..total).map(move |j| {
                        if j > start + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(values, (len, total), &model.device)?.to_dtype(model.dtype)?)
        } else {
            None
        };
        Ok(Self {
            start,
            len,
            cos,
            sin,
            mask,
            form: model.attention_form,
            road: model.road,
        })
    }
}

/// Converts weights to the compute dtype and device as they are loaded.
struct Loader<'a> {
    source: &'a dyn WeightSource,
    dtype: DType,
    device: &'a Device,
    /// Where rearranged weights go.
    arena: WeightArena,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.tensor_as(name, shape, self.dtype)
    }

    fn tensor_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(self
            .source
            .tensor(name, shape)?
            .to_dtype(dtype)?
            .to_device(self.device)?)
    }

    /// A projection; a weight stored in a block format (Q8_0, Q4_K...) stays in it, on the CPU
    /// rearranged for its kernels, on a GPU as the file holds it.
    fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        if let Some(weight) = self.source.quantized(&name, &[out_dim, in_dim])?
            && weight.ty.block_len() > 1
        {
            if !self.device.is_cpu() {
                // A GPU keeps the file's blocks too: our kernels read them.
                let blocks = DeviceBlocks::upload(&weight, self.device)?;
                return Ok(Linear {
                    weight: LinearWeight::Blocks(vec![blocks]),
                    bias,
                });
            }
            let weight = self.rearranged(weight, |w| w.interleaved(&self.arena));
            return Ok(Linear::quantized(weight, bias));
        }
        Ok(Linear::new(self.tensor(&name, &[out_dim, in_dim])?, bias))
    }

    /// MLA's absorbed weights as the file stores them, on the CPU, when they have the model's
    /// head shapes (kv_b_proj `name`'s own shape is checked when kv_b is loaded).
    fn absorbed_halves(&self, name: &str, shapes: HeadShapes) -> Result<Option<AbsorbedWeights>> {
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let Some(AbsorbedHalves { uk_t, uv }) = self.source.absorbed_halves(name)? else {
            return Ok(None);
        };
        // uv's columns fix kv_lora, so uk_t's rows fix the heads.
        let fits = (uk_t.rows, uk_t.cols) == (shapes.heads * shapes.kv_lora, shapes.nope)
            && (uv.rows, uv.cols) == (shapes.heads * shapes.v_dim, shapes.kv_lora);
        Ok(fits.then(|| AbsorbedWeights::Quantized {
            uk_t: self.rearranged(uk_t, |w| {
                interleaved_per_head(w, shapes.kv_lora, &self.arena)
            }),
            uv: self.rearranged(uv, |w| interleaved_per_head(w, shapes.v_dim, &self.arena)),
        }))
    }

    /// `weight` as `rearrange` leaves it; when that made a copy of its own, the source may drop
    /// the stored bytes from memory (a mapped file's pages would otherwise count twice).
    fn rearranged(
        &self,
        weight: QuantizedWeight,
        rearrange: impl FnOnce(QuantizedWeight) -> QuantizedWeight,
    ) -> QuantizedWeight {
        let stored = weight.clone();
        let kept = rearrange(weight);
        if kept.layout != stored.layout {
            self.source.done_with(stored.bytes());
        }
        kept
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &Loader, prefix: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(&format!("{prefix}.weight"), &[size])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// SwiGLU MLP: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul.
struct Mlp {
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
}

impl Mlp {
    fn load(
        w: &Loader,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self> {
        let gate = w.linear(&format!("{prefix}.gate_proj"), intermediate, hidden, bias)?;
        let up = w.linear(&format!("{prefix}.up_proj"), intermediate, hidden, bias)?;
        Ok(Self {
            gate_up: Linear::stack(vec![gate, up])?,
            down: w.linear(&format!("{prefix}.down_proj"), hidden, intermediate, bias)?,
            intermediate,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu()
            && let Some((gate_up, down)) = self.quantized_parts()
        {
            let (n, hidden) = x.dims2()?;
            let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let y = self.forward_quantized(gate_up, down, &input, n);
            return Ok(Tensor::from_vec(y, (n, hidden), x.device())?.to_dtype(x.dtype())?);
        }
        let gate_up = self.gate_up.forward(x)?;
        let gate = gate_up.narrow(D::Minus1, 0, self.intermediate)?;
        let up = gate_up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }

    /// [n, hidden] f32 rows through [`Self::quantized_parts`] on the CPU, on `Vec`s: the gate
    /// and up products, silu(gate) * up in parallel over rows, the down product.
    fn forward_quantized(
        &self,
        gate_up: &[QuantizedWeight],
        down: &[QuantizedWeight],
        input: &[f32],
        n: usize,
    ) -> Vec<f32> {
        let width = self.intermediate;
        let activated = match gate_up {
            // Gate and up stored apart (a GGUF file's ffn_gate and ffn_up): each product in its
            // own buffer, the gate's then turned into the activations in place. One [n, 2 width]
            // buffer with the two side by side took a copy of both, and at a dense layer's
            // width and a 512-token prompt (45 MB) it came fresh from the kernel, zeroed, on
            // every call: a third of a prompt's page faults.
            [gate, up] if gate.rows == width && up.rows == width => {
                let mut gate = quantized_matmul(std::slice::from_ref(gate), input, n);
                let up = quantized_matmul(std::slice::from_ref(up), input, n);
                gate.par_chunks_mut(width)
                    .zip(up.par_chunks(width))
                    .for_each(|(gate, up)| silu_gate_in_place_times_up(gate, up));
                gate
            }
            _ => {
                let gate_up = quantized_matmul(gate_up, input, n);
                let mut activated = vec![0f32; n * width];
                activated
                    .par_chunks_mut(width)
                    .zip(gate_up.par_chunks(2 * width))
                    .for_each(|(out, row)| silu_gate_times_up(row, out));
                activated
            }
        };
        quantized_matmul(down, &activated, n)
    }

    /// Every MLP's [`Self::quantized_parts`], or `None` when some MLP's weights are not all in
    /// block formats.
    fn all_quantized_parts<'a>(
        mlps: impl Iterator<Item = &'a Mlp>,
    ) -> Option<Vec<(&'a [QuantizedWeight], &'a [QuantizedWeight])>> {
        mlps.map(Mlp::quantized_parts).collect()
    }

    fn bytes(&self) -> usize {
        self.gate_up.bytes() + self.down.bytes()
    }

    /// The gate and up matrices (in that order of rows) and the down matrices, when every one
    /// is in a block format and nothing adds a bias: what the fused decode of a MoE layer takes.
    fn quantized_parts(&self) -> Option<(&[QuantizedWeight], &[QuantizedWeight])> {
        match (&self.gate_up, &self.down) {
            (
                Linear {
                    weight: LinearWeight::Quantized(gate_up),
                    bias: None,
                },
                Linear {
                    weight: LinearWeight::Quantized(down),
                    bias: None,
                },
            ) => Some((gate_up, down)),
            _ => None,
        }
    }
}

/// silu(gate) * up into `out`, for one row `[gate | up]` of the gate/up product (each half as
/// long as `out`).
fn silu_gate_times_up(gate_up: &[f32], out: &mut [f32]) {
    let (gate, up) = gate_up.split_at(out.len());
    out.copy_from_slice(gate);
    silu_gate_in_place_times_up(out, up);
}

/// silu(gate) * up, written over `gate`.
fn silu_gate_in_place_times_up(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

enum FeedForward {
    Dense(Mlp),
    Experts(Moe),
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    attention: Mla,
    post_attention_layernorm: RmsNorm,
    feed_forward: FeedForward,
}

impl DecoderLayer {
    /// The layer's projections, the routed experts' while they are not stacked.
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let attention = &mut self.attention;
        let mut linears = match &mut attention.query {
            QueryProjection::Direct(query) => vec![query],
            QueryProjection::LowRank { down, up, .. } => vec![down, up],
        };
        linears.extend([
            &mut attention.kv_a,
            &mut attention.kv_b,
            &mut attention.o_proj,
        ]);
        match &mut self.feed_forward {
            FeedForward::Dense(mlp) => linears.extend([&mut mlp.gate_up, &mut mlp.down]),
            FeedForward::Experts(moe) => {
                linears.push(&mut moe.router);
                if let RoutedExperts::Each(experts) = &mut moe.experts {
                    for mlp in experts {
                        linears.extend([&mut mlp.gate_up, &mut mlp.down]);
                    }
                }
                if let Some(shared) = &mut moe.shared {
                    linears.extend([&mut shared.gate_up, &mut shared.down]);
                }
            }
        }
        linears
    }

    fn load(w: &Loader, c: &ModelConfig, index: usize) -> Result<Self> {
        let prefix = format!("model.layers.{index}");
        let feed_forward = match &c.moe {
            Some(moe) if c.is_moe_layer(index) => {
                FeedForward::Experts(Moe::load(w, c, moe, &prefix)?)
            }
            _ => FeedForward::Dense(Mlp::load(
                w,
                &format!("{prefix}.mlp"),
                c.hidden_size,
                c.intermediate_size,
                c.mlp_bias,
            )?),
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(
                w,
                &format!("{prefix}.input_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            attention: Mla::load(w, c, &format!("{prefix}.self_attn"))?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{prefix}.post_attention_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            feed_forward,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        index: usize,
        cache: &mut LatentCache,
        step: &Step,
    ) -> Result<Tensor> {
        let attended =
            self.attention
                .forward(&self.input_layernorm.forward(x)?, index, cache, step)?;
        let x = (x + attended)?;
        let normed = self.post_attention_layernorm.forward(&x)?;
        let mixed = match &self.feed_forward {
            FeedForward::Dense(mlp) => mlp.forward(&normed)?,
            FeedForward::Experts(moe) => moe.forward(&normed)?,
        };
        Ok((x + mixed)?)
    }

    fn weight_bytes(&self) -> usize {
        let norms = (self.input_layernorm.weight.elem_count()
            + self.post_attention_layernorm.weight.elem_count())
            * self.input_layernorm.weight.dtype().size_in_bytes();
        let feed_forward = match &self.feed_forward {
            FeedForward::Dense(mlp) => mlp.bytes(),
            FeedForward::Experts(moe) => moe.weight_bytes(),
        };
        norms + self.attention.weight_bytes() + feed_forward
    }

    fn bytes_read_per_token(&self, c: &ModelConfig, element: usize) -> usize {
        let norms = 2 * c.hidden_size * element;
        let feed_forward = match &self.feed_forward {
            FeedForward::Dense(mlp) => mlp.bytes(),
            FeedForward::Experts(moe) => moe.bytes_read_per_token(),
        };
        norms + self.attention.bytes_read_per_token() + feed_forward
    }
}

/// How queries are projected: directly (V2-Lite) or through a low-rank bottleneck (V2).
enum QueryProjection {
    Direct(Linear),
    LowRank {
        down: Linear,
        norm: RmsNorm,
        up: Linear,
    },
}

/// Epsilon of q_a_layernorm and kv_a_layernorm. DeepSeek's code and transformers both build these
/// two norms with the RMSNorm default, not with `rms_norm_eps` (which only the block norms use).
const LATENT_NORM_EPS: f64 = 1e-6;

/// Multi-head Latent Attention.
struct Mla {
    query: QueryProjection,
    /// x -> [c_kv (L) | k_pe (R)]
    kv_a: Linear,
    kv_a_norm: RmsNorm,
    /// c_kv -> per head [k_nope (N) | v (V)], for the expanded form.
    kv_b: Linear,
    /// W_UK and W_UV per head, for the absorbed form.
    absorbed: AbsorbedWeights,
    o_proj: Linear,
    heads: usize,
    nope: usize,
    rope: usize,
    v_dim: usize,
    kv_lora: usize,
    scale: f64,
}

impl Mla {
    fn load(w: &Loader, c: &ModelConfig, prefix: &str) -> Result<Self> {
        let (heads, nope, rope, v_dim, kv_lora) = (
            c.num_attention_heads,
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
            c.kv_lora_rank,
        );
        let query_width = heads * (nope + rope);
        let query = match c.q_lora_rank {
            None => QueryProjection::Direct(w.linear(
                &format!("{prefix}.q_proj"),
                query_width,
                c.hidden_size,
                false,
            )?),
            Some(rank) => QueryProjection::LowRank {
                down: w.linear(
                    &format!("{prefix}.q_a_proj"),
                    rank,
                    c.hidden_size,
                    c.attention_bias,
                )?,
                norm: RmsNorm::load(w, &format!("{prefix}.q_a_layernorm"), rank, LATENT_NORM_EPS)?,
                up: w.linear(&format!("{prefix}.q_b_proj"), query_width, rank, false)?,
            },
        };
        let kv_b = w.linear(
            &format!("{prefix}.kv_b_proj"),
            heads * (nope + v_dim),
            kv_lora,
            false,
        )?;
        let kv_a = w.linear(
            &format!("{prefix}.kv_a_proj_with_mqa"),
            kv_lora + rope,
            c.hidden_size,
            c.attention_bias,
        )?;
        let shapes = HeadShapes {
            heads,
            nope,
            v_dim,
            kv_lora,
        };
        let kv_b_name = format!("{prefix}.kv_b_proj.weight");
        let absorbed = match w.absorbed_halves(&kv_b_name, shapes)? {
            Some(halves) => halves,
            None => {
                // A model whose weights are quantized keeps W_UK and W_UV quantized too.
                let quantized = kv_a.is_quantized() || kv_b.is_quantized();
                let arena = quantized.then_some(&w.arena);
                AbsorbedWeights::new(&kv_b.dense_weight()?, shapes, w.dtype, arena)?
            }
        };
        Ok(Self {
            query,
            kv_a,
            kv_a_norm: RmsNorm::load(
                w,
                &format!("{prefix}.kv_a_layernorm"),
                kv_lora,
                LATENT_NORM_EPS,
            )?,
            kv_b,
            absorbed,
            o_proj: w.linear(
                &format!("{prefix}.o_proj"),
                c.hidden_size,
                heads * v_dim,
                c.attention_bias,
            )?,
            heads,
            nope,
            rope,
            v_dim,
            kv_lora,
            scale: c.softmax_scale(),
        })
    }

    /// The decode path (absorbed) reads W_UK and W_UV instead of kv_b_proj.
    fn bytes_read_per_token(&self) -> usize {
        self.weight_bytes() - self.kv_b.bytes()
    }

    fn weight_bytes(&self) -> usize {
        let query = match &self.query {
            QueryProjection::Direct(q) => q.bytes(),
            QueryProjection::LowRank { down, norm, up } => {
                down.bytes()
                    + up.bytes()
                    + norm.weight.elem_count() * norm.weight.dtype().size_in_bytes()
            }
        };
        let norm =
            self.kv_a_norm.weight.elem_count() * self.kv_a_norm.weight.dtype().size_in_bytes();
        // kv_b for the expanded form, W_UK and W_UV for the absorbed one: one of them is a copy
        // of the other's values (which, depends on how the file stores them).
        query
            + self.kv_a.bytes()
            + norm
            + self.kv_b.bytes()
            + self.absorbed.bytes()
            + self.o_proj.bytes()
    }

    /// x: [T, hidden] (normalised). Writes this step's latents into `cache` and returns [T, hidden].
    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        cache: &mut LatentCache,
        step: &Step,
    ) -> Result<Tensor> {
        let (h, t) = (self.heads, step.len);
        let q = match &self.query {
            QueryProjection::Direct(q) => q.forward(x)?,
            QueryProjection::LowRank { down, norm, up } => {
                up.forward(&norm.forward(&down.forward(x)?)?)?
            }
        };
        // [T, H*(N+R)] -> [H, T, N+R]
        let q = q.reshape((t, h, self.nope + self.rope))?.transpose(0, 1)?;
        let q_nope = q.narrow(2, 0, self.nope)?.contiguous()?;
        let q_pe = Rope::apply(&q.narrow(2, self.nope, self.rope)?, &step.cos, &step.sin)?;

        let kv_a = self.kv_a.forward(x)?;
        let c_kv = self.kv_a_norm.forward(&kv_a.narrow(1, 0, self.kv_lora)?)?;
        let k_pe = kv_a.narrow(1, self.kv_lora, self.rope)?.unsqueeze(0)?;
        let k_pe = Rope::apply(&k_pe, &step.cos, &step.sin)?.squeeze(0)?;
        // The cache stores one f32 row [c_kv | k_pe] per token; on a GPU the step writes them
        // there, and the cache copies every layer's to its pages at the end of the step.
        let rows = Tensor::cat(&[&c_kv, &k_pe], 1)?.to_dtype(DType::F32)?;
        let device = x.device();
        match step.road {
            Road::Host => cache.write(layer, step.start, &rows.flatten_all()?.to_vec1::<f32>()?),
            Road::Device => cache.write_on_device(layer, step.start, &rows)?,
        }
        let total = step.start + t;

        let absorbed =
            (device.is_cpu() || device.is_cuda()) && self.absorbed_is_cheaper(t, total, step.form);
        let out = if absorbed {
            // q_latent[h] = q_nope[h] W_UK[h]: [H, T, N] x [H, N, L] -> [H, T, L]
            let q_latent = self.absorbed.query_to_latent(&q_nope)?;
            // Attend over the latent pages (in place on the CPU, through our kernel on a GPU),
            // then lift to V with W_UV: [H, T, L] -> [H, T, V]
            let attended = match step.road {
                Road::Host => self.paged_attention(&q_latent, &q_pe, layer, cache, step)?,
                Road::Device => self.latent_attention(&q_latent, &q_pe, layer, cache, step)?,
            };
            // [H, T, V] -> [T, H*V]
            self.absorbed
                .latent_to_value(&attended)?
                .transpose(0, 1)?
                .reshape((t, h * self.v_dim))?
        } else if step.road == Road::Host {
            self.expanded_attention_cpu(&q_nope, &q_pe, layer, cache, step)?
        } else {
            // Every cached row in order, from the pages' device copies (only rows the device
            // lacks are copied there).
            let rows = cache.device_rows(layer, total, x.device())?;
            let c_kv_all = rows
                .narrow(1, 0, self.kv_lora)?
                .contiguous()?
                .to_dtype(x.dtype())?;
            let k_pe_all = rows
                .narrow(1, self.kv_lora, self.rope)?
                .contiguous()?
                .to_dtype(x.dtype())?;
            // [S, H*(N+V)] -> [H, S, N+V]
            let kv = self
                .kv_b
                .forward(&c_kv_all)?
                .reshape((total, h, self.nope + self.v_dim))?
                .transpose(0, 1)?;
            let k_nope = kv.narrow(2, 0, self.nope)?.contiguous()?;
            let v = kv.narrow(2, self.nope, self.v_dim)?.contiguous()?;
            let nope_scores = q_nope.matmul(&k_nope.transpose(1, 2)?)?;
            // [H*T, R] x [R, S]
            let rope_scores = q_pe
                .reshape((h * t, self.rope))?
                .matmul(&k_pe_all.t()?)?
                .reshape((h, t, total))?;
            let probs = self.softmax(&(nope_scores + rope_scores)?, step)?;
            // [H, T, V] -> [T, H*V]
            probs
                .matmul(&v)?
                .transpose(0, 1)?
                .reshape((t, h * self.v_dim))?
        };
        self.o_proj.forward(&out)
    }

    /// The expanded form on the CPU: W_UKV over every cached latent, then
    /// `kernels::causal_attention` reads each head's keys and values where the product left
    /// them, with no mask, per-head copy or [H, T, S] score tensor. Queries [H, T, N] and
    /// [H, T, R]; gives [T, H*V].
    fn expanded_attention_cpu(
        &self,
        q_nope: &Tensor,
        q_pe: &Tensor,
        layer: usize,
        cache: &LatentCache,
        step: &Step,
    ) -> Result<Tensor> {
        let (h, t, dtype) = (self.heads, step.len, q_nope.dtype());
        let total = step.start + t;
        let (c_kv_all, k_rope) = cache.gather(layer, total);
        let c_kv_all =
            Tensor::from_vec(c_kv_all, (total, self.kv_lora), q_nope.device())?.to_dtype(dtype)?;
        let values = |x: &Tensor| -> Result<Vec<f32>> {
            Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        // [S, H*(N+V)]
        let kv = values(&self.kv_b.forward(&c_kv_all)?)?;
        let (q_nope, q_rope) = (values(q_nope)?, values(q_pe)?);
        let mut out = vec![0f32; t * h * self.v_dim];
        kernels::causal_attention::expanded_attention(
            &ExpandedAttention {
                q_nope: &q_nope,
                q_rope: &q_rope,
                kv: &kv,
                k_rope: &k_rope,
                heads: h,
                tokens: t,
                nope: self.nope,
                rope: self.rope,
                v_dim: self.v_dim,
                first_position: step.start,
            },
            self.scale as f32,
            &mut out,
        );
        Ok(Tensor::from_vec(out, (t, h * self.v_dim), &Device::Cpu)?.to_dtype(dtype)?)
    }

    /// Absorbed attention of [H, T, L] latent queries and [H, T, R] roped queries over the cache's
    /// pages (no copy of the cache), giving [H, T, L].
    fn paged_attention(
        &self,
        q_latent: &Tensor,
        q_pe: &Tensor,
        layer: usize,
        cache: &LatentCache,
        step: &Step,
    ) -> Result<Tensor> {
        let (h, t, dtype) = (self.heads, step.len, q_latent.dtype());
        let token_major = |q: &Tensor| -> Result<Vec<f32>> {
            Ok(q.transpose(0, 1)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let (latent, rope) = (token_major(q_latent)?, token_major(q_pe)?);
        let pages = cache.layer_pages(layer);
        let mut out = vec![0f32; t * h * self.kv_lora];
        kernels::paged_attention::absorbed_attention(
            &LatentQueries {
                latent: &latent,
                rope: &rope,
                tokens: t,
                heads: h,
                first_position: step.start,
            },
            &LatentPages {
                pages: &pages,
                page_tokens: cache.layout().page_tokens,
                kv_lora: self.kv_lora,
                rope: self.rope,
            },
            self.scale as f32,
            &mut out,
        );
        Ok(
            Tensor::from_vec(out, (t, h, self.kv_lora), q_latent.device())?
                .transpose(0, 1)?
                .contiguous()?
                .to_dtype(dtype)?,
        )
    }

    /// [`Self::paged_attention`] through the `LatentAttention` op, for a GPU: the layer's
    /// cached pages are copied to the queries' device (whole pages, in position order) and the
    /// op runs there. (The latent pool does not live on the GPU yet: this upload is per step.)
    fn latent_attention(
        &self,
        q_latent: &Tensor,
        q_pe: &Tensor,
        layer: usize,
        cache: &mut LatentCache,
        step: &Step,
    ) -> Result<Tensor> {
        let (device, dtype) = (q_latent.device(), q_latent.dtype());
        let page_tokens = cache.layout().page_tokens;
        let (rows, table) = cache.device_pages(layer, step.start + step.len, device)?;
        let token_major = |q: &Tensor| -> Result<Tensor> {
            Ok(q.transpose(0, 1)?.to_dtype(DType::F32)?.contiguous()?)
        };
        let op = LatentAttention {
            shape: MlaShape {
                heads: self.heads,
                kv_lora: self.kv_lora,
                rope: self.rope,
            },
            first_position: step.start,
            page_tokens,
            table,
            softmax_scale: self.scale as f32,
        };
        let out = token_major(q_latent)?.apply_op3_no_bwd(&token_major(q_pe)?, &rows, &op)?;
        Ok(out.transpose(0, 1)?.contiguous()?.to_dtype(dtype)?)
    }

    /// Scale, mask and normalise [H, T, S] scores, in f32 whatever the compute dtype.
    fn softmax(&self, scores: &Tensor, step: &Step) -> Result<Tensor> {
        let dtype = scores.dtype();
        let mut scores = (scores.to_dtype(DType::F32)? * self.scale)?;
        if let Some(mask) = &step.mask {
            scores = scores.broadcast_add(&mask.to_dtype(DType::F32)?)?;
        }
        Ok(candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?)
    }

    /// Multiply-adds of each form for `t` new tokens over `total` keys.
    fn absorbed_is_cheaper(&self, t: usize, total: usize, form: AttentionForm) -> bool {
        match form {
            AttentionForm::Absorbed => true,
            AttentionForm::Expanded => false,
            AttentionForm::Auto => {
                let (h, n, r, v, l) = (self.heads, self.nope, self.rope, self.v_dim, self.kv_lora);
                let expanded = total * l * h * (n + v) + t * total * h * (n + r + v);
                let absorbed = t * h * (n * l + total * (2 * l + r) + l * v);
                absorbed < expanded
            }
        }
    }
}

/// DeepSeekMoE: softmax router (f32), top-k routed experts, shared experts added ungated.
struct Moe {
    /// [E, hidden], kept in f32 like the reference; a `Linear` so that a decode step streams it
    /// instead of packing it for a matmul of one row.
    router: Linear,
    experts: RoutedExperts,
    shared: Option<Mlp>,
    top_k: usize,
    limit: GroupLimit,
    norm_topk_prob: bool,
    routed_scaling_factor: f64,
}

/// A layer's routed experts: one MLP each (the CPU's fused roads take them, quantized or not),
/// or stacked for the device's kernels (on a GPU, where the routing then never leaves it).
enum RoutedExperts {
    Each(Vec<Mlp>),
    Stacked(StackedExperts),
}

/// An expert's projection as the stacked experts take it: a dense weight, or its GGUF blocks on
/// the device when they are of one type; `None` otherwise (a bias, blocks on the CPU, mixed
/// types).
fn expert_matrix(linear: &Linear) -> Option<ExpertMatrix> {
    if linear.bias.is_some() {
        return None;
    }
    match &linear.weight {
        LinearWeight::Dense(weight) => {
            let format = match weight.dtype() {
                DType::F32 => GgmlType::F32,
                DType::BF16 => GgmlType::BF16,
                _ => return None,
            };
            Some(ExpertMatrix {
                weights: weight.clone(),
                format,
            })
        }
        // Parts of one format are joined when the Linear is built (DeviceBlocks::joined).
        LinearWeight::Blocks(parts) => match parts.as_slice() {
            [only] => Some(ExpertMatrix {
                weights: only.bytes().clone(),
                format: only.ty,
            }),
            _ => None,
        },
        LinearWeight::Quantized(_) => None,
    }
}

impl Moe {
    fn load(w: &Loader, c: &ModelConfig, moe: &MoeConfig, layer_prefix: &str) -> Result<Self> {
        let prefix = format!("{layer_prefix}.mlp");
        let experts = (0..moe.n_routed_experts)
            .map(|e| {
                Mlp::load(
                    w,
                    &format!("{prefix}.experts.{e}"),
                    c.hidden_size,
                    moe.moe_intermediate_size,
                    false,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = (moe.n_shared_experts > 0)
            .then(|| {
                let width = moe.moe_intermediate_size * moe.n_shared_experts;
                Mlp::load(
                    w,
                    &format!("{prefix}.shared_experts"),
                    c.hidden_size,
                    width,
                    c.mlp_bias,
                )
            })
            .transpose()?;
        let router = w.tensor_as(
            &format!("{prefix}.gate.weight"),
            &[moe.n_routed_experts, c.hidden_size],
            DType::F32,
        )?;
        let mut moe = Self {
            router: Linear::new(router, None),
            experts: RoutedExperts::Each(experts),
            shared,
            top_k: moe.num_experts_per_tok,
            limit: match moe.routing {
                Routing::Greedy => GroupLimit::None,
                Routing::GroupLimitedGreedy {
                    n_group,
                    topk_group,
                } => GroupLimit::Groups {
                    groups: n_group,
                    keep_groups: topk_group,
                },
            },
            norm_topk_prob: moe.norm_topk_prob,
            routed_scaling_factor: moe.routed_scaling_factor,
        };
        if w.device.is_cuda() {
            moe.stack_experts()?;
        }
        Ok(moe)
    }

    /// Stacks the routed experts for [`StackedExperts`] when their weights and routing allow
    /// it; returns whether they are stacked.
    fn stack_experts(&mut self) -> Result<bool> {
        let RoutedExperts::Each(experts) = &self.experts else {
            return Ok(true);
        };
        let (mut gate_ups, mut downs) = (Vec::new(), Vec::new());
        for mlp in experts {
            let (Some(gate_up), Some(down)) =
                (expert_matrix(&mlp.gate_up), expert_matrix(&mlp.down))
            else {
                return Ok(false);
            };
            gate_ups.push(gate_up);
            downs.push(down);
        }
        let intermediate = experts.first().map_or(0, |mlp| mlp.intermediate);
        let rule = RoutingRule {
            experts: experts.len(),
            top_k: self.top_k,
            limit: self.limit,
            weighting: self.weighting(),
        };
        match StackedExperts::stack(&gate_ups, &downs, intermediate, rule)? {
            Some(stacked) => {
                self.experts = RoutedExperts::Stacked(stacked);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn weight_bytes(&self) -> usize {
        let routed = match &self.experts {
            RoutedExperts::Each(experts) => experts.iter().map(Mlp::bytes).sum::<usize>(),
            RoutedExperts::Stacked(stacked) => stacked.bytes(),
        };
        self.router.bytes() + routed + self.shared.as_ref().map_or(0, Mlp::bytes)
    }

    fn bytes_read_per_token(&self) -> usize {
        let per_expert = match &self.experts {
            RoutedExperts::Each(experts) => experts.first().map_or(0, Mlp::bytes),
            RoutedExperts::Stacked(stacked) => stacked.bytes_per_expert(),
        };
        self.router.bytes() + self.top_k * per_expert + self.shared.as_ref().map_or(0, Mlp::bytes)
    }

    /// The chosen (expert, weight) pairs of every token, on the host.
    fn route(&self, x: &Tensor) -> Result<Vec<Vec<(usize, f32)>>> {
        let logits = self
            .router
            .forward(&x.to_dtype(DType::F32)?)?
            .to_vec2::<f32>()?;
        let weighting = self.weighting();
        let routes: Vec<Vec<(usize, f32)>> = logits
            .iter()
            .map(|logits| {
                let mut chosen = Vec::with_capacity(self.top_k + 1);
                route_token(logits, self.top_k, self.limit, weighting, &mut chosen);
                chosen
            })
            .collect();
        if routing_trace::tracing() {
            routing_trace::record(routing_trace::RoutedStep {
                chosen: routes
                    .iter()
                    .map(|chosen| chosen.iter().map(|&(expert, _)| expert).collect())
                    .collect(),
                logits,
            });
        }
        Ok(routes)
    }

    /// DeepSeek-V2's rule: renormalise the chosen weights (when more than one is chosen), or
    /// scale them.
    fn weighting(&self) -> Weighting {
        if self.norm_topk_prob && self.top_k > 1 {
            Weighting::Normalize
        } else {
            Weighting::Scale(self.routed_scaling_factor as f32)
        }
    }

    /// One token through the chosen and shared experts when all their weights are quantized on
    /// the CPU: every gate/up product in one parallel pass over all their rows, then every down
    /// product in another (`None`: some weight is not, use the general path).
    fn decode_fused(
        &self,
        experts: &[Mlp],
        x: &Tensor,
        chosen: &[(usize, f32)],
    ) -> Result<Option<Tensor>> {
        if !x.device().is_cpu() {
            return Ok(None);
        }
        let mut mlps: Vec<(&Mlp, f32)> = chosen
            .iter()
            .map(|&(expert, weight)| (&experts[expert], weight))
            .collect();
        if let Some(shared) = &self.shared {
            mlps.push((shared, 1.0));
        }
        // The loader keeps only block formats quantized, which matvec_many_quant takes.
        let Some(parts) = Mlp::all_quantized_parts(mlps.iter().map(|(mlp, _)| *mlp)) else {
            return Ok(None);
        };
        let dtype = x.dtype();
        let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;

        // Gate and up of every MLP, all from the token's hidden state.
        let gate_ups = stacked_products(parts.iter().map(|(gate_up, _)| (*gate_up, 0)), &[&input]);
        // silu(gate) * up per MLP, then every down projection from its own input.
        let hidden_states: Vec<Vec<f32>> = mlps
            .iter()
            .zip(&gate_ups)
            .map(|((mlp, _), values)| {
                let mut activated = vec![0f32; mlp.intermediate];
                silu_gate_times_up(values, &mut activated);
                activated
            })
            .collect();
        let inputs: Vec<&[f32]> = hidden_states.iter().map(Vec::as_slice).collect();
        let downs = stacked_products(
            parts
                .iter()
                .enumerate()
                .map(|(index, (_, down))| (*down, index)),
            &inputs,
        );
        let hidden = input.len();
        let mut sum = vec![0f32; hidden];
        for ((_, weight), values) in mlps.iter().zip(downs) {
            for (s, v) in sum.iter_mut().zip(values) {
                *s += weight * v;
            }
        }
        Ok(Some(
            Tensor::from_vec(sum, (1, hidden), x.device())?.to_dtype(dtype)?,
        ))
    }

    /// Each expert some token chose, with the (token, weight) pairs that chose it in token
    /// order.
    fn tokens_per_expert(
        experts: usize,
        routes: &[Vec<(usize, f32)>],
    ) -> Vec<(usize, Vec<(usize, f32)>)> {
        let mut per_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); experts];
        for (token, chosen) in routes.iter().enumerate() {
            for &(expert, weight) in chosen {
                per_expert[expert].push((token, weight));
            }
        }
        per_expert
            .into_iter()
            .enumerate()
            .filter(|(_, tokens)| !tokens.is_empty())
            .collect()
    }

    /// Many tokens through their chosen experts and the shared ones when all their weights are
    /// quantized on the CPU (`None`: some weight is not, use the general path). Each expert's
    /// tokens are gathered into one batch, and the experts run in parallel, each batch's gate/up
    /// and down products straight on `Vec`s (no tensor is built per expert, and no copy of the
    /// whole output is made per expert, as `index_add` would); then each token's outputs are
    /// summed with their weights.
    fn prefill_fused(
        &self,
        experts: &[Mlp],
        x: &Tensor,
        routes: &[Vec<(usize, f32)>],
    ) -> Result<Option<Tensor>> {
        if !x.device().is_cpu() {
            return Ok(None);
        }
        let (t, hidden) = x.dims2()?;
        // (mlp, its tokens with their weights); the shared experts take every token.
        let mut batches: Vec<(&Mlp, Vec<(usize, f32)>)> =
            Self::tokens_per_expert(experts.len(), routes)
                .into_iter()
                .map(|(expert, tokens)| (&experts[expert], tokens))
                .collect();
        if let Some(shared) = &self.shared {
            batches.push((shared, (0..t).map(|token| (token, 1.0)).collect()));
        }
        let Some(parts) = Mlp::all_quantized_parts(batches.iter().map(|(mlp, _)| *mlp)) else {
            return Ok(None);
        };
        let dtype = x.dtype();
        let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let outputs: Vec<Vec<f32>> = batches
            .par_iter()
            .zip(&parts)
            .map(|((mlp, tokens), (gate_up, down))| {
                let n = tokens.len();
                // A batch of every token (the shared experts') is the input itself: tokens come
                // in order, each once.
                if n == t {
                    return mlp.forward_quantized(gate_up, down, &input, n);
                }
                let mut gathered = Vec::with_capacity(n * hidden);
                for &(token, _) in tokens {
                    gathered.extend_from_slice(&input[token * hidden..(token + 1) * hidden]);
                }
                mlp.forward_quantized(gate_up, down, &gathered, n)
            })
            .collect();
        let mut sum = vec![0f32; t * hidden];
        for ((_, tokens), output) in batches.iter().zip(&outputs) {
            for (&(token, weight), values) in tokens.iter().zip(output.chunks_exact(hidden)) {
                for (s, v) in sum[token * hidden..(token + 1) * hidden]
                    .iter_mut()
                    .zip(values)
                {
                    *s += weight * v;
                }
            }
        }
        Ok(Some(
            Tensor::from_vec(sum, (t, hidden), x.device())?.to_dtype(dtype)?,
        ))
    }

    /// x: [T, hidden] -> [T, hidden]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.experts {
            RoutedExperts::Each(experts) => self.forward_each(experts, x),
            RoutedExperts::Stacked(stacked) => self.forward_stacked(stacked, x),
        }
    }

    /// The routing planned and the experts run on x's device, nothing copied to the host
    /// (unless a routing trace is on).
    fn forward_stacked(&self, stacked: &StackedExperts, x: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(&x.to_dtype(DType::F32)?)?;
        let plan = stacked.plan(&logits)?;
        if routing_trace::tracing() {
            routing_trace::record(routing_trace::RoutedStep {
                chosen: stacked.chosen(&plan, x.dim(0)?)?,
                logits: logits.to_vec2::<f32>()?,
            });
        }
        let base = match &self.shared {
            Some(shared) => shared.forward(x)?,
            None => x.zeros_like()?,
        };
        Ok(stacked.forward(x, &plan, &base)?.to_dtype(x.dtype())?)
    }

    /// Expert by expert: on the CPU through the fused roads, elsewhere one batch per expert.
    fn forward_each(&self, experts: &[Mlp], x: &Tensor) -> Result<Tensor> {
        let routes = self.route(x)?;
        let (t, hidden) = x.dims2()?;
        // The fused decode runs the shared experts itself: before it, they would run twice.
        if t == 1
            && let Some(fused) = self.decode_fused(experts, x, &routes[0])?
        {
            return Ok(fused);
        }
        if t > 1
            && let Some(fused) = self.prefill_fused(experts, x, &routes)?
        {
            return Ok(fused);
        }
        let mut out = match &self.shared {
            Some(shared) => shared.forward(x)?,
            None => Tensor::zeros((t, hidden), x.dtype(), x.device())?,
        };
        if t == 1 {
            for &(expert, weight) in &routes[0] {
                out = (out + (experts[expert].forward(x)? * weight as f64)?)?;
            }
            return Ok(out);
        }
        // Gather each expert's tokens, run them as one batch, scatter-add back.
        for (expert, chosen_by) in Self::tokens_per_expert(experts.len(), &routes) {
            let n = chosen_by.len();
            let (tokens, weights): (Vec<u32>, Vec<f32>) = chosen_by
                .into_iter()
                .map(|(token, weight)| (token as u32, weight))
                .unzip();
            let index = Tensor::from_vec(tokens, n, x.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = experts[expert]
                .forward(&x.index_select(&index, 0)?)?
                .broadcast_mul(&weights)?;
            out = out.index_add(&index, &y, 0)?;
        }
        Ok(out)
    }
}

/// Each matrix (its row parts stacked in order) times its input, all in one parallel pass:
/// one output vector per matrix, its parts' rows one after another.
fn stacked_products<'a>(
    matrices: impl Iterator<Item = (&'a [QuantizedWeight], usize)>,
    inputs: &[&[f32]],
) -> Vec<Vec<f32>> {
    let mut jobs = Vec::new();
    let mut part_counts = Vec::new();
    for (parts, input) in matrices {
        part_counts.push(parts.len());
        jobs.extend(parts.iter().map(|part| part.job(input)));
    }
    let mut part_outputs: Vec<Vec<f32>> = jobs.iter().map(|job| vec![0f32; job.rows]).collect();
    let mut outs: Vec<&mut [f32]> = part_outputs.iter_mut().map(Vec::as_mut_slice).collect();
    matvec_many_quant(&jobs, inputs, &mut outs);
    let mut part_outputs = part_outputs.into_iter();
    part_counts
        .into_iter()
        .map(|count| part_outputs.by_ref().take(count).flatten().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use kernels::test_values::worst_and_largest;

    use super::*;

    /// A [rows, cols] Q8_0 matrix of seeded random values in [-1, 1].
    fn random_q8_0(rows: usize, cols: usize, seed: u64) -> QuantizedWeight {
        let mut state = seed * 2 + 1;
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let data: crate::quantized::SharedBytes =
            std::sync::Arc::new(kernels::quant::quantize_q8_0(&values));
        QuantizedWeight::new("test", kernels::quant::GgmlType::Q8_0, rows, cols, data, 0).unwrap()
    }

    fn quantized_mlp(hidden: usize, intermediate: usize, seed: u64) -> Mlp {
        Mlp {
            gate_up: Linear::stack(vec![
                Linear::quantized(random_q8_0(intermediate, hidden, seed), None),
                Linear::quantized(random_q8_0(intermediate, hidden, seed + 1), None),
            ])
            .unwrap(),
            down: Linear::quantized(random_q8_0(hidden, intermediate, seed + 2), None),
            intermediate,
        }
    }

    #[test]
    fn the_fused_expert_decode_equals_one_expert_at_a_time() {
        let (hidden, intermediate) = (256, 96);
        let mut layer = moe(false, 1.0, 2);
        let experts: Vec<Mlp> = (0..4)
            .map(|e| quantized_mlp(hidden, intermediate, 10 * e))
            .collect();
        layer.shared = Some(quantized_mlp(hidden, 2 * intermediate, 99));
        let values: Vec<f32> = (0..hidden)
            .map(|i| ((i * 7) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (1, hidden), &Device::Cpu).unwrap();
        let chosen = [(2, 0.7f32), (0, 0.3)];

        let fused = layer
            .decode_fused(&experts, &x, &chosen)
            .unwrap()
            .expect("all weights quantized");
        let mut alone = layer.shared.as_ref().unwrap().forward(&x).unwrap();
        for &(expert, weight) in &chosen {
            let y = (experts[expert].forward(&x).unwrap() * weight as f64).unwrap();
            alone = (alone + y).unwrap();
        }
        let (fused, alone) = (
            fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let (worst, scale) = worst_and_largest(&fused, &alone);
        // The same quantized products; only the order of the weighted sum and silu's formula
        // differ (float rounding).
        assert!(
            scale > 0.0 && worst <= 1e-5 * scale,
            "{worst:e} of {scale:e}"
        );
    }

    /// Tokens' experts as a prompt runs them (each expert's tokens in one batch, experts in
    /// parallel) against each token alone through the general path's formula: expert 3 is
    /// chosen by no token, expert 1 by all, and token order differs from batch order.
    #[test]
    fn the_fused_expert_prefill_equals_each_token_alone() {
        let (hidden, intermediate, tokens) = (256, 96, 5);
        let mut layer = moe(false, 1.0, 2);
        let experts: Vec<Mlp> = (0..4)
            .map(|e| quantized_mlp(hidden, intermediate, 10 * e))
            .collect();
        layer.shared = Some(quantized_mlp(hidden, 2 * intermediate, 99));
        let values: Vec<f32> = (0..tokens * hidden)
            .map(|i| ((i * 7) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (tokens, hidden), &Device::Cpu).unwrap();
        let routes: Vec<Vec<(usize, f32)>> = vec![
            vec![(1, 0.6), (0, 0.4)],
            vec![(2, 0.9), (1, 0.1)],
            vec![(1, 0.5), (2, 0.5)],
            vec![(0, 0.2), (1, 0.8)],
            vec![(1, 1.0)],
        ];

        let fused = layer
            .prefill_fused(&experts, &x, &routes)
            .unwrap()
            .expect("all weights quantized")
            .to_vec2::<f32>()
            .unwrap();
        for (token, chosen) in routes.iter().enumerate() {
            let row = x.narrow(0, token, 1).unwrap();
            let mut alone = layer.shared.as_ref().unwrap().forward(&row).unwrap();
            for &(expert, weight) in chosen {
                let y = (experts[expert].forward(&row).unwrap() * weight as f64).unwrap();
                alone = (alone + y).unwrap();
            }
            let alone = alone.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (worst, scale) = worst_and_largest(&fused[token], &alone);
            assert!(
                scale > 0.0 && worst <= 1e-5 * scale,
                "token {token}: {worst:e} of {scale:e}"
            );
        }
    }

    /// A dense MoE layer of seeded weights: `experts` experts of [intermediate, hidden], a
    /// shared expert, and a router whose first expert every token leans to (so that its rows
    /// pass one grouped-matmul tile).
    fn dense_moe(experts: usize, top_k: usize, limit: GroupLimit, dtype: DType) -> Moe {
        let (hidden, intermediate) = (48, 40);
        let tensor = |rows: usize, cols: usize, seed: u64| {
            let values = kernels::test_values::values(rows * cols, seed);
            Tensor::from_vec(values, (rows, cols), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap()
        };
        let mlp = |intermediate: usize, seed: u64| Mlp {
            gate_up: Linear::new(tensor(2 * intermediate, hidden, seed), None),
            down: Linear::new(tensor(hidden, intermediate, seed + 1), None),
            intermediate,
        };
        let mut router = kernels::test_values::values(experts * hidden, 5);
        router[..hidden].iter_mut().for_each(|w| *w += 0.2);
        let mut layer = moe(false, 2.5, top_k);
        layer.router = Linear::new(
            Tensor::from_vec(router, (experts, hidden), &Device::Cpu).unwrap(),
            None,
        );
        layer.limit = limit;
        layer.experts = RoutedExperts::Each(
            (0..experts as u64)
                .map(|e| mlp(intermediate, 10 * e))
                .collect(),
        );
        layer.shared = Some(mlp(2 * intermediate, 99));
        layer
    }

    /// The stacked road (plan, grouped matmuls, combine: the GPU's launches, here their CPU
    /// references) against expert by expert, for a decode step and a prompt whose favoured
    /// expert takes more rows than one tile.
    #[test]
    fn stacked_experts_equal_expert_by_expert() {
        let limits = [
            GroupLimit::None,
            GroupLimit::Groups {
                groups: 3,
                keep_groups: 2,
            },
        ];
        for (limit, dtype, bar) in [
            (limits[0], DType::F32, 1e-5),
            (limits[1], DType::F32, 1e-5),
            // bf16 activations round between the each-expert road's matmuls; the stacked road
            // keeps them in f32, so the two differ by bf16's rounding.
            (limits[1], DType::BF16, 2e-2),
        ] {
            let each = dense_moe(6, 2, limit, dtype);
            let mut stacked = dense_moe(6, 2, limit, dtype);
            assert!(stacked.stack_experts().unwrap());
            assert!(matches!(stacked.experts, RoutedExperts::Stacked(_)));
            for tokens in [1, 100] {
                let values: Vec<f32> = kernels::test_values::values(tokens * 48, tokens as u64)
                    .iter()
                    .map(|v| v + 1.0)
                    .collect();
                let x = Tensor::from_vec(values, (tokens, 48), &Device::Cpu)
                    .and_then(|x| x.to_dtype(dtype))
                    .unwrap();
                let routes = each.route(&x).unwrap();
                let favoured = routes.iter().filter(|r| r.iter().any(|c| c.0 == 0)).count();
                if tokens == 100 {
                    assert!(
                        favoured > 64,
                        "expert 0 takes {favoured} rows, not past a tile"
                    );
                }
                let expected = each.forward(&x).unwrap();
                let ours = stacked.forward(&x).unwrap();
                assert_eq!(ours.dtype(), expected.dtype());
                let values = |t: Tensor| -> Vec<f32> {
                    let t = t.to_dtype(DType::F32).unwrap();
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                let (expected, ours) = (values(expected), values(ours));
                let (worst, scale) = worst_and_largest(&ours, &expected);
                assert!(
                    scale > 0.0 && worst <= bar * scale,
                    "{limit:?} {dtype:?}, {tokens} tokens: {worst:e} of {scale:e}"
                );
            }
        }
    }

    fn moe(norm_topk_prob: bool, routed_scaling_factor: f64, top_k: usize) -> Moe {
        Moe {
            router: Linear::new(
                Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap(),
                None,
            ),
            experts: RoutedExperts::Each(Vec::new()),
            shared: None,
            top_k,
            limit: GroupLimit::None,
            norm_topk_prob,
            routed_scaling_factor,
        }
    }

    #[test]
    fn norm_topk_prob_renormalises_and_does_not_scale() {
        // routed_scaling_factor is not applied when renormalising (the V2 rule).
        assert_eq!(moe(true, 16.0, 2).weighting(), Weighting::Normalize);
    }

    #[test]
    fn without_norm_topk_prob_weights_are_scaled() {
        assert_eq!(moe(false, 16.0, 2).weighting(), Weighting::Scale(16.0));
    }

    #[test]
    fn a_single_chosen_expert_is_scaled_even_with_norm_topk_prob() {
        assert_eq!(moe(true, 2.0, 1).weighting(), Weighting::Scale(2.0));
    }

    /// An MLA layer with real head shapes and empty weights: for what depends only on the
    /// shapes (the attention form, the attention over given latents).
    fn attention_shapes_only(
        heads: usize,
        nope: usize,
        rope: usize,
        v_dim: usize,
        kv_lora: usize,
        scale: f64,
    ) -> Mla {
        let empty = || Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap();
        let linear = || Linear::new(empty(), None);
        Mla {
            query: QueryProjection::Direct(linear()),
            kv_a: linear(),
            kv_a_norm: RmsNorm {
                weight: empty(),
                eps: 1e-6,
            },
            kv_b: linear(),
            absorbed: AbsorbedWeights::Dense {
                w_uk: empty(),
                w_uv_t: empty(),
            },
            o_proj: linear(),
            heads,
            nope,
            rope,
            v_dim,
            kv_lora,
            scale,
        }
    }

    /// The GPU's road (the layer's pages uploaded whole, then the `LatentAttention` op), taken
    /// here on the CPU, must give what the CPU's in-place paged attention gives.
    #[test]
    fn the_latent_attention_op_equals_the_paged_attention_it_stands_for() {
        let (heads, rope, kv_lora) = (3, 4, 16);
        let mla = attention_shapes_only(heads, 8, rope, 8, kv_lora, 0.3);
        let empty = || Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap();
        let random = |count: usize, seed: u64| -> Vec<f32> {
            let mut state = seed;
            (0..count)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        };
        // Pages of 4 tokens, 11 cached positions in 2 layers; a 3-token step from position 8.
        let layout = PageLayout {
            page_tokens: 4,
            layers: 2,
            kv_lora,
            rope,
        };
        let mut cache = LatentCache::new(PagePool::new(layout, None));
        cache.reserve(11).unwrap();
        for layer in 0..2 {
            cache.write(layer, 0, &random(11 * (kv_lora + rope), layer as u64 + 1));
        }
        let step = Step {
            start: 8,
            len: 3,
            cos: empty(),
            sin: empty(),
            mask: None,
            form: AttentionForm::Auto,
            road: Road::Device,
        };
        let q_latent = Tensor::from_vec(
            random(heads * 3 * kv_lora, 7),
            (heads, 3, kv_lora),
            &Device::Cpu,
        )
        .unwrap();
        let q_pe =
            Tensor::from_vec(random(heads * 3 * rope, 8), (heads, 3, rope), &Device::Cpu).unwrap();
        // Twice: the second time positions 8.. hold new values (the step rewrote them, as after
        // an edit), which the op's copy of the rows (the pages' device slots) must pick up.
        for round in 0..2u64 {
            if round == 1 {
                for layer in 0..2 {
                    cache.write(layer, 8, &random(3 * (kv_lora + rope), 10 + layer as u64));
                }
            }
            for layer in 0..2 {
                let paged = mla
                    .paged_attention(&q_latent, &q_pe, layer, &cache, &step)
                    .unwrap();
                let through_op = mla
                    .latent_attention(&q_latent, &q_pe, layer, &mut cache, &step)
                    .unwrap();
                assert_eq!(through_op.dims(), &[heads, 3, kv_lora]);
                let worst = (paged - through_op)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(worst <= 1e-6, "round {round} layer {layer}: {worst}");
            }
        }
    }

    #[test]
    fn decode_uses_the_absorbed_form_and_a_fresh_prefill_the_expanded_one() {
        let lite = crate::synthetic::lite_config(1);
        let attention = |form| {
            let mla = attention_shapes_only(16, 128, 64, 128, 512, lite.softmax_scale());
            move |t, total| mla.absorbed_is_cheaper(t, total, form)
        };
        let auto = attention(AttentionForm::Auto);
        assert!(auto(1, 2), "the second token");
        assert!(auto(1, 8000), "decode over a long cache");
        assert!(auto(16, 8000), "a short span over a long cache");
        assert!(!auto(512, 512), "a fresh prefill");
        assert!(!auto(512, 8512), "a long span over a cache");
        assert!(attention(AttentionForm::Absorbed)(512, 512));
        assert!(!attention(AttentionForm::Expanded)(1, 8000));
    }
}

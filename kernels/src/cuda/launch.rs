//! Our kernels on a GPU, from host slices to host results: compiled with NVRTC for the GPU and
//! the model's shapes, launched through the driver. The engine's GPU path and the GPU test suite
//! (`kernels/tests/gpu.rs`, which holds each kernel to its CPU reference) go through here.

use super::driver::{Arg, Buffer, CudaError, Gpu, Kernels, LaunchShape};
use super::nvrtc::Nvrtc;
use super::sources::{
    KernelSource, MLA_THREADS, MlaShape, RoutingLimits, SOURCES, attention_splits,
    mla_compile_options,
};
use crate::grouped_matmul::ExpertWeights;
use crate::routing::{GroupLimit, Weighting};

/// Warps, so tokens, per routing block (`WARPS_PER_BLOCK` in moe_routing.cu).
const ROUTING_WARPS: u32 = 4;
/// Rows and outputs of a grouped-matmul tile, and its threads (moe_grouped_matmul.cu).
const GROUPED_TILE: usize = 64;
const GROUPED_THREADS: u32 = 256;

/// The kernels compiled for one GPU and one model's attention shape.
pub struct GpuKernels<'gpu> {
    gpu: &'gpu Gpu,
    routing: Kernels<'gpu>,
    attention: Kernels<'gpu>,
    grouped: Kernels<'gpu>,
    shape: MlaShape,
    heads_per_block: usize,
}

fn source(file: &str) -> &'static KernelSource {
    SOURCES
        .iter()
        .find(|source| source.file == file)
        .expect("every kernel file is listed in SOURCES")
}

impl<'gpu> GpuKernels<'gpu> {
    /// Compiles and loads every kernel for `gpu` and `shape`.
    pub fn compile(gpu: &'gpu Gpu, nvrtc: &Nvrtc, shape: MlaShape) -> Result<Self, CudaError> {
        let arch = gpu.arch_option();
        let build = |file: &str, mut options: Vec<String>| {
            let source = source(file);
            options.push(arch.clone());
            let ptx = nvrtc
                .compile_ptx(source.source, source.file, &options)
                .map_err(|error| CudaError(error.to_string()))?;
            gpu.load(&ptx, source.entry_points)
        };
        let heads_per_block = shape
            .heads_per_block()
            .ok_or_else(|| CudaError(format!("{shape:?} does not fit a CUDA block")))?;
        Ok(Self {
            gpu,
            routing: build("moe_routing.cu", Vec::new())?,
            attention: build(
                "mla_paged_attention.cu",
                mla_compile_options(shape).map_err(CudaError)?,
            )?,
            grouped: build("moe_grouped_matmul.cu", Vec::new())?,
            shape,
            heads_per_block,
        })
    }

    /// Every token's routing from `logits` [tokens, experts], as
    /// [`crate::routing::route_token`] does it on the CPU.
    pub fn route(
        &self,
        logits: &[f32],
        experts: usize,
        top_k: usize,
        limit: GroupLimit,
        weighting: Weighting,
    ) -> Result<Vec<Vec<(usize, f32)>>, CudaError> {
        let (groups, keep_groups) = match limit {
            GroupLimit::None => (1, 1),
            GroupLimit::Groups {
                groups,
                keep_groups,
            } => (groups, keep_groups),
        };
        if experts == 0 || !logits.len().is_multiple_of(experts) || !experts.is_multiple_of(groups)
        {
            return Err(CudaError(format!(
                "{} logits are not whole rows of {experts} experts in {groups} groups",
                logits.len()
            )));
        }
        if top_k == 0 || top_k > RoutingLimits::MAX_TOP_K || groups > RoutingLimits::MAX_GROUPS {
            return Err(CudaError(format!(
                "moe_route takes top_k 1..={} and at most {} groups, not {top_k} and {groups}",
                RoutingLimits::MAX_TOP_K,
                RoutingLimits::MAX_GROUPS
            )));
        }
        if keep_groups == 0 || keep_groups > groups || top_k > keep_groups * (experts / groups) {
            return Err(CudaError(format!(
                "top_k {top_k} from the best {keep_groups} of {groups} groups of {experts} experts"
            )));
        }
        let tokens = logits.len() / experts;
        let (normalize, scaling) = match weighting {
            Weighting::Normalize => (1, 1.0),
            Weighting::Scale(factor) => (0, factor),
        };
        let input = self.gpu.upload(logits)?;
        let chosen = self.gpu.alloc(tokens * top_k * 4)?;
        let weights = self.gpu.alloc(tokens * top_k * 4)?;
        let shape = LaunchShape {
            grid: (tokens.div_ceil(ROUTING_WARPS as usize) as u32, 1, 1),
            block: 32 * ROUTING_WARPS,
            shared_bytes: ROUTING_WARPS * experts as u32 * 4,
        };
        self.routing.launch(
            "moe_route",
            shape,
            &[
                Arg::Buffer(&input),
                Arg::I32(tokens as i32),
                Arg::I32(experts as i32),
                Arg::I32(top_k as i32),
                Arg::I32(groups as i32),
                Arg::I32(keep_groups as i32),
                Arg::I32(normalize),
                Arg::F32(scaling),
                Arg::Buffer(&chosen),
                Arg::Buffer(&weights),
            ],
        )?;
        self.gpu.synchronize()?;
        let (chosen, weights) = (chosen.download::<i32>()?, weights.download::<f32>()?);
        Ok(chosen
            .chunks_exact(top_k)
            .zip(weights.chunks_exact(top_k))
            .map(|(experts, weights)| {
                experts
                    .iter()
                    .zip(weights)
                    .map(|(&expert, &weight)| (expert as usize, weight))
                    .collect()
            })
            .collect())
    }

    /// Every expert's rows of `x` [rows, k] times its own W^T ([n, k] in `weights`, expert
    /// after expert), rows grouped by `row_offsets`: [rows, n], as
    /// [`crate::grouped_matmul::grouped_matmul`] computes it.
    pub fn grouped_matmul(
        &self,
        x: &[f32],
        row_offsets: &[usize],
        weights: ExpertWeights,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let experts = row_offsets.len().saturating_sub(1);
        let rows = row_offsets.last().copied().unwrap_or(0);
        let weight_values = weights.values();
        let ordered =
            row_offsets.first() == Some(&0) && row_offsets.windows(2).all(|w| w[0] <= w[1]);
        if !ordered || x.len() != rows * k || weight_values != experts * n * k {
            return Err(CudaError(format!(
                "grouped matmul sizes disagree: {} x values for {rows} rows of {k}, {weight_values} \
                 weights for {experts} experts of [{n}, {k}]",
                x.len()
            )));
        }
        let mut tile_offsets = vec![0i32];
        for rows in row_offsets.windows(2) {
            let tiles = (rows[1] - rows[0]).div_ceil(GROUPED_TILE) as i32;
            tile_offsets.push(tile_offsets.last().copied().unwrap_or(0) + tiles);
        }
        let tiles = *tile_offsets.last().unwrap_or(&0) as u32;
        if tiles == 0 || n == 0 {
            return Ok(vec![0.0; rows * n]);
        }
        let offsets: Vec<i32> = row_offsets.iter().map(|&r| r as i32).collect();
        let input = self.gpu.upload(x)?;
        let (entry, weights) = match weights {
            ExpertWeights::F32(w) => ("moe_grouped_matmul_f32", self.gpu.upload(w)?),
            ExpertWeights::Bf16(w) => ("moe_grouped_matmul_bf16", self.gpu.upload(w)?),
        };
        let (row_offsets, tile_offsets) =
            (self.gpu.upload(&offsets)?, self.gpu.upload(&tile_offsets)?);
        let out = self.gpu.alloc(rows * n * 4)?;
        self.grouped.launch(
            entry,
            LaunchShape {
                grid: (n.div_ceil(GROUPED_TILE) as u32, tiles, 1),
                block: GROUPED_THREADS,
                shared_bytes: 0,
            },
            &[
                Arg::Buffer(&input),
                Arg::Buffer(&weights),
                Arg::Buffer(&row_offsets),
                Arg::Buffer(&tile_offsets),
                Arg::I32(experts as i32),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::Buffer(&out),
            ],
        )?;
        self.gpu.synchronize()?;
        out.download()
    }

    /// Absorbed attention of `tokens` query tokens (positions `first_position..`) over the keys
    /// in `pool` ([pool pages, page_tokens, kv_lora + rope]) that `page_table` lists in order:
    /// [tokens, heads, kv_lora], as [`crate::paged_attention::absorbed_attention`] computes it.
    /// `q_latent` is [tokens, heads, kv_lora] and `q_rope` [tokens, heads, rope].
    #[allow(clippy::too_many_arguments)]
    pub fn absorbed_attention(
        &self,
        q_latent: &[f32],
        q_rope: &[f32],
        tokens: usize,
        first_position: usize,
        pool: &[f32],
        page_table: &[i32],
        page_tokens: usize,
        softmax_scale: f32,
    ) -> Result<Vec<f32>, CudaError> {
        let MlaShape {
            heads,
            kv_lora,
            rope,
        } = self.shape;
        let row = kv_lora + rope;
        let pages = (first_position + tokens).div_ceil(page_tokens.max(1));
        let pool_pages = pool.len() / (page_tokens * row).max(1);
        let sizes_agree = page_tokens > 0
            && tokens > 0
            && q_latent.len() == tokens * heads * kv_lora
            && q_rope.len() == tokens * heads * rope
            && pages <= page_table.len()
            && page_table[..pages]
                .iter()
                .all(|&page| page >= 0 && (page as usize) < pool_pages);
        if !sizes_agree {
            return Err(CudaError(format!(
                "attention sizes disagree: {tokens} tokens from position {first_position}, \
                 {pages} pages of {page_tokens} in a table of {} over {pool_pages} pool pages",
                page_table.len()
            )));
        }
        let buffers = [
            self.gpu.upload(q_latent)?,
            self.gpu.upload(q_rope)?,
            self.gpu.upload(pool)?,
            self.gpu.upload(&page_table[..pages])?,
        ];
        let [q_latent, q_rope, pool, page_table] = &buffers;
        let step = AttentionStep {
            q_latent,
            q_rope,
            pool,
            page_table,
            tokens,
            first_position,
            page_tokens,
            softmax_scale,
        };
        let workspace = self.attention_workspace(tokens, first_position, page_tokens)?;
        self.launch_attention(&step, &workspace)?;
        self.gpu.synchronize()?;
        workspace.out.download()
    }

    /// The partials and output of an attention step of this size, reused across steps of the
    /// same size.
    pub fn attention_workspace(
        &self,
        tokens: usize,
        first_position: usize,
        page_tokens: usize,
    ) -> Result<AttentionWorkspace<'gpu>, CudaError> {
        let MlaShape { heads, kv_lora, .. } = self.shape;
        let pages = (first_position + tokens)
            .div_ceil(page_tokens.max(1))
            .max(1);
        let head_groups = heads / self.heads_per_block;
        let (splits, pages_per_split) =
            attention_splits(pages, head_groups, tokens, self.gpu.multiprocessors);
        let partial = |values: usize| self.gpu.alloc(tokens * splits * values * 4);
        Ok(AttentionWorkspace {
            splits,
            pages_per_split,
            max: partial(heads)?,
            sum: partial(heads)?,
            acc: partial(heads * kv_lora)?,
            out: self.gpu.alloc(tokens * heads * kv_lora * 4)?,
        })
    }

    /// Queues an attention step (inputs already on the device) into `workspace.out`; the
    /// caller checks sizes (see [`Self::absorbed_attention`]) and synchronizes.
    pub fn launch_attention(
        &self,
        step: &AttentionStep,
        workspace: &AttentionWorkspace,
    ) -> Result<(), CudaError> {
        let heads = self.shape.heads;
        let head_groups = heads / self.heads_per_block;
        let AttentionWorkspace {
            splits,
            pages_per_split,
            max,
            sum,
            acc,
            out,
        } = workspace;
        self.attention.launch(
            "mla_split_partials",
            LaunchShape {
                grid: (*splits as u32, head_groups as u32, step.tokens as u32),
                block: MLA_THREADS,
                shared_bytes: 0,
            },
            &[
                Arg::Buffer(step.q_latent),
                Arg::Buffer(step.q_rope),
                Arg::Buffer(step.pool),
                Arg::Buffer(step.page_table),
                Arg::I32(step.page_tokens as i32),
                Arg::I32(heads as i32),
                Arg::I32(step.first_position as i32),
                Arg::I32(*pages_per_split as i32),
                Arg::F32(step.softmax_scale),
                Arg::Buffer(max),
                Arg::Buffer(sum),
                Arg::Buffer(acc),
            ],
        )?;
        self.attention.launch(
            "mla_merge_splits",
            LaunchShape {
                grid: (heads as u32, step.tokens as u32, 1),
                block: MLA_THREADS,
                shared_bytes: 0,
            },
            &[
                Arg::Buffer(max),
                Arg::Buffer(sum),
                Arg::Buffer(acc),
                Arg::I32(*splits as i32),
                Arg::Buffer(out),
            ],
        )
    }
}

/// One attention step's inputs on the device (layouts as [`GpuKernels::absorbed_attention`]).
pub struct AttentionStep<'a> {
    pub q_latent: &'a Buffer<'a>,
    pub q_rope: &'a Buffer<'a>,
    pub pool: &'a Buffer<'a>,
    /// The step's pages, as i32 indices into the pool.
    pub page_table: &'a Buffer<'a>,
    pub tokens: usize,
    pub first_position: usize,
    pub page_tokens: usize,
    pub softmax_scale: f32,
}

/// Split partials and the output of an attention step.
pub struct AttentionWorkspace<'gpu> {
    pub splits: usize,
    pub pages_per_split: usize,
    max: Buffer<'gpu>,
    sum: Buffer<'gpu>,
    acc: Buffer<'gpu>,
    /// [tokens, heads, kv_lora] once the step has run.
    pub out: Buffer<'gpu>,
}

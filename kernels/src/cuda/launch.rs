//! Our kernels on a GPU, from host slices to host results: compiled with NVRTC for the GPU and
//! the model's shapes, launched through the driver. The engine's GPU path and the GPU test suite
//! (`kernels/tests/gpu.rs`, which holds each kernel to its CPU reference) go through here.

use super::driver::{Arg, Buffer, CudaError, Gpu, Kernels};
use super::launch_shapes::{self, Arithmetic, ProductParameter};
use super::nvrtc::Nvrtc;
use super::sources::{KernelSource, MlaShape, RoutingLimits, SOURCES, mla_compile_options};
use crate::expert_rows::{ExpertRows, tile_offsets};
use crate::grouped_matmul::ExpertWeights;
use crate::routing::{GroupLimit, Weighting};

/// The kernels compiled for one GPU and one model's attention shape.
pub struct GpuKernels<'gpu> {
    gpu: &'gpu Gpu,
    routing: Kernels<'gpu>,
    attention: Kernels<'gpu>,
    grouped: Kernels<'gpu>,
    expert_rows: Kernels<'gpu>,
    shape: MlaShape,
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
        Ok(Self {
            gpu,
            routing: build("moe_routing.cu", Vec::new())?,
            attention: build(
                "mla_paged_attention.cu",
                mla_compile_options(shape).map_err(CudaError)?,
            )?,
            grouped: build("moe_grouped_matmul.cu", Vec::new())?,
            expert_rows: build("moe_expert_rows.cu", Vec::new())?,
            shape,
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
        self.routing.launch(
            "moe_route",
            launch_shapes::route(tokens, experts),
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

    /// Every expert's rows times its own W^T ([n, k] in `weights`, expert after expert), rows
    /// grouped by `row_offsets`: [rows, n], as [`crate::grouped_matmul::grouped_matmul`]
    /// computes it. Row r is `x`'s row `row_token[r]` when given (x is then [tokens, k], read in
    /// place), else `x`'s row r (x is [rows, k]). Few rows per expert take the matvec
    /// ([`experts_take_the_matvec`]); more take the tiles, their grid sized for the most tiles
    /// any routing of these rows could take, as the engine sizes it before the routing is known;
    /// in bf16 `arithmetic` the tiles run on tensor cores (x and the weights rounded to bf16).
    pub fn grouped_matmul(
        &self,
        x: &[f32],
        row_token: Option<&[u32]>,
        row_offsets: &[usize],
        weights: ExpertWeights,
        (n, k): (usize, usize),
        arithmetic: Arithmetic,
    ) -> Result<Vec<f32>, CudaError> {
        let experts = row_offsets.len().saturating_sub(1);
        let rows = row_offsets.last().copied().unwrap_or(0);
        let weight_values = weights.values();
        let ordered =
            row_offsets.first() == Some(&0) && row_offsets.windows(2).all(|w| w[0] <= w[1]);
        let x_rows = match row_token {
            Some(tokens) if tokens.len() == rows => x.len() / k.max(1),
            Some(_) => usize::MAX,
            None => rows,
        };
        let tokens_in_x =
            row_token.is_none_or(|tokens| tokens.iter().all(|&t| (t as usize) < x_rows));
        let whole_blocks = weights.format().row_bytes(k).is_some();
        if !ordered
            || x.len() != x_rows * k
            || !tokens_in_x
            || !whole_blocks
            || weight_values != experts * n * k
        {
            return Err(CudaError(format!(
                "grouped matmul sizes disagree: {} x values for {rows} rows of {k}, {weight_values} \
                 weights for {experts} experts of [{n}, {k}]",
                x.len()
            )));
        }
        let tile_offsets = tile_offsets(row_offsets.windows(2).map(|rows| rows[1] - rows[0]));
        let Some((product, shape)) =
            launch_shapes::experts_product(rows, experts, n, weights.format(), arithmetic)
        else {
            return Ok(vec![0.0; rows * n]);
        };
        let offsets: Vec<i32> = row_offsets.iter().map(|&r| r as i32).collect();
        let input = self.gpu.upload(x)?;
        let row_token = row_token
            .map(|tokens| self.gpu.upload(tokens))
            .transpose()?;
        let entry = product.entry(weights.format());
        let weights = match weights {
            ExpertWeights::F32(w) => self.gpu.upload(w)?,
            ExpertWeights::Bf16(w) => self.gpu.upload(w)?,
            ExpertWeights::Blocks { bytes, .. } => self.gpu.upload(bytes)?,
        };
        let (row_offsets, tile_offsets) =
            (self.gpu.upload(&offsets)?, self.gpu.upload(&tile_offsets)?);
        let out = self.gpu.alloc(rows * n * 4)?;
        let args: Vec<Arg> = product
            .parameters()
            .iter()
            .map(|parameter| match parameter {
                ProductParameter::X => Arg::Buffer(&input),
                ProductParameter::Weights => Arg::Buffer(&weights),
                ProductParameter::RowToken => row_token.as_ref().map_or(Arg::Null, Arg::Buffer),
                ProductParameter::RowOffsets => Arg::Buffer(&row_offsets),
                ProductParameter::TileOffsets => Arg::Buffer(&tile_offsets),
                ProductParameter::Experts => Arg::I32(experts as i32),
                ProductParameter::N => Arg::I32(n as i32),
                ProductParameter::K => Arg::I32(k as i32),
                ProductParameter::Y => Arg::Buffer(&out),
            })
            .collect();
        self.grouped.launch(&entry, shape, &args)?;
        self.gpu.synchronize()?;
        out.download()
    }

    /// The rows of each token's choices (`chosen`: `top_k` experts per token, token after
    /// token), as [`crate::expert_rows::expert_rows`] places them up to the order of an
    /// expert's rows.
    pub fn expert_rows(
        &self,
        chosen: &[u32],
        experts: usize,
        top_k: usize,
    ) -> Result<ExpertRows, CudaError> {
        if top_k == 0 || !chosen.len().is_multiple_of(top_k) || experts == 0 {
            return Err(CudaError(format!(
                "{} choices are not whole tokens of {top_k} over {experts} experts",
                chosen.len()
            )));
        }
        let chosen_buffer = self.gpu.upload(chosen)?;
        let offsets = |count: usize| self.gpu.alloc(count * 4);
        let (row_offsets, tile_offsets) = (offsets(experts + 1)?, offsets(experts + 1)?);
        let (row_token, choice_row) =
            (offsets(chosen.len().max(1))?, offsets(chosen.len().max(1))?);
        self.expert_rows.launch(
            "moe_expert_rows",
            launch_shapes::expert_rows(experts),
            &[
                Arg::Buffer(&chosen_buffer),
                Arg::I32(chosen.len() as i32),
                Arg::I32(experts as i32),
                Arg::I32(top_k as i32),
                Arg::Buffer(&row_offsets),
                Arg::Buffer(&tile_offsets),
                Arg::Buffer(&row_token),
                Arg::Buffer(&choice_row),
            ],
        )?;
        self.gpu.synchronize()?;
        let mut rows = ExpertRows {
            row_offsets: row_offsets.download()?,
            tile_offsets: tile_offsets.download()?,
            row_token: row_token.download()?,
            choice_row: choice_row.download()?,
        };
        rows.row_token.truncate(chosen.len());
        rows.choice_row.truncate(chosen.len());
        Ok(rows)
    }

    /// Each token's choices' `rows` summed with their `weights` after `base`, as
    /// [`crate::expert_rows::combine_expert_rows`] does it: [tokens, width].
    pub fn combine_expert_rows(
        &self,
        rows: &[f32],
        choice_row: &[u32],
        weights: &[f32],
        top_k: usize,
        base: Option<&[f32]>,
        width: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let tokens = choice_row.len() / top_k.max(1);
        let sizes_agree = top_k > 0
            && weights.len() == choice_row.len()
            && choice_row.len() == tokens * top_k
            && rows.len() == choice_row.len() * width
            && base.is_none_or(|base| base.len() == tokens * width)
            && choice_row
                .iter()
                .all(|&row| (row as usize) < choice_row.len());
        if !sizes_agree {
            return Err(CudaError(format!(
                "combining {} choices of top_k {top_k} from {} row values of width {width}: sizes \
                 disagree",
                choice_row.len(),
                rows.len()
            )));
        }
        if tokens == 0 || width == 0 {
            return Ok(Vec::new());
        }
        let (rows, choice_row, weights) = (
            self.gpu.upload(rows)?,
            self.gpu.upload(choice_row)?,
            self.gpu.upload(weights)?,
        );
        let base = base.map(|base| self.gpu.upload(base)).transpose()?;
        let out = self.gpu.alloc(tokens * width * 4)?;
        self.expert_rows.launch(
            "moe_combine",
            launch_shapes::combine(tokens),
            &[
                Arg::Buffer(&rows),
                Arg::Buffer(&choice_row),
                Arg::Buffer(&weights),
                base.as_ref().map_or(Arg::Null, Arg::Buffer),
                Arg::I32(top_k as i32),
                Arg::I32(width as i32),
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
        let launch = launch_shapes::attention(self.shape, tokens, pages, self.gpu.multiprocessors)
            .map_err(CudaError)?;
        let partial = |values: usize| self.gpu.alloc(tokens * launch.splits * values * 4);
        Ok(AttentionWorkspace {
            launch,
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
        let AttentionWorkspace {
            launch,
            max,
            sum,
            acc,
            out,
        } = workspace;
        self.attention.launch(
            "mla_split_partials",
            launch.partials,
            &[
                Arg::Buffer(step.q_latent),
                Arg::Buffer(step.q_rope),
                Arg::Buffer(step.pool),
                Arg::Buffer(step.page_table),
                Arg::I32(step.page_tokens as i32),
                Arg::I32(self.shape.heads as i32),
                Arg::I32(step.first_position as i32),
                Arg::I32(launch.pages_per_split as i32),
                Arg::F32(step.softmax_scale),
                Arg::Buffer(max),
                Arg::Buffer(sum),
                Arg::Buffer(acc),
            ],
        )?;
        self.attention.launch(
            "mla_merge_splits",
            launch.merge,
            &[
                Arg::Buffer(max),
                Arg::Buffer(sum),
                Arg::Buffer(acc),
                Arg::I32(launch.splits as i32),
                Arg::Buffer(out),
            ],
        )
    }
}

impl AttentionWorkspace<'_> {
    /// How many splits the keys are cut into.
    pub fn splits(&self) -> usize {
        self.launch.splits
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
    launch: launch_shapes::AttentionLaunch,
    max: Buffer<'gpu>,
    sum: Buffer<'gpu>,
    acc: Buffer<'gpu>,
    /// [tokens, heads, kv_lora] once the step has run.
    pub out: Buffer<'gpu>,
}

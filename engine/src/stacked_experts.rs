//! A MoE layer's routed experts stacked into two tensors, gate/up [E, 2I, H] and down [E, H, I],
//! and run as a few launches that never wait for the host. On a GPU, a layer taken expert by
//! expert costs a copy of the router's logits to the host (the stream drained) and half a dozen
//! launches per chosen expert; here it is:
//!
//! 1. `RoutePlan`: the router's logits to each token's experts and weights (`moe_route`), then
//!    each choice's row of the grouped matmul (`moe_expert_rows`), into one u32 "plan" tensor;
//! 2. `GroupedExperts`: every expert's rows through its gate/up in one launch, each row reading
//!    its token's hidden state in place, then silu(gate) * up, then the same for down;
//! 3. `CombineRows`: each token's choices summed with their weights onto the shared experts'
//!    output (`moe_combine`).
//!
//! The launches are sized from the shapes alone (`most_row_tiles`), so the routing never
//! leaves the device. On the CPU the same ops run the kernels' CPU references, which is how the
//! tests hold this road to the expert-by-expert one.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, D, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use kernels::cuda::RoutingLimits;
use kernels::cuda::launch_shapes::Arithmetic;
use kernels::expert_rows::{combine_expert_rows, expert_rows};
use kernels::grouped_matmul::ExpertWeights;
use kernels::quant::GgmlType;
use kernels::routing::{GroupLimit, Weighting, route_token};

use crate::error::Result;
use crate::op_operands::{f32_values, grouped_product, product_arithmetic, u32_values};

/// How a layer picks and weights its experts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RoutingRule {
    pub experts: usize,
    pub top_k: usize,
    pub limit: GroupLimit,
    pub weighting: Weighting,
}

impl RoutingRule {
    /// Whether `moe_route` and `moe_expert_rows` take this rule.
    fn fits_the_kernels(&self) -> bool {
        let groups = match self.limit {
            GroupLimit::None => 1,
            GroupLimit::Groups { groups, .. } => groups,
        };
        (1..=RoutingLimits::MAX_TOP_K).contains(&self.top_k)
            && groups <= RoutingLimits::MAX_GROUPS
            && (1..=RoutingLimits::MAX_EXPERTS).contains(&self.experts)
    }
}

/// Where each part of a routing plan lies in its u32 tensor, for `choices` (tokens x top_k)
/// over `experts`. Weights are f32 bits; the rest are the fields of
/// [`kernels::expert_rows::ExpertRows`].
#[derive(Debug, Clone, Copy)]
struct PlanLayout {
    choices: usize,
    experts: usize,
}

impl PlanLayout {
    fn chosen(&self) -> Range<usize> {
        0..self.choices
    }
    fn weights(&self) -> Range<usize> {
        self.choices..2 * self.choices
    }
    fn row_offsets(&self) -> Range<usize> {
        let start = 2 * self.choices;
        start..start + self.experts + 1
    }
    fn tile_offsets(&self) -> Range<usize> {
        let start = self.row_offsets().end;
        start..start + self.experts + 1
    }
    fn row_token(&self) -> Range<usize> {
        let start = self.tile_offsets().end;
        start..start + self.choices
    }
    fn choice_row(&self) -> Range<usize> {
        let start = self.row_token().end;
        start..start + self.choices
    }
    fn len(&self) -> usize {
        self.choice_row().end
    }
}

/// The router's logits [T, E] (f32) to a plan (u32, [`PlanLayout`]).
struct RoutePlan {
    rule: RoutingRule,
}

impl RoutePlan {
    fn sizes(&self, logits: &Shape) -> candle_core::Result<(usize, PlanLayout)> {
        let (tokens, experts) = logits.dims2()?;
        if experts != self.rule.experts {
            candle_core::bail!("routing: {experts} logits per token for {:?}", self.rule);
        }
        let choices = tokens * self.rule.top_k;
        Ok((tokens, PlanLayout { choices, experts }))
    }
}

impl CustomOp1 for RoutePlan {
    fn name(&self) -> &'static str {
        "moe-route-plan"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, plan_layout) = self.sizes(layout.shape())?;
        let logits = f32_values(logits, layout, "routing: the router's logits")?;
        let RoutingRule {
            experts,
            top_k,
            limit,
            weighting,
        } = self.rule;
        let mut plan = vec![0u32; plan_layout.len()];
        let mut chosen = Vec::with_capacity(top_k + 1);
        let mut experts_chosen = Vec::with_capacity(plan_layout.choices);
        for (token, row) in logits.chunks_exact(experts).enumerate() {
            route_token(row, top_k, limit, weighting, &mut chosen);
            for (j, &(expert, weight)) in chosen.iter().enumerate() {
                experts_chosen.push(expert as u32);
                plan[plan_layout.weights().start + token * top_k + j] = weight.to_bits();
            }
        }
        let rows = expert_rows(&experts_chosen, experts, top_k);
        plan[plan_layout.chosen()].copy_from_slice(&experts_chosen);
        plan[plan_layout.row_offsets()].copy_from_slice(&rows.row_offsets);
        plan[plan_layout.tile_offsets()].copy_from_slice(&rows.tile_offsets);
        plan[plan_layout.row_token()].copy_from_slice(&rows.row_token);
        plan[plan_layout.choice_row()].copy_from_slice(&rows.choice_row);
        let len = plan.len();
        Ok((CpuStorage::U32(plan), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        logits: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (tokens, plan_layout) = self.sizes(layout.shape())?;
        gpu::route_plan(self, logits, layout, tokens, plan_layout)
    }
}

/// Every choice's row through its expert's W^T: x (f32; [T, k] read through the plan's
/// row_token when `gather`, else already [choices, k] in row order), the stacked weights
/// (`format`: [E, n, k] f32 or bf16, or [E, n, row bytes] u8 of GGUF blocks) and the plan give
/// [choices, n] f32.
struct GroupedExperts {
    rule: RoutingRule,
    gather: bool,
    format: GgmlType,
    /// The tiles' arithmetic (on the CPU too: [`grouped_product`]).
    arithmetic: Arithmetic,
}

impl GroupedExperts {
    /// (plan layout, n, k) once the shapes are checked.
    fn sizes(
        &self,
        x: &Shape,
        weights: &Shape,
        plan: &Shape,
    ) -> candle_core::Result<(PlanLayout, usize, usize)> {
        let (rows, k) = x.dims2()?;
        let (experts, n, weight_row) = weights.dims3()?;
        let choices = if self.gather {
            rows * self.rule.top_k
        } else {
            rows
        };
        let plan_layout = PlanLayout { choices, experts };
        let row_fits = if format_dtype(self.format) == DType::U8 {
            self.format.row_bytes(k) == Some(weight_row)
        } else {
            weight_row == k
        };
        if experts != self.rule.experts || !row_fits || plan.elem_count() != plan_layout.len() {
            candle_core::bail!(
                "grouped experts: x {x:?}, weights {weights:?} and a plan of {} do not fit {:?}",
                plan.elem_count(),
                self.rule
            );
        }
        Ok((plan_layout, n, k))
    }
}

impl CustomOp3 for GroupedExperts {
    fn name(&self) -> &'static str {
        "moe-grouped-experts"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weights: &CpuStorage,
        weights_layout: &Layout,
        plan: &CpuStorage,
        plan_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (parts, n, k) = self.sizes(
            x_layout.shape(),
            weights_layout.shape(),
            plan_layout.shape(),
        )?;
        let x = f32_values(x, x_layout, "grouped experts: the input")?;
        let plan = u32_values(plan, plan_layout, "stacked experts: the routing plan")?;
        let gathered: Vec<f32>;
        let rows = if self.gather {
            gathered = plan[parts.row_token()]
                .iter()
                .flat_map(|&token| &x[token as usize * k..(token as usize + 1) * k])
                .copied()
                .collect();
            &gathered
        } else {
            x
        };
        let row_offsets: Vec<usize> = plan[parts.row_offsets()]
            .iter()
            .map(|&row| row as usize)
            .collect();
        let weights = match (weights, weights_layout.contiguous_offsets()) {
            (CpuStorage::F32(w), Some((start, end))) => ExpertWeights::F32(&w[start..end]),
            (CpuStorage::BF16(w), Some((start, end))) => {
                ExpertWeights::Bf16(w[start..end].reinterpret_cast())
            }
            (CpuStorage::U8(w), Some((start, end))) => ExpertWeights::Blocks {
                ty: self.format,
                bytes: &w[start..end],
            },
            _ => candle_core::bail!(
                "grouped experts: the weights must be contiguous f32, bf16 or u8 blocks"
            ),
        };
        let mut y = vec![0f32; parts.choices * n];
        grouped_product(rows, &row_offsets, weights, (n, k), self.arithmetic, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((parts.choices, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        weights: &candle_core::CudaStorage,
        weights_layout: &Layout,
        plan: &candle_core::CudaStorage,
        plan_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let sizes = self.sizes(
            x_layout.shape(),
            weights_layout.shape(),
            plan_layout.shape(),
        )?;
        gpu::grouped_experts(
            self,
            (x, x_layout),
            (weights, weights_layout),
            (plan, plan_layout),
            sizes,
        )
    }
}

/// Each token's choices' rows [choices, width] summed with their weights onto `base` [T, width]
/// (f32), by the plan: [T, width] f32.
struct CombineRows {
    rule: RoutingRule,
}

impl CombineRows {
    fn sizes(
        &self,
        rows: &Shape,
        plan: &Shape,
        base: &Shape,
    ) -> candle_core::Result<(PlanLayout, usize, usize)> {
        let (choices, width) = rows.dims2()?;
        let (tokens, base_width) = base.dims2()?;
        let parts = PlanLayout {
            choices,
            experts: self.rule.experts,
        };
        if choices != tokens * self.rule.top_k
            || base_width != width
            || plan.elem_count() != parts.len()
        {
            candle_core::bail!(
                "combining rows {rows:?} onto {base:?} by a plan of {} does not fit {:?}",
                plan.elem_count(),
                self.rule
            );
        }
        Ok((parts, tokens, width))
    }
}

impl CustomOp3 for CombineRows {
    fn name(&self) -> &'static str {
        "moe-combine-rows"
    }

    fn cpu_fwd(
        &self,
        rows: &CpuStorage,
        rows_layout: &Layout,
        plan: &CpuStorage,
        plan_layout: &Layout,
        base: &CpuStorage,
        base_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (parts, tokens, width) = self.sizes(
            rows_layout.shape(),
            plan_layout.shape(),
            base_layout.shape(),
        )?;
        let plan = u32_values(plan, plan_layout, "stacked experts: the routing plan")?;
        let weights: Vec<f32> = plan[parts.weights()]
            .iter()
            .map(|&bits| f32::from_bits(bits))
            .collect();
        let mut out = vec![0f32; tokens * width];
        combine_expert_rows(
            f32_values(rows, rows_layout, "combining rows: the rows")?,
            &plan[parts.choice_row()],
            &weights,
            self.rule.top_k,
            Some(f32_values(base, base_layout, "combining rows: the base")?),
            &mut out,
        );
        Ok((CpuStorage::F32(out), Shape::from((tokens, width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        rows: &candle_core::CudaStorage,
        rows_layout: &Layout,
        plan: &candle_core::CudaStorage,
        plan_layout: &Layout,
        base: &candle_core::CudaStorage,
        base_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let sizes = self.sizes(
            rows_layout.shape(),
            plan_layout.shape(),
            base_layout.shape(),
        )?;
        gpu::combine_rows(
            self,
            (rows, rows_layout),
            (plan, plan_layout),
            (base, base_layout),
            sizes,
        )
    }
}

/// The dtype of the tensor holding weights in `format`: f32 or bf16 when dense, else u8 bytes
/// of GGUF blocks.
fn format_dtype(format: GgmlType) -> DType {
    match format {
        GgmlType::F32 => DType::F32,
        GgmlType::BF16 => DType::BF16,
        _ => DType::U8,
    }
}

/// One expert's [n, k] matrix as the grouped products take it: a float tensor (`format` F32 or
/// BF16, its dtype) or the rows of GGUF blocks of `format` as u8 [n, row bytes].
pub(crate) struct ExpertMatrix {
    pub weights: Tensor,
    pub format: GgmlType,
}

/// The routed experts of one layer, stacked.
pub(crate) struct StackedExperts {
    /// [E, 2I, H] (or its rows of blocks): each expert's gate rows, then its up rows.
    gate_up: Tensor,
    gate_up_format: GgmlType,
    /// [E, H, I] (or its rows of blocks)
    down: Tensor,
    down_format: GgmlType,
    intermediate: usize,
    rule: RoutingRule,
}

impl StackedExperts {
    /// The experts' gate/up [2I, H] and down [H, I] matrices stacked, or `None` when this road
    /// does not take them: a matrix in another format or shape than its fellows, dense weights
    /// not f32 or bf16 (the grouped matmul's types), or a routing past the kernels' limits.
    pub(crate) fn stack(
        gate_ups: &[ExpertMatrix],
        downs: &[ExpertMatrix],
        intermediate: usize,
        rule: RoutingRule,
    ) -> Result<Option<Self>> {
        let alike = |matrices: &[ExpertMatrix]| match matrices.first() {
            Some(first) => {
                first.weights.dtype() == format_dtype(first.format)
                    && matrices.iter().all(|m| {
                        m.format == first.format
                            && m.weights.dtype() == first.weights.dtype()
                            && m.weights.dims() == first.weights.dims()
                    })
            }
            None => false,
        };
        let takes = alike(gate_ups)
            && alike(downs)
            && gate_ups.len() == rule.experts
            && downs.len() == rule.experts
            && rule.fits_the_kernels();
        if !takes {
            return Ok(None);
        }
        let stacked = |matrices: &[ExpertMatrix]| -> Result<Tensor> {
            let weights: Vec<&Tensor> = matrices.iter().map(|m| &m.weights).collect();
            Ok(Tensor::stack(&weights, 0)?.contiguous()?)
        };
        Ok(Some(Self {
            gate_up: stacked(gate_ups)?,
            gate_up_format: gate_ups[0].format,
            down: stacked(downs)?,
            down_format: downs[0].format,
            intermediate,
            rule,
        }))
    }

    pub(crate) fn bytes(&self) -> usize {
        [&self.gate_up, &self.down]
            .iter()
            .map(|w| w.elem_count() * w.dtype().size_in_bytes())
            .sum()
    }

    /// The weights one chosen expert reads.
    pub(crate) fn bytes_per_expert(&self) -> usize {
        self.bytes() / self.rule.experts.max(1)
    }

    /// The formats of the gate/up and down stacks (F32 or BF16 when dense).
    pub(crate) fn formats(&self) -> (GgmlType, GgmlType) {
        (self.gate_up_format, self.down_format)
    }

    /// The plan of a step's routing from the router's logits [T, E] (f32, on the device).
    pub(crate) fn plan(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(logits
            .contiguous()?
            .apply_op1_no_bwd(&RoutePlan { rule: self.rule })?)
    }

    /// Each of `tokens` tokens' chosen experts, best first, read back from their plan (for
    /// routing traces).
    pub(crate) fn chosen(&self, plan: &Tensor, tokens: usize) -> Result<Vec<Vec<usize>>> {
        let parts = PlanLayout {
            choices: tokens * self.rule.top_k,
            experts: self.rule.experts,
        };
        let chosen = plan.narrow(0, 0, parts.chosen().len())?.to_vec1::<u32>()?;
        Ok(chosen
            .chunks_exact(self.rule.top_k)
            .map(|experts| experts.iter().map(|&e| e as usize).collect())
            .collect())
    }

    /// x [T, H] through each token's chosen experts by `plan`, summed with their weights onto
    /// `base` [T, H] (the shared experts' output): [T, H] f32.
    pub(crate) fn forward(&self, x: &Tensor, plan: &Tensor, base: &Tensor) -> Result<Tensor> {
        let arithmetic = product_arithmetic(x.dtype());
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let width = self.intermediate;
        let gate_up = x.apply_op3_no_bwd(
            &self.gate_up,
            plan,
            &GroupedExperts {
                rule: self.rule,
                gather: true,
                format: self.gate_up_format,
                arithmetic,
            },
        )?;
        let activated = (candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, width)?)?
            * gate_up.narrow(D::Minus1, width, width)?)?
        .contiguous()?;
        let rows = activated.apply_op3_no_bwd(
            &self.down,
            plan,
            &GroupedExperts {
                rule: self.rule,
                gather: false,
                format: self.down_format,
                arithmetic,
            },
        )?;
        Ok(rows.apply_op3_no_bwd(
            plan,
            &base.to_dtype(DType::F32)?.contiguous()?,
            &CombineRows { rule: self.rule },
        )?)
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, Layout, Shape};
    use kernels::cuda::launch_shapes;
    use kernels::routing::{GroupLimit, Weighting};

    use super::{CombineRows, GroupedExperts, PlanLayout, RoutePlan};
    use crate::experts_product::{ProductRows, experts_product};
    use crate::gpu_ptx::{config, kernel};

    pub(super) fn route_plan(
        op: &RoutePlan,
        logits: &CudaStorage,
        layout: &Layout,
        tokens: usize,
        parts: PlanLayout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("routing: the logits must be contiguous");
        }
        let device = logits.device.clone();
        let logits = logits
            .as_cuda_slice::<f32>()?
            .slice(layout.start_offset()..);
        let mut plan = device.alloc_zeros::<u32>(parts.len())?;
        if tokens > 0 {
            let rule = op.rule;
            let (groups, keep_groups) = match rule.limit {
                GroupLimit::None => (1, 1),
                GroupLimit::Groups {
                    groups,
                    keep_groups,
                } => (groups as i32, keep_groups as i32),
            };
            let (normalize, scaling) = match rule.weighting {
                Weighting::Normalize => (1i32, 1f32),
                Weighting::Scale(factor) => (0, factor),
            };
            let (tokens_arg, experts, top_k, choices) = (
                tokens as i32,
                rule.experts as i32,
                rule.top_k as i32,
                parts.choices as i32,
            );
            let (mut chosen, mut rest) = plan.split_at_mut(parts.choices);
            let (mut weights, mut rest) = rest.split_at_mut(parts.choices);
            let (mut row_offsets, mut rest) = rest.split_at_mut(parts.experts + 1);
            let (mut tile_offsets, mut rest) = rest.split_at_mut(parts.experts + 1);
            let (mut row_token, mut choice_row) = rest.split_at_mut(parts.choices);

            let route = kernel(&device, "moe_routing.cu", &[], "moe_route")?;
            let rows = kernel(&device, "moe_expert_rows.cu", &[], "moe_expert_rows")?;
            let stream = device.cuda_stream();
            {
                let mut launch = stream.launch_builder(&route);
                launch.arg(&logits);
                launch.arg(&tokens_arg);
                launch.arg(&experts);
                launch.arg(&top_k);
                launch.arg(&groups);
                launch.arg(&keep_groups);
                launch.arg(&normalize);
                launch.arg(&scaling);
                launch.arg(&mut chosen);
                launch.arg(&mut weights);
                // SAFETY: the arguments are moe_route's parameters in order; the logits hold
                // tokens x experts values and chosen/weights tokens x top_k each (RoutePlan::sizes,
                // PlanLayout), and the rule fits the kernel (RoutingRule::fits_the_kernels).
                unsafe { launch.launch(config(launch_shapes::route(tokens, rule.experts))) }.w()?;
            }
            let mut launch = stream.launch_builder(&rows);
            launch.arg(&mut chosen);
            launch.arg(&choices);
            launch.arg(&experts);
            launch.arg(&top_k);
            launch.arg(&mut row_offsets);
            launch.arg(&mut tile_offsets);
            launch.arg(&mut row_token);
            launch.arg(&mut choice_row);
            // SAFETY: moe_expert_rows' parameters in order, each part as long as PlanLayout
            // makes it (experts + 1 offsets, choices of the rest).
            unsafe { launch.launch(config(launch_shapes::expert_rows(rule.experts))) }.w()?;
        }
        let len = parts.len();
        Ok((CudaStorage::wrap_cuda_slice(plan, device), Shape::from(len)))
    }

    pub(super) fn grouped_experts(
        op: &GroupedExperts,
        (x, x_layout): (&CudaStorage, &Layout),
        (weights, weights_layout): (&CudaStorage, &Layout),
        (plan, plan_layout): (&CudaStorage, &Layout),
        (parts, n, k): (PlanLayout, usize, usize),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        for layout in [x_layout, weights_layout, plan_layout] {
            if !layout.is_contiguous() {
                candle_core::bail!("grouped experts: operands must be contiguous");
            }
        }
        let device = x.device.clone();
        let x = x.as_cuda_slice::<f32>()?.slice(x_layout.start_offset()..);
        let plan = plan
            .as_cuda_slice::<u32>()?
            .slice(plan_layout.start_offset()..);
        let rows = ProductRows {
            rows: parts.choices,
            row_token: op.gather.then(|| plan.slice(parts.row_token())),
            row_offsets: plan.slice(parts.row_offsets()),
            tile_offsets: plan.slice(parts.tile_offsets()),
            experts: parts.experts,
        };
        let weights = (weights, weights_layout.start_offset(), op.format);
        let out = experts_product(&device, &x, weights, &rows, (n, k), op.arithmetic)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((parts.choices, n)),
        ))
    }

    pub(super) fn combine_rows(
        op: &CombineRows,
        (rows, rows_layout): (&CudaStorage, &Layout),
        (plan, plan_layout): (&CudaStorage, &Layout),
        (base, base_layout): (&CudaStorage, &Layout),
        (parts, tokens, width): (PlanLayout, usize, usize),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        for layout in [rows_layout, plan_layout, base_layout] {
            if !layout.is_contiguous() {
                candle_core::bail!("combining rows: operands must be contiguous");
            }
        }
        let device = rows.device.clone();
        let rows = rows
            .as_cuda_slice::<f32>()?
            .slice(rows_layout.start_offset()..);
        let plan = plan
            .as_cuda_slice::<u32>()?
            .slice(plan_layout.start_offset()..);
        let base = base
            .as_cuda_slice::<f32>()?
            .slice(base_layout.start_offset()..);
        let out = device.alloc_zeros::<f32>(tokens * width)?;
        if tokens > 0 && width > 0 {
            let function = kernel(&device, "moe_expert_rows.cu", &[], "moe_combine")?;
            let stream = device.cuda_stream();
            let (choice_row, weights) =
                (plan.slice(parts.choice_row()), plan.slice(parts.weights()));
            let (top_k, width_arg) = (op.rule.top_k as i32, width as i32);
            let mut launch = stream.launch_builder(&function);
            launch.arg(&rows);
            launch.arg(&choice_row);
            launch.arg(&weights);
            launch.arg(&base);
            launch.arg(&top_k);
            launch.arg(&width_arg);
            launch.arg(&out);
            // SAFETY: moe_combine's parameters in order: rows [choices, width], the plan's
            // choice_row and weights (choices each), base and out [tokens, width].
            unsafe { launch.launch(config(launch_shapes::combine(tokens))) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((tokens, width)),
        ))
    }
}

//! MLA's absorbed attention over one layer's cached latents as a candle op:
//! q_latent [T, H, L], q_rope [T, H, R] and the pool's latent rows [slots x page_tokens, L + R]
//! give [T, H, L], the sequence's pages read through `table` (the slot of each page, in position
//! order). On the CPU it is
//! `kernels::paged_attention`; on a CUDA device it is our kernel
//! (`kernels/cuda/mla_paged_attention.cu`), compiled with NVRTC for the model's shapes on first use
//! and launched on candle's stream, so a decode step on the GPU reads each latent row once per
//! head group instead of expanding every cached token through kv_b.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use kernels::cuda::MlaShape;
use kernels::paged_attention::{LatentPages, LatentQueries, absorbed_attention};

use crate::latent_cache::PageTable;
use crate::op_operands::f32_values;

pub(crate) struct LatentAttention {
    pub shape: MlaShape,
    /// Position of query token 0; token i sees rows 0..=first_position + i.
    pub first_position: usize,
    pub page_tokens: usize,
    /// The slot (in the rows) of each of the sequence's pages, in position order (on the rows'
    /// device too).
    pub table: Arc<PageTable>,
    pub softmax_scale: f32,
}

impl LatentAttention {
    /// (tokens, pages) of a call, once its shapes and page table are checked.
    fn sizes(
        &self,
        queries: &Shape,
        roped: &Shape,
        rows: &Shape,
    ) -> candle_core::Result<(usize, usize)> {
        let MlaShape {
            heads,
            kv_lora,
            rope,
        } = self.shape;
        let (tokens, q_heads, latent) = queries.dims3()?;
        let (r_tokens, r_heads, r_rope) = roped.dims3()?;
        let (stored, row) = rows.dims2()?;
        let slots = stored / self.page_tokens.max(1);
        let pages = self.table.slots.len();
        if (q_heads, latent) != (heads, kv_lora)
            || (r_tokens, r_heads, r_rope) != (tokens, heads, rope)
            || row != kv_lora + rope
            || self.page_tokens == 0
            || stored % self.page_tokens != 0
            || self.table.slots.iter().any(|&slot| slot as usize >= slots)
            || self.first_position + tokens > pages * self.page_tokens
        {
            candle_core::bail!(
                "latent attention for {:?}: queries {queries:?}, roped {roped:?} and rows \
                 {rows:?} (pages of {}, a table of {pages}) do not fit positions {}..{}",
                self.shape,
                self.page_tokens,
                self.first_position,
                self.first_position + tokens
            );
        }
        Ok((tokens, pages))
    }
}

impl CustomOp3 for LatentAttention {
    fn name(&self) -> &'static str {
        "latent-attention"
    }

    fn cpu_fwd(
        &self,
        queries: &CpuStorage,
        queries_layout: &Layout,
        roped: &CpuStorage,
        roped_layout: &Layout,
        rows: &CpuStorage,
        rows_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, _) = self.sizes(
            queries_layout.shape(),
            roped_layout.shape(),
            rows_layout.shape(),
        )?;
        let MlaShape {
            heads,
            kv_lora,
            rope,
        } = self.shape;
        let rows = f32_values(rows, rows_layout, "latent attention: the latent rows")?;
        let page_values = self.page_tokens * (kv_lora + rope);
        let pages: Vec<&[f32]> = self
            .table
            .slots
            .iter()
            .map(|&slot| &rows[slot as usize * page_values..][..page_values])
            .collect();
        let mut out = vec![0f32; tokens * heads * kv_lora];
        absorbed_attention(
            &LatentQueries {
                latent: f32_values(
                    queries,
                    queries_layout,
                    "latent attention: the latent queries",
                )?,
                rope: f32_values(roped, roped_layout, "latent attention: the roped queries")?,
                tokens,
                heads,
                first_position: self.first_position,
            },
            &LatentPages {
                pages: &pages,
                page_tokens: self.page_tokens,
                kv_lora,
                rope,
            },
            self.softmax_scale,
            &mut out,
        );
        Ok((CpuStorage::F32(out), Shape::from((tokens, heads, kv_lora))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        queries: &candle_core::CudaStorage,
        queries_layout: &Layout,
        roped: &candle_core::CudaStorage,
        roped_layout: &Layout,
        rows: &candle_core::CudaStorage,
        rows_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        gpu::forward(
            self,
            (queries, queries_layout),
            (roped, roped_layout),
            (rows, rows_layout),
        )
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    use candle_core::{CudaStorage, Layout, Shape, Storage};
    use kernels::cuda::{launch_shapes, mla_compile_options};

    use super::LatentAttention;
    use crate::gpu_ptx::{config, kernel};

    pub(super) fn forward(
        op: &LatentAttention,
        (queries, queries_layout): (&CudaStorage, &Layout),
        (roped, roped_layout): (&CudaStorage, &Layout),
        (rows, rows_layout): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (tokens, pages) = op.sizes(
            queries_layout.shape(),
            roped_layout.shape(),
            rows_layout.shape(),
        )?;
        for layout in [queries_layout, roped_layout, rows_layout] {
            if !layout.is_contiguous() {
                candle_core::bail!("latent attention: operands must be contiguous");
            }
        }
        let shape = op.shape;
        let device = queries.device.clone();
        let options = mla_compile_options(shape).map_err(candle_core::Error::msg)?;
        const FILE: &str = "mla_paged_attention.cu";
        let partials = kernel(&device, FILE, &options, "mla_split_partials")?;
        let merge = kernel(&device, FILE, &options, "mla_merge_splits")?;
        let stream = device.cuda_stream();
        let multiprocessors = device
            .cuda_stream()
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .w()?;
        let launches = launch_shapes::attention(shape, tokens, pages, multiprocessors as usize)
            .map_err(candle_core::Error::msg)?;
        let splits = launches.splits;

        let queries = queries
            .as_cuda_slice::<f32>()?
            .slice(queries_layout.start_offset()..);
        let roped = roped
            .as_cuda_slice::<f32>()?
            .slice(roped_layout.start_offset()..);
        let rows = rows
            .as_cuda_slice::<f32>()?
            .slice(rows_layout.start_offset()..);
        let (table, table_layout) = op.table.on_device.storage_and_layout();
        let table = match &*table {
            Storage::Cuda(table) => table
                .as_cuda_slice::<u32>()?
                .slice(table_layout.start_offset()..),
            _ => candle_core::bail!("latent attention: the page table is not on the GPU"),
        };
        let partial = |values: usize| device.alloc_zeros::<f32>(tokens * splits * values);
        let (max, sum, acc) = (
            partial(shape.heads)?,
            partial(shape.heads)?,
            partial(shape.heads * shape.kv_lora)?,
        );
        let out = device.alloc_zeros::<f32>(tokens * shape.heads * shape.kv_lora)?;

        let (page_tokens, heads, first_position, pages_per_split) = (
            op.page_tokens as i32,
            shape.heads as i32,
            op.first_position as i32,
            launches.pages_per_split as i32,
        );
        let mut launch = stream.launch_builder(&partials);
        launch.arg(&queries);
        launch.arg(&roped);
        launch.arg(&rows);
        launch.arg(&table);
        launch.arg(&page_tokens);
        launch.arg(&heads);
        launch.arg(&first_position);
        launch.arg(&pages_per_split);
        launch.arg(&op.softmax_scale);
        launch.arg(&max);
        launch.arg(&sum);
        launch.arg(&acc);
        // SAFETY: the arguments are the kernel's parameters in order (mla_paged_attention.cu),
        // each buffer as long as the sizes checked above make the kernel read or write.
        unsafe { launch.launch(config(launches.partials)) }.w()?;

        let splits_arg = splits as i32;
        let mut launch = stream.launch_builder(&merge);
        launch.arg(&max);
        launch.arg(&sum);
        launch.arg(&acc);
        launch.arg(&splits_arg);
        launch.arg(&out);
        // SAFETY: as above, for mla_merge_splits.
        unsafe { launch.launch(config(launches.merge)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((tokens, shape.heads, shape.kv_lora)),
        ))
    }
}

//! A weight kept in its GGUF block format on the model's device: a GPU load of a quantized file
//! uploads the blocks as the file holds them (Lite's Q4_K_M is then about 10 GB there, where
//! bf16 copies would take 31), and our kernels multiply them as they are. A product is the
//! experts' grouped product with one expert (`moe_expert_matvec_*` for a decode step's few rows,
//! the tiles of `moe_grouped_matmul_*` for a prompt), reading each value through the block
//! decoders of `kernels/cuda/ggml_blocks.cu`.
//!
//! On the CPU the same op runs the kernels' CPU reference, which is how the tests hold a
//! quantized model on the GPU's road to transformers' logits.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor};
use kernels::cuda::launch_shapes::Arithmetic;
use kernels::expert_rows::tile_offsets;
use kernels::grouped_matmul::ExpertWeights;
use kernels::quant::GgmlType;

use crate::error::{EngineError, Result};
use crate::op_operands::{f32_values, grouped_product, u8_values, u32_values};
use crate::quantized::QuantizedWeight;

/// W [rows, cols] as rows of `ty` blocks in a u8 tensor [rows, row bytes] on its device.
pub(crate) struct DeviceBlocks {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    bytes: Tensor,
    /// The product's row and tile offsets for the last input row count n, u32 [0, n, 0, tiles]
    /// on the device: every decode step has the same n, so its Linears copy them there once.
    offsets: Mutex<Option<(usize, Tensor)>>,
}

impl DeviceBlocks {
    /// `weight`'s blocks, in the file's order, on `device`.
    pub(crate) fn upload(weight: &QuantizedWeight, device: &Device) -> Result<Self> {
        let bytes = weight.in_file_order();
        let row_bytes = bytes.len() / weight.rows.max(1);
        let bytes = Tensor::from_slice(&bytes, (weight.rows, row_bytes), &Device::Cpu)?
            .to_device(device)?;
        Ok(Self {
            ty: weight.ty,
            rows: weight.rows,
            cols: weight.cols,
            bytes,
            offsets: Mutex::new(None),
        })
    }

    /// `parts` (the rows of one Linear, one after another) with each run of parts in the same
    /// format joined into one weight, so that a gate/up pair is one product.
    pub(crate) fn joined(parts: Vec<DeviceBlocks>) -> Result<Vec<DeviceBlocks>> {
        let mut joined: Vec<DeviceBlocks> = Vec::with_capacity(parts.len());
        for part in parts {
            match joined.last_mut() {
                Some(last) if last.ty == part.ty && last.cols == part.cols => {
                    last.bytes = Tensor::cat(&[&last.bytes, &part.bytes], 0)?;
                    last.rows += part.rows;
                }
                _ => joined.push(part),
            }
        }
        Ok(joined)
    }

    /// This product's offsets for `n` input rows, as one expert holding them all.
    fn offsets(&self, n: usize) -> Result<Tensor> {
        let mut cached = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((rows, offsets)) = cached.as_ref()
            && *rows == n
        {
            return Ok(offsets.clone());
        }
        let tiles = tile_offsets([n])[1];
        let offsets = Tensor::new(&[0u32, n as u32, 0, tiles], self.bytes.device())?;
        *cached = Some((n, offsets.clone()));
        Ok(offsets)
    }

    /// The blocks, [rows, row bytes] u8.
    pub(crate) fn bytes(&self) -> &Tensor {
        &self.bytes
    }

    pub(crate) fn byte_count(&self) -> usize {
        self.bytes.elem_count()
    }

    /// X W^T: x [n, cols] (contiguous f32) gives [n, rows] f32, on a GPU in `arithmetic`.
    pub(crate) fn matmul(&self, x: &Tensor, arithmetic: Arithmetic) -> Result<Tensor> {
        let offsets = self.offsets(x.dim(0)?)?;
        Ok(x.apply_op3_no_bwd(
            &self.bytes,
            &offsets,
            &BlockProduct {
                ty: self.ty,
                rows: self.rows,
                cols: self.cols,
                arithmetic,
            },
        )?)
    }

    /// Every value as f32 [rows, cols], on the blocks' device.
    pub(crate) fn dequantize(&self) -> Result<Tensor> {
        let bytes = self.bytes.flatten_all()?.to_vec1::<u8>()?;
        let mut values = vec![0f32; self.rows * self.cols];
        if self.ty.row_bytes(self.cols).map(|b| b * self.rows) != Some(bytes.len()) {
            return Err(EngineError::InvalidInput(format!(
                "{} [{}, {}] blocks hold {} bytes",
                self.ty.name(),
                self.rows,
                self.cols,
                bytes.len()
            )));
        }
        kernels::quant::dequantize(self.ty, &bytes, &mut values);
        Ok(
            Tensor::from_vec(values, (self.rows, self.cols), &Device::Cpu)?
                .to_device(self.bytes.device())?,
        )
    }
}

/// x [n, cols] f32 times W^T from its blocks: [n, rows] f32, the grouped product of one expert
/// whose row and tile offsets are u32 [0, n, 0, tiles]; its tiles in `arithmetic` (on the CPU
/// too: [`grouped_product`]).
struct BlockProduct {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    arithmetic: Arithmetic,
}

impl BlockProduct {
    /// The input rows, once the shapes are checked.
    fn input_rows(&self, x: &Shape, bytes: &Shape, offsets: &Shape) -> candle_core::Result<usize> {
        let (n, cols) = x.dims2()?;
        let row_bytes = self.ty.row_bytes(self.cols);
        if cols != self.cols
            || row_bytes.map(|b| b * self.rows) != Some(bytes.elem_count())
            || offsets.elem_count() != 4
        {
            candle_core::bail!(
                "block product: x {x:?} against {} [{}, {}] in {} bytes",
                self.ty.name(),
                self.rows,
                self.cols,
                bytes.elem_count()
            );
        }
        Ok(n)
    }
}

impl CustomOp3 for BlockProduct {
    fn name(&self) -> &'static str {
        "block-product"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        bytes: &CpuStorage,
        bytes_layout: &Layout,
        offsets: &CpuStorage,
        offsets_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.input_rows(
            x_layout.shape(),
            bytes_layout.shape(),
            offsets_layout.shape(),
        )?;
        let x = f32_values(x, x_layout, "block product: the input")?;
        let bytes = u8_values(bytes, bytes_layout, "block product: the blocks")?;
        let offsets = u32_values(offsets, offsets_layout, "block product: the offsets")?;
        let row_offsets = [offsets[0] as usize, offsets[1] as usize];
        let weights = ExpertWeights::Blocks { ty: self.ty, bytes };
        let mut y = vec![0f32; n * self.rows];
        let sizes = (self.rows, self.cols);
        grouped_product(x, &row_offsets, weights, sizes, self.arithmetic, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((n, self.rows))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        bytes: &candle_core::CudaStorage,
        bytes_layout: &Layout,
        offsets: &candle_core::CudaStorage,
        offsets_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let n = self.input_rows(
            x_layout.shape(),
            bytes_layout.shape(),
            offsets_layout.shape(),
        )?;
        gpu::block_product(
            self,
            (x, x_layout),
            (bytes, bytes_layout),
            (offsets, offsets_layout),
            n,
        )
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::{CudaStorage, Layout, Shape};

    use super::BlockProduct;
    use crate::experts_product::{ProductRows, experts_product};

    pub(super) fn block_product(
        op: &BlockProduct,
        (x, x_layout): (&CudaStorage, &Layout),
        (bytes, bytes_layout): (&CudaStorage, &Layout),
        (offsets, offsets_layout): (&CudaStorage, &Layout),
        n: usize,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        for layout in [x_layout, bytes_layout, offsets_layout] {
            if !layout.is_contiguous() {
                candle_core::bail!("block product: operands must be contiguous");
            }
        }
        let device = x.device.clone();
        let x = x.as_cuda_slice::<f32>()?.slice(x_layout.start_offset()..);
        let offsets = offsets
            .as_cuda_slice::<u32>()?
            .slice(offsets_layout.start_offset()..);
        // One expert holding all n rows: the experts' products are a Linear's.
        let rows = ProductRows {
            rows: n,
            row_token: None,
            row_offsets: offsets.slice(0..2),
            tile_offsets: offsets.slice(2..4),
            experts: 1,
        };
        let weights = (bytes, bytes_layout.start_offset(), op.ty);
        let out = experts_product(
            &device,
            &x,
            weights,
            &rows,
            (op.rows, op.cols),
            op.arithmetic,
        )?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((n, op.rows)),
        ))
    }
}

//! The experts' grouped product (`moe_grouped_matmul.cu`) launched on candle's CUDA device:
//! every row through its expert's W^T, by the matvec or the tiles as
//! `kernels::cuda::launch_shapes::experts_product` decides. Shared by the stacked experts (a
//! layer's routed rows) and by weights in GGUF blocks (a Linear is one expert holding every
//! row).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType};
use kernels::cuda::launch_shapes::{self, Arithmetic, ExpertsProduct, ProductParameter};
use kernels::quant::GgmlType;

use crate::gpu_ptx::{config, kernel};

/// Which rows go to which expert.
pub(crate) struct ProductRows<'a> {
    /// The rows: x's rows when `row_token` is `None`, else one per entry of it.
    pub rows: usize,
    /// Each row's token in x (x then holds tokens, read in place).
    pub row_token: Option<CudaView<'a, u32>>,
    /// Expert e's rows start at entry e (experts + 1 entries), its row tiles likewise.
    pub row_offsets: CudaView<'a, u32>,
    pub tile_offsets: CudaView<'a, u32>,
    pub experts: usize,
}

/// [rows, n] f32: each row of `x` (f32 [.., k]) through its expert's W^T, the weights
/// [experts, n, k] in `format` (f32, bf16, or GGUF blocks as u8) from element `start` of
/// `weights`, in `arithmetic` where the tiles take a prompt's rows.
pub(crate) fn experts_product(
    device: &CudaDevice,
    x: &CudaView<f32>,
    (weights, start, format): (&CudaStorage, usize, GgmlType),
    rows: &ProductRows,
    (n, k): (usize, usize),
    arithmetic: Arithmetic,
) -> candle_core::Result<CudaSlice<f32>> {
    let out = device.alloc_zeros::<f32>(rows.rows * n)?;
    let Some((product, shape)) =
        launch_shapes::experts_product(rows.rows, rows.experts, n, format, arithmetic)
    else {
        return Ok(out);
    };
    let launch = Launch {
        device,
        product,
        shape,
        entry: product.entry(format),
    };
    match weights.dtype() {
        DType::F32 => launch.run(
            x,
            &weights.as_cuda_slice::<f32>()?.slice(start..),
            rows,
            (n, k),
            out,
        ),
        DType::BF16 => {
            let weights = weights.as_cuda_slice::<half::bf16>()?.slice(start..);
            launch.run(x, &weights, rows, (n, k), out)
        }
        DType::U8 => launch.run(
            x,
            &weights.as_cuda_slice::<u8>()?.slice(start..),
            rows,
            (n, k),
            out,
        ),
        other => candle_core::bail!("experts' product: weights of {other:?}"),
    }
}

struct Launch<'a> {
    device: &'a CudaDevice,
    product: ExpertsProduct,
    shape: kernels::cuda::LaunchShape,
    entry: String,
}

impl Launch<'_> {
    fn run<W: DeviceRepr>(
        &self,
        x: &CudaView<f32>,
        weights: &CudaView<W>,
        rows: &ProductRows,
        (n, k): (usize, usize),
        out: CudaSlice<f32>,
    ) -> candle_core::Result<CudaSlice<f32>> {
        let function = kernel(self.device, "moe_grouped_matmul.cu", &[], &self.entry)?;
        let stream = self.device.cuda_stream();
        let no_gather: u64 = 0;
        let (experts, n_arg, k_arg) = (rows.experts as i32, n as i32, k as i32);
        let mut launch = stream.launch_builder(&function);
        for parameter in self.product.parameters() {
            match parameter {
                ProductParameter::X => launch.arg(x),
                ProductParameter::Weights => launch.arg(weights),
                ProductParameter::RowToken => match &rows.row_token {
                    Some(row_token) => launch.arg(row_token),
                    None => launch.arg(&no_gather),
                },
                ProductParameter::RowOffsets => launch.arg(&rows.row_offsets),
                ProductParameter::TileOffsets => launch.arg(&rows.tile_offsets),
                ProductParameter::Experts => launch.arg(&experts),
                ProductParameter::N => launch.arg(&n_arg),
                ProductParameter::K => launch.arg(&k_arg),
                ProductParameter::Y => launch.arg(&out),
            };
        }
        // SAFETY: the kernel's parameters in the order `parameters()` lists them (the GPU suite
        // launches through the same list, on the emulated driver in every test run); the
        // callers' shapes give x [tokens or rows, k], the weights [experts, n, k] in the entry
        // point's format, row_token's tokens below x's rows and row_offsets ending at `rows`;
        // out is [rows, n]. Tiles past the routing's last exit at once, and the matvec's grid
        // has a row of blocks per expert.
        unsafe { launch.launch(config(self.shape)) }.w()?;
        Ok(out)
    }
}

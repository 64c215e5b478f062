//! The CPU operands of our candle ops, checked: a contiguous slice of the expected type, or an
//! error naming the op and the operand; and the arithmetic a product may use for its inputs.

use candle_core::{CpuStorage, DType, Layout};
use kernels::cuda::launch_shapes::{self, Arithmetic, ExpertsProduct};
use kernels::grouped_matmul::{ExpertWeights, grouped_matmul, grouped_matmul_bf16};

/// The arithmetic a GPU product of inputs in `dtype` (the model's compute dtype, before the ops
/// convert them to f32) may use: bf16 on tensor cores for a bf16 model, whose activations are
/// bf16 already; exact f32 otherwise (an f16 model's activations hold more bits than bf16). On
/// the CPU, [`grouped_product`] computes what the GPU's kernel would.
pub(crate) fn product_arithmetic(dtype: DType) -> Arithmetic {
    match dtype {
        DType::BF16 => Arithmetic::Bf16,
        _ => Arithmetic::F32,
    }
}

/// The experts' grouped product on the CPU (`kernels::grouped_matmul`), computing what the GPU's
/// kernel for these sizes does: in bf16 where its tiles take tensor cores, else exactly.
pub(crate) fn grouped_product(
    x: &[f32],
    row_offsets: &[usize],
    weights: ExpertWeights,
    (n, k): (usize, usize),
    arithmetic: Arithmetic,
    y: &mut [f32],
) {
    let (rows, experts) = (y.len() / n.max(1), row_offsets.len().saturating_sub(1));
    let product = launch_shapes::experts_product(rows, experts, n, weights.format(), arithmetic);
    match product {
        Some((ExpertsProduct::TensorTiles, _)) => {
            grouped_matmul_bf16(x, row_offsets, weights, n, k, y)
        }
        _ => grouped_matmul(x, row_offsets, weights, n, k, y),
    }
}

/// A contiguous f32 operand's values; `what` names it in the error ("latent attention: the
/// latent rows").
pub(crate) fn f32_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{what} must be contiguous f32"),
    }
}

/// A contiguous u32 operand's values.
pub(crate) fn u32_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [u32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{what} must be contiguous u32"),
    }
}

/// A contiguous u8 operand's values (weights in GGUF blocks).
pub(crate) fn u8_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [u8]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U8(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{what} must be contiguous u8"),
    }
}

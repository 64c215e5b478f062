//! The linear layer: y = x W^T (+ b), W stored [out, in] as in the checkpoint.
//!
//! A few input rows on the CPU in f32 (every projection of a decode step, short prefills, the
//! tokens one expert receives) go through `kernels::matvec`, which streams W once across all
//! threads; larger batches are a matmul, whose packing pays off there.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use crate::error::Result;

pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// x: [T, in] -> [T, out]
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let few_rows_f32_cpu = x.dims().first().is_some_and(|&m| m <= FEW_ROWS)
            && x.rank() == 2
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.weight.is_contiguous();
        let y = if few_rows_f32_cpu {
            self.weight.apply_op2_no_bwd(&x.contiguous()?, &MatVec)?
        } else {
            x.matmul(&self.weight.t()?)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// One layer computing several projections of the same input with one weight read.
    pub(crate) fn stack(parts: Vec<Linear>) -> Result<Linear> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if parts.iter().any(|p| p.bias.is_some()) {
            let biases = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(p.weight.dim(0)?, p.weight.dtype(), p.weight.device()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub(crate) fn bytes(&self) -> usize {
        let count = self.weight.elem_count() + self.bias.as_ref().map_or(0, Tensor::elem_count);
        count * self.weight.dtype().size_in_bytes()
    }
}

/// Input rows up to which streaming W beats a packed matmul (measured on AVX2: at 16 rows the
/// packing of a 2048 x 2816 expert matrix still costs more than it saves).
const FEW_ROWS: usize = 16;

/// W [out, in] applied to x [n, in], giving [n, out].
struct MatVec;

impl CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "matvec"
    }

    fn cpu_fwd(
        &self,
        weight: &CpuStorage,
        weight_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = weight_layout.shape().dims2()?;
        let (n, x_cols) = x_layout.shape().dims2()?;
        if x_cols != cols {
            candle_core::bail!(
                "matvec: weight {:?} cannot take input {:?}",
                weight_layout.shape(),
                x_layout.shape()
            );
        }
        let (CpuStorage::F32(weight), CpuStorage::F32(x)) = (weight, x) else {
            candle_core::bail!("matvec: f32 only");
        };
        let (Some((w0, w1)), Some((x0, x1))) = (
            weight_layout.contiguous_offsets(),
            x_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("matvec: operands must be contiguous");
        };
        let mut y = vec![0f32; n * rows];
        kernels::matvec::matmul_rows_f32(&weight[w0..w1], rows, cols, &x[x0..x1], n, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((n, rows))))
    }
}

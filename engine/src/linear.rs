//! The linear layer: y = x W^T (+ b), W stored [out, in] as in the checkpoint.
//!
//! A few input rows on the CPU in f32 (every projection of a decode step, short prefills, the
//! tokens one expert receives) go through `kernels::matvec`, which streams W once across all
//! threads; larger batches are a matmul, whose packing pays off there.
//!
//! A weight loaded from a GGUF file in a block format (Q8_0, Q4_K...) stays in that format: on
//! the CPU multiplied by `kernels::quant`, which reads the blocks directly; on a GPU uploaded as
//! the file holds it and multiplied by our kernels ([`DeviceBlocks`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use crate::device_blocks::DeviceBlocks;
use crate::error::Result;
use crate::op_operands::product_arithmetic;
use crate::quantized::QuantizedWeight;

pub(crate) struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
}

/// W [out, in] as a tensor, or as quantized row blocks stacked in order (several projections of
/// one input, such as gate and up, kept as they were stored).
pub(crate) enum LinearWeight {
    Dense(Tensor),
    Quantized(Vec<QuantizedWeight>),
    /// The same on the model's device, in the file's row order (a GPU load, or the GPU's road).
    Blocks(Vec<DeviceBlocks>),
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: LinearWeight::Dense(weight),
            bias,
        }
    }

    pub(crate) fn quantized(weight: QuantizedWeight, bias: Option<Tensor>) -> Self {
        Self {
            weight: LinearWeight::Quantized(vec![weight]),
            bias,
        }
    }

    /// x: [T, in] -> [T, out]
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(weight) => {
                let few_rows_f32_cpu = x.dims().first().is_some_and(|&m| m <= FEW_ROWS)
                    && x.rank() == 2
                    && x.device().is_cpu()
                    && x.dtype() == DType::F32
                    && weight.dtype() == DType::F32
                    && weight.is_contiguous();
                if few_rows_f32_cpu {
                    weight.apply_op2_no_bwd(&x.contiguous()?, &MatVec)?
                } else {
                    x.matmul(&weight.t()?)?
                }
            }
            LinearWeight::Quantized(parts) => {
                let dtype = x.dtype();
                x.to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&QuantizedMatmul { parts })?
                    .to_dtype(dtype)?
            }
            LinearWeight::Blocks(parts) => {
                let x32 = x.to_dtype(DType::F32)?.contiguous()?;
                let arithmetic = product_arithmetic(x.dtype());
                let outputs = parts
                    .iter()
                    .map(|part| part.matmul(&x32, arithmetic))
                    .collect::<Result<Vec<_>>>()?;
                let y = match outputs.as_slice() {
                    [one] => one.clone(),
                    _ => Tensor::cat(&outputs, 1)?,
                };
                y.to_dtype(x.dtype())?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Output features (rows of W).
    pub(crate) fn out_features(&self) -> Result<usize> {
        Ok(match &self.weight {
            LinearWeight::Dense(weight) => weight.dim(0)?,
            LinearWeight::Quantized(parts) => parts.iter().map(|p| p.rows).sum(),
            LinearWeight::Blocks(parts) => parts.iter().map(|p| p.rows).sum(),
        })
    }

    /// Whether W is kept in a GGUF block format on the CPU.
    pub(crate) fn is_quantized(&self) -> bool {
        matches!(self.weight, LinearWeight::Quantized(_))
    }

    /// W as a tensor, for the code that splits it (MLA's absorbed attention); a quantized W is
    /// dequantized.
    pub(crate) fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(weight) => Ok(weight.clone()),
            LinearWeight::Quantized(parts) => {
                let cols = parts[0].cols;
                let values: Vec<f32> = parts.iter().flat_map(|p| p.dequantize()).collect();
                Ok(Tensor::from_vec(
                    values,
                    (total_rows(parts), cols),
                    &candle_core::Device::Cpu,
                )?)
            }
            LinearWeight::Blocks(parts) => {
                let values = parts
                    .iter()
                    .map(DeviceBlocks::dequantize)
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&values, 0)?)
            }
        }
    }

    /// The CPU's block weights moved to `device` in the file's row order, as a GPU load keeps
    /// them ([`LinearWeight::Blocks`]); other weights stay as they are.
    pub(crate) fn keep_blocks_on(&mut self, device: &candle_core::Device) -> Result<()> {
        if let LinearWeight::Quantized(parts) = &self.weight {
            let parts = parts
                .iter()
                .map(|part| DeviceBlocks::upload(part, device))
                .collect::<Result<Vec<_>>>()?;
            self.weight = LinearWeight::Blocks(DeviceBlocks::joined(parts)?);
        }
        Ok(())
    }

    /// One layer computing several projections of the same input with one weight read.
    pub(crate) fn stack(parts: Vec<Linear>) -> Result<Linear> {
        // A part without a bias adds zeros in its rows.
        let bias = match parts.iter().find_map(|p| p.bias.as_ref()) {
            Some(template) => {
                let biases = parts
                    .iter()
                    .map(|p| match &p.bias {
                        Some(b) => Ok(b.clone()),
                        None => Ok(Tensor::zeros(
                            p.out_features()?,
                            template.dtype(),
                            template.device(),
                        )?),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&biases, 0)?)
            }
            None => None,
        };
        let weight = if parts
            .iter()
            .all(|p| matches!(p.weight, LinearWeight::Quantized(_)))
        {
            LinearWeight::Quantized(
                parts
                    .into_iter()
                    .flat_map(|p| match p.weight {
                        LinearWeight::Quantized(q) => q,
                        _ => unreachable!("all parts are quantized"),
                    })
                    .collect(),
            )
        } else if parts
            .iter()
            .all(|p| matches!(p.weight, LinearWeight::Blocks(_)))
        {
            LinearWeight::Blocks(DeviceBlocks::joined(
                parts
                    .into_iter()
                    .flat_map(|p| match p.weight {
                        LinearWeight::Blocks(blocks) => blocks,
                        _ => unreachable!("all parts are blocks"),
                    })
                    .collect(),
            )?)
        } else {
            let weights = parts
                .iter()
                .map(Linear::dense_weight)
                .collect::<Result<Vec<_>>>()?;
            LinearWeight::Dense(Tensor::cat(&weights, 0)?)
        };
        Ok(Linear { weight, bias })
    }

    pub(crate) fn bytes(&self) -> usize {
        let bias = self
            .bias
            .as_ref()
            .map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
        bias + match &self.weight {
            LinearWeight::Dense(weight) => weight.elem_count() * weight.dtype().size_in_bytes(),
            LinearWeight::Quantized(parts) => parts.iter().map(|p| p.bytes().len()).sum(),
            LinearWeight::Blocks(parts) => parts.iter().map(DeviceBlocks::byte_count).sum(),
        }
    }
}

fn total_rows(parts: &[QuantizedWeight]) -> usize {
    parts.iter().map(|p| p.rows).sum()
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

/// X W^T ([n, rows]) for quantized W (its parts' rows one after another) and f32 X ([n, in],
/// `in` every part's columns).
pub(crate) fn quantized_matmul(parts: &[QuantizedWeight], x: &[f32], n: usize) -> Vec<f32> {
    let rows = total_rows(parts);
    let mut y = vec![0f32; n * rows];
    if let [part] = parts {
        part.matmul(x, n, &mut y);
    } else {
        // Each part into its own [n, part rows], then side by side in Y's rows.
        let mut first = 0;
        for part in parts {
            let mut part_y = vec![0f32; n * part.rows];
            part.matmul(x, n, &mut part_y);
            for (row, values) in part_y.chunks_exact(part.rows).enumerate() {
                y[row * rows + first..][..part.rows].copy_from_slice(values);
            }
            first += part.rows;
        }
    }
    y
}

/// X W^T for quantized W (its parts' rows one after another) and f32 X [n, in] on the CPU.
struct QuantizedMatmul<'a> {
    parts: &'a [QuantizedWeight],
}

impl CustomOp1 for QuantizedMatmul<'_> {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, cols) = layout.shape().dims2()?;
        let (CpuStorage::F32(x), Some((x0, x1))) = (x, layout.contiguous_offsets()) else {
            candle_core::bail!("quantized matmul: the input must be contiguous f32");
        };
        if let Some(part) = self.parts.iter().find(|p| p.cols != cols) {
            candle_core::bail!("quantized matmul: weight {part:?} cannot take input [{n}, {cols}]");
        }
        let y = quantized_matmul(self.parts, &x[x0..x1], n);
        Ok((CpuStorage::F32(y), Shape::from((n, total_rows(self.parts)))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        candle_core::bail!("quantized weights are multiplied on the CPU only")
    }
}

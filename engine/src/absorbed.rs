//! MLA's absorbed-form weights: W_UK and W_UV, cut per head out of kv_b_proj, and their per-head
//! products (q_nope -> latent query, attended latent -> value).
//!
//! A decoded token reads them in every layer. In f32 they are 8.4 MB a layer for DeepSeek-V2-Lite,
//! more than its attention's quantized projections together. A GGUF file that stores them apart
//! (`attn_k_b`, `attn_v_b`) in a block format is multiplied as stored (1.2 MB a layer in a
//! Q4_K_M file's Q5_0 and Q4_K), as llama.cpp does; other quantized models get a Q8_0 copy
//! (2.1 MB a layer). W_UK is held transposed per head ([L, N] rows) so that both products are
//! ordinary rows-times-input products.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use kernels::quant::interleaved::ROWS_TOGETHER;
use kernels::quant::{GgmlType, MatVecJob, matvec_many_quant, quantize_q8_0};

use crate::error::{EngineError, Result};
use crate::quantized::QuantizedWeight;
use crate::weight_arena::WeightArena;

/// The shapes of one layer's heads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadShapes {
    pub heads: usize,
    /// N: the no-rope part of a query/key head.
    pub nope: usize,
    /// V: a value head.
    pub v_dim: usize,
    /// L: the latent (kv_lora_rank).
    pub kv_lora: usize,
}

pub(crate) enum AbsorbedWeights {
    /// W_UK [H, N, L] and W_UV^T [H, L, V] in the compute dtype, multiplied by candle.
    Dense { w_uk: Tensor, w_uv_t: Tensor },
    /// W_UK^T [H * L, N] and W_UV [H * V, L] in a block format (the file's, or Q8_0), each
    /// head's rows together.
    Quantized {
        uk_t: QuantizedWeight,
        uv: QuantizedWeight,
    },
}

impl AbsorbedWeights {
    /// From kv_b_proj's weight [H * (N + V), L]. `quantize_into`: keep them as Q8_0 in that
    /// arena's memory (the caller asks when the model's own weights are quantized); dense anyway
    /// when N or L is not a whole number of Q8_0 blocks.
    pub(crate) fn new(
        kv_b: &Tensor,
        shapes: HeadShapes,
        dtype: DType,
        quantize_into: Option<&WeightArena>,
    ) -> Result<Self> {
        let HeadShapes {
            heads,
            nope,
            v_dim,
            kv_lora,
        } = shapes;
        let per_head = kv_b.reshape((heads, nope + v_dim, kv_lora))?;
        let w_uk = per_head.narrow(1, 0, nope)?;
        let w_uv = per_head.narrow(1, nope, v_dim)?;
        let block = GgmlType::Q8_0.block_len();
        if let Some(arena) = quantize_into
            && nope % block == 0
            && kv_lora % block == 0
            && kv_b.device().is_cpu()
        {
            let as_q8_0 = |name: &str, matrix: &Tensor, head_rows: usize, cols: usize| {
                let values = matrix
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let bytes: Arc<Vec<u8>> = Arc::new(quantize_q8_0(&values));
                let rows = heads * head_rows;
                let weight = QuantizedWeight::new(name, GgmlType::Q8_0, rows, cols, bytes, 0)?;
                Ok::<_, EngineError>(interleaved_per_head(weight, head_rows, arena))
            };
            return Ok(Self::Quantized {
                uk_t: as_q8_0("W_UK^T", &w_uk.transpose(1, 2)?, kv_lora, nope)?,
                uv: as_q8_0("W_UV", &w_uv, v_dim, kv_lora)?,
            });
        }
        Ok(Self::Dense {
            w_uk: w_uk.to_dtype(dtype)?.contiguous()?,
            w_uv_t: w_uv.transpose(1, 2)?.to_dtype(dtype)?.contiguous()?,
        })
    }

    /// q_latent[h] = q_nope[h] W_UK[h]: [H, T, N] -> [H, T, L].
    pub(crate) fn query_to_latent(&self, q_nope: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense { w_uk, .. } => Ok(q_nope.matmul(w_uk)?),
            Self::Quantized { uk_t, .. } => per_head_products(uk_t, q_nope),
        }
    }

    /// out[h] = attended[h] W_UV[h]^T: [H, T, L] -> [H, T, V].
    pub(crate) fn latent_to_value(&self, attended: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense { w_uv_t, .. } => Ok(attended.matmul(w_uv_t)?),
            Self::Quantized { uv, .. } => per_head_products(uv, attended),
        }
    }

    /// The bytes a decoded token reads from these weights.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Dense { w_uk, w_uv_t } => {
                (w_uk.elem_count() + w_uv_t.elem_count()) * w_uk.dtype().size_in_bytes()
            }
            Self::Quantized { uk_t, uv } => uk_t.bytes().len() + uv.bytes().len(),
        }
    }
}

/// `weight` with its rows interleaved when each head's block of `head_rows` rows is whole groups
/// of eight (each head's block is multiplied on its own), else as it is.
pub(crate) fn interleaved_per_head(
    weight: QuantizedWeight,
    head_rows: usize,
    arena: &WeightArena,
) -> QuantizedWeight {
    if head_rows.is_multiple_of(ROWS_TOGETHER) {
        weight.interleaved(arena)
    } else {
        weight
    }
}

/// x [H, T, cols] times each head's block of `weight`'s rows ([H * rows, cols]) -> [H, T, rows].
/// One token (a decode step) takes every head in one parallel pass; more take a head at a time.
fn per_head_products(weight: &QuantizedWeight, x: &Tensor) -> Result<Tensor> {
    let (heads, tokens, cols) = x.dims3()?;
    let rows = weight.rows / heads;
    let head_weights = (0..heads)
        .map(|head| weight.rows("an absorbed half", head * rows, rows))
        .collect::<Result<Vec<_>>>()?;
    let (dtype, device) = (x.dtype(), x.device().clone());
    let x = x
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut y = vec![0f32; heads * tokens * rows];
    if tokens == 1 {
        let jobs: Vec<MatVecJob> = head_weights
            .iter()
            .enumerate()
            .map(|(head, weights)| weights.job(head))
            .collect();
        let inputs: Vec<&[f32]> = x.chunks_exact(cols).collect();
        let mut outs: Vec<&mut [f32]> = y.chunks_exact_mut(rows).collect();
        matvec_many_quant(&jobs, &inputs, &mut outs);
    } else {
        for ((weights, x), y) in head_weights
            .iter()
            .zip(x.chunks_exact(tokens * cols))
            .zip(y.chunks_exact_mut(tokens * rows))
        {
            weights.matmul(x, tokens, y);
        }
    }
    Ok(Tensor::from_vec(y, (heads, tokens, rows), &device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let mut state = seed;
        let count = shape.0 * shape.1 * shape.2;
        let values: Vec<f32> = (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_relative_error(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn q8_0_products_match_the_dense_ones_for_one_and_several_tokens() {
        let shapes = HeadShapes {
            heads: 3,
            nope: 64,
            v_dim: 32,
            kv_lora: 96,
        };
        let kv_b = random((1, 3 * (64 + 32), 96), 7).squeeze(0).unwrap();
        let dense = AbsorbedWeights::new(&kv_b, shapes, DType::F32, None).unwrap();
        let quantized =
            AbsorbedWeights::new(&kv_b, shapes, DType::F32, Some(&WeightArena::new())).unwrap();
        assert!(matches!(quantized, AbsorbedWeights::Quantized { .. }));
        // Q8_0: 34 bytes per 32 values instead of 128.
        assert_eq!(quantized.bytes() * 128, dense.bytes() * 34);
        for tokens in [1, 5] {
            let q_nope = random((3, tokens, 64), 11 + tokens as u64);
            let latent = quantized.query_to_latent(&q_nope).unwrap();
            let expected = dense.query_to_latent(&q_nope).unwrap();
            assert_eq!(latent.dims(), &[3, tokens, 96]);
            // Weights and inputs are both rounded to 8 bits: about 1% of the largest product.
            let error = max_relative_error(&latent, &expected);
            assert!(error < 2e-2, "{tokens} token(s): W_UK error {error}");
            let attended = random((3, tokens, 96), 23 + tokens as u64);
            let value = quantized.latent_to_value(&attended).unwrap();
            let expected = dense.latent_to_value(&attended).unwrap();
            assert_eq!(value.dims(), &[3, tokens, 32]);
            let error = max_relative_error(&value, &expected);
            assert!(error < 2e-2, "{tokens} token(s): W_UV error {error}");
        }
    }

    #[test]
    fn shapes_that_are_not_whole_blocks_stay_dense() {
        let shapes = HeadShapes {
            heads: 2,
            nope: 48,
            v_dim: 32,
            kv_lora: 64,
        };
        let kv_b = random((1, 2 * 80, 64), 3).squeeze(0).unwrap();
        let weights =
            AbsorbedWeights::new(&kv_b, shapes, DType::F32, Some(&WeightArena::new())).unwrap();
        assert!(matches!(weights, AbsorbedWeights::Dense { .. }));
    }
}

//! The experts' projections of a prompt in one call: the tokens routed to each expert gathered
//! into consecutive rows of x, each expert's rows times its own W^T. The CPU reference of the
//! GPU kernels `moe_grouped_matmul_*` and `moe_expert_matvec_*`, and in bf16 arithmetic of the
//! tensor-core tiles `moe_grouped_mma_*` (`kernels/cuda/moe_grouped_matmul.cu`).

use rayon::prelude::*;

use crate::quant::{GgmlType, dequantize};

/// Every expert's W ([n, k] row-major, as a Linear's weight), expert after expert.
#[derive(Debug, Clone, Copy)]
pub enum ExpertWeights<'a> {
    F32(&'a [f32]),
    /// bf16 bits; each value is the top half of its f32.
    Bf16(&'a [u16]),
    /// Rows of GGUF blocks of `ty` (each row `k / ty.block_len()` blocks), as in the file.
    Blocks {
        ty: GgmlType,
        bytes: &'a [u8],
    },
}

impl ExpertWeights<'_> {
    /// Values held, over all experts.
    pub fn values(&self) -> usize {
        match self {
            Self::F32(w) => w.len(),
            Self::Bf16(w) => w.len(),
            Self::Blocks { ty, bytes } => bytes.len() / ty.block_bytes() * ty.block_len(),
        }
    }

    /// The format the GPU kernels' entry points are named by.
    pub fn format(&self) -> GgmlType {
        match self {
            Self::F32(_) => GgmlType::F32,
            Self::Bf16(_) => GgmlType::BF16,
            Self::Blocks { ty, .. } => *ty,
        }
    }

    /// Weight row `row` (over all experts' rows) of `k` values dotted with `input`.
    fn dot_row(&self, row: usize, k: usize, input: &[f32], scratch: &mut Vec<f32>) -> f32 {
        match self {
            Self::F32(w) => input
                .iter()
                .zip(&w[row * k..][..k])
                .map(|(a, b)| a * b)
                .sum(),
            Self::Bf16(w) => input
                .iter()
                .zip(&w[row * k..][..k])
                .map(|(&a, &b)| a * f32::from_bits((b as u32) << 16))
                .sum(),
            Self::Blocks { ty, bytes } => {
                let row_bytes = ty.row_bytes(k).expect("rows are whole blocks");
                scratch.resize(k, 0.0);
                dequantize(*ty, &bytes[row * row_bytes..][..row_bytes], scratch);
                input.iter().zip(scratch.iter()).map(|(a, b)| a * b).sum()
            }
        }
    }
}

/// y [rows, n] = x [rows, k] times W_e^T for the rows `row_offsets[e]..row_offsets[e + 1]` of
/// expert e (`row_offsets` has one more entry than there are experts, from 0 to rows).
///
/// Panics if the sizes disagree (callers build them from one routing).
pub fn grouped_matmul(
    x: &[f32],
    row_offsets: &[usize],
    weights: ExpertWeights,
    n: usize,
    k: usize,
    y: &mut [f32],
) {
    let experts = row_offsets.len().saturating_sub(1);
    let rows = row_offsets.last().copied().unwrap_or(0);
    assert!(row_offsets.windows(2).all(|w| w[0] <= w[1]) && row_offsets[0] == 0);
    assert_eq!(x.len(), rows * k, "x is [rows, k]");
    assert_eq!(y.len(), rows * n, "y is [rows, n]");
    assert_eq!(
        weights.values(),
        experts * n * k,
        "weights are [experts, n, k]"
    );
    if let ExpertWeights::Blocks { ty, .. } = weights {
        assert!(
            ty.row_bytes(k).is_some(),
            "rows of {k} are not whole {} blocks",
            ty.name()
        );
    }
    y.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (row, out)| {
            let expert = row_offsets.partition_point(|&start| start <= row) - 1;
            let input = &x[row * k..(row + 1) * k];
            for (j, value) in out.iter_mut().enumerate() {
                *value = weights.dot_row(expert * n + j, k, input, scratch);
            }
        });
}

/// [`grouped_matmul`] in bf16 arithmetic, as the GPU's tensor-core tiles compute it: x and every
/// weight rounded to bf16 (to nearest even; a weight in blocks dequantized first), the
/// products summed in f32.
pub fn grouped_matmul_bf16(
    x: &[f32],
    row_offsets: &[usize],
    weights: ExpertWeights,
    n: usize,
    k: usize,
    y: &mut [f32],
) {
    let round = |v: f32| half::bf16::from_f32(v).to_bits();
    let x: Vec<f32> = x
        .iter()
        .map(|&v| f32::from_bits((round(v) as u32) << 16))
        .collect();
    let rounded: Vec<u16>;
    let weights = match weights {
        ExpertWeights::Bf16(_) => weights,
        ExpertWeights::F32(w) => {
            rounded = w.iter().map(|&v| round(v)).collect();
            ExpertWeights::Bf16(&rounded)
        }
        ExpertWeights::Blocks { ty, bytes } => {
            let mut values = vec![0f32; weights.values()];
            dequantize(ty, bytes, &mut values);
            rounded = values.into_iter().map(round).collect();
            ExpertWeights::Bf16(&rounded)
        }
    };
    grouped_matmul(&x, row_offsets, weights, n, k, y);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_experts_rows_meet_its_own_weights() {
        // Two inputs of k = 2; expert 0 takes row 0, expert 1 none, expert 2 row 1; n = 2.
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [
            1.0, 0.0, 0.0, 1.0, // expert 0: identity
            9.0, 9.0, 9.0, 9.0, // expert 1: unused
            1.0, 1.0, 2.0, -1.0, // expert 2
        ];
        let mut y = [0.0; 4];
        grouped_matmul(&x, &[0, 1, 1, 2], ExpertWeights::F32(&w), 2, 2, &mut y);
        assert_eq!(y, [1.0, 2.0, 7.0, 2.0]);
        // The same weights as bf16 (all exact in bf16).
        let bits: Vec<u16> = w.iter().map(|v: &f32| (v.to_bits() >> 16) as u16).collect();
        let mut y16 = [0.0; 4];
        grouped_matmul(
            &x,
            &[0, 1, 1, 2],
            ExpertWeights::Bf16(&bits),
            2,
            2,
            &mut y16,
        );
        assert_eq!(y16, y);
    }

    #[test]
    fn bf16_arithmetic_rounds_x_and_every_weight_to_nearest_even() {
        // 1 + 2^-9 lies halfway between bf16 neighbours 1 and 1 + 2^-7 and goes to the even 1;
        // 1 + 3 * 2^-9 goes up to 1 + 2^-7. One expert, k = 2, n = 1.
        let (half_way, above) = (1.0 + 2f32.powi(-9), 1.0 + 3.0 * 2f32.powi(-9));
        let up = 1.0 + 2f32.powi(-7);
        let mut y = [0.0];
        grouped_matmul_bf16(
            &[half_way, 1.0],
            &[0, 1],
            ExpertWeights::F32(&[1.0, above]),
            1,
            2,
            &mut y,
        );
        assert_eq!(y, [1.0 + up]);
        // A Q8_0 block (d = 3 * 2^-10 as f16) whose quant 3 is 127: the value 381 / 1024 needs
        // 9 significant bits, halfway between bf16's 380 and 382 / 1024: the even 380.
        let mut block = vec![0x00u8, 0x1a];
        block.extend([0, 0, 0, 127]);
        block.resize(34, 0);
        let mut x = [0.0f32; 32];
        x[3] = 1.0;
        grouped_matmul_bf16(
            &x,
            &[0, 1],
            ExpertWeights::Blocks {
                ty: GgmlType::Q8_0,
                bytes: &block,
            },
            1,
            32,
            &mut y,
        );
        assert_eq!(y, [380.0 / 1024.0]);
    }
}

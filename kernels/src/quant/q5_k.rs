//! Q5_K (ggml's `block_q5_K`): blocks of 256 values in 8 sub-blocks of 32, value
//! `d * scale[s] * q - dmin * min[s]` with q in 0..=31 and 6-bit `scale`, `min` per sub-block.
//!
//! Bytes of a block: f16 `d`, f16 `dmin`, 12 bytes of scales and minimums packed as Q4_K's, 32
//! bytes of fifth bits (bit s of byte l is the fifth bit of value l of sub-block s), then 128
//! bytes of low nibbles laid out as Q4_K's.

use super::activations::{BlockQ8K, QK_K};
use super::fields::f16_at;
use super::q4_k::{minimums_times_sums, scales_and_mins};
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

const BLOCK_BYTES: usize = 176;

/// The quants of one block, in value order.
fn unpack(block: &[u8]) -> [u8; QK_K] {
    let (fifth_bits, nibbles) = (&block[16..48], &block[48..176]);
    std::array::from_fn(|i| {
        let (sub, l) = (i / 32, i % 32);
        let low = (nibbles[32 * (sub / 2) + l] >> (4 * (sub % 2))) & 0x0F;
        low | (((fifth_bits[l] >> sub) & 1) << 4)
    })
}

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, out) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (d, dmin) = (f16_at(block), f16_at(&block[2..]));
        let (scales, mins) = scales_and_mins(&block[4..]);
        let quants = unpack(block);
        for (s, (out, quants)) in out
            .chunks_exact_mut(32)
            .zip(quants.chunks_exact(32))
            .enumerate()
        {
            // As ggml: the sub-block's factors first, then one multiply and one subtraction.
            let (scale, min) = (d * scales[s] as f32, dmin * mins[s] as f32);
            for (y, &q) in out.iter_mut().zip(quants) {
                *y = scale * q as f32 - min;
            }
        }
    }
}

/// One Q5_K weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q5_k_q8_k(weights: &[u8], x: &[BlockQ8K]) -> f32 {
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q5_K's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8K;

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q5_K");
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_avx2(rows, inputs) };
            }
        }
        tile_by_pairs(rows, inputs, dot_portable)
    }
}

fn dot_portable(weights: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (block, act) in weights.chunks_exact(BLOCK_BYTES).zip(x) {
        let (scales, mins) = scales_and_mins(&block[4..]);
        let quants = unpack(block);
        let scaled_sum: i32 = quants
            .chunks_exact(32)
            .zip(act.quants.chunks_exact(32))
            .zip(scales)
            .map(|((w, a), scale)| {
                let sum: i32 = w.iter().zip(a).map(|(&w, &a)| w as i32 * a as i32).sum();
                scale as i32 * sum
            })
            .sum();
        let d = f16_at(block) * act.scale;
        let dmin = f16_at(&block[2..]) * act.scale;
        total += d * scaled_sum as f32 - dmin * minimums_times_sums(&mins, act) as f32;
    }
    total
}

/// Q4_K's kernel, with each sub-block's fifth bits added as 16 before the `maddubs` (pair sums
/// at most 2 * 31 * 127).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&[BlockQ8K]; N],
) -> [[f32; N]; R] {
    super::q4_k::with_minimums_tile::<R, N, true>(rows, inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q5K);
}

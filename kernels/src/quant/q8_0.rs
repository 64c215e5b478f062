//! Q8_0 (ggml's `block_q8_0`): blocks of 32 values `d * q`, q signed.
//!
//! Bytes of a block: f16 `d`, then 32 `i8` quants.

use super::activations::{BlockQ8_0, QK8_0};
use super::fields::f16_at;
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

const BLOCK_BYTES: usize = 34;

/// The signed quants of one block, in value order.
fn unpack(block: &[u8]) -> [i8; QK8_0] {
    std::array::from_fn(|i| block[2 + i] as i8)
}

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, out) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK8_0))
    {
        let d = f16_at(block);
        for (y, q) in out.iter_mut().zip(unpack(block)) {
            *y = q as f32 * d;
        }
    }
}

/// One Q8_0 weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q8_0_q8_0(weights: &[u8], x: &[BlockQ8_0]) -> f32 {
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q8_0's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8_0;

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8_0]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q8_0");
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_avx2(rows, inputs) };
            }
        }
        tile_by_pairs(rows, inputs, dot_portable)
    }

    fn tile_rows(inputs: usize) -> usize {
        if inputs == 1 { 4 } else { 2 }
    }
}

fn dot_portable(weights: &[u8], x: &[BlockQ8_0]) -> f32 {
    let mut total = 0f32;
    for (block, act) in weights.chunks_exact(BLOCK_BYTES).zip(x) {
        let sum: i32 = unpack(block)
            .iter()
            .zip(&act.quants)
            .map(|(&w, &a)| w as i32 * a as i32)
            .sum();
        total += f16_at(block) * act.scale * sum as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2<const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&[BlockQ8_0]; N],
) -> [[f32; N]; R] {
    super::x86::q8_0_tile::<Kernel, R, N>(rows, BLOCK_BYTES, inputs)
}

#[cfg(target_arch = "x86_64")]
impl super::x86::SignedQuants for Kernel {
    /// The weight bytes are the signed quants already; they may be -128, the activations never
    /// are (see `dot_magnitudes_signs`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_quants(block: *const u8) -> std::arch::x86_64::__m256i {
        // SAFETY: the block's 32 quants follow its scale (the caller's promise).
        unsafe { std::arch::x86_64::_mm256_loadu_si256(block.add(2).cast()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q8_0);
}

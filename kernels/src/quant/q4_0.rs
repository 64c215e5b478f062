//! Q4_0 (ggml's `block_q4_0`): blocks of 32 values `d * (q - 8)`, q in 0..=15.
//!
//! Bytes of a block: f16 `d`, then 16 bytes whose low nibbles are values 0..16 and whose high
//! nibbles are values 16..32.

use super::activations::{BlockQ8_0, QK8_0};
use super::fields::f16_at;
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

const BLOCK_BYTES: usize = 18;

/// The signed quants (q - 8) of one block, in value order.
fn unpack(block: &[u8]) -> [i8; QK8_0] {
    let nibbles = &block[2..18];
    std::array::from_fn(|i| {
        let byte = nibbles[i % 16];
        let q = if i < 16 { byte & 0x0F } else { byte >> 4 };
        q as i8 - 8
    })
}

pub(super) fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (block, out) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK8_0))
    {
        let d = f16_at(block);
        for (y, q) in out.iter_mut().zip(unpack(block)) {
            *y = d * q as f32;
        }
    }
}

/// One Q4_0 weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q4_0_q8_0(weights: &[u8], x: &[BlockQ8_0]) -> f32 {
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q4_0's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8_0;

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8_0]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q4_0");
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
    /// The nibbles unpacked to bytes, less 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_quants(block: *const u8) -> std::arch::x86_64::__m256i {
        use super::x86::*;
        use std::arch::x86_64::*;
        // SAFETY: the block's 16 nibble bytes follow its scale (the caller's promise).
        let nibbles = unsafe { nibbles_low_then_high(block.add(2)) };
        _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q4_0);
}

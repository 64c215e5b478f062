//! Q5_0 (ggml's `block_q5_0`): blocks of 32 values `d * (q - 16)`, q in 0..=31.
//!
//! Bytes of a block: f16 `d`; a little-endian u32 whose bit i is the fifth bit of value i; then
//! 16 bytes whose low nibbles are values 0..16 and whose high nibbles are values 16..32.

use super::activations::{BlockQ8_0, QK8_0};
use super::fields::f16_at;
use super::row_dot::{RowDot, check_tile, tile_by_pairs};

const BLOCK_BYTES: usize = 22;

fn fifth_bits(block: &[u8]) -> u32 {
    u32::from_le_bytes([block[2], block[3], block[4], block[5]])
}

/// The signed quants (q - 16) of one block, in value order.
fn unpack(block: &[u8]) -> [i8; QK8_0] {
    let high_bits = fifth_bits(block);
    let nibbles = &block[6..22];
    std::array::from_fn(|i| {
        let byte = nibbles[i % 16];
        let low = if i < 16 { byte & 0x0F } else { byte >> 4 };
        let q = low | ((((high_bits >> i) & 1) as u8) << 4);
        q as i8 - 16
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

/// One Q5_0 weight row times one quantized activation row.
///
/// Panics unless the row holds exactly `x.len()` blocks.
pub fn dot_q5_0_q8_0(weights: &[u8], x: &[BlockQ8_0]) -> f32 {
    Kernel::dot_tile([weights], [x])[0][0]
}

/// Q5_0's dot products for `matmul_rows_quant`.
pub(super) struct Kernel;

impl RowDot for Kernel {
    type Activation = BlockQ8_0;

    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[BlockQ8_0]; N],
    ) -> [[f32; N]; R] {
        check_tile(&rows, &inputs, BLOCK_BYTES, "Q5_0");
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::has_avx2_fma_f16c() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { dot_avx2(rows, inputs) };
            }
        }
        tile_by_pairs(rows, inputs, dot_portable)
    }

    /// The fifth bits' expansion is the dearest unpacking of the 32-value formats: a row's
    /// blocks meet 8 inputs at once (same run, 1 thread, 2048x1408 n=64, 300 calls:
    /// 3384-3458 ms of CPU with 2 rows x 4 inputs, 2683-2743 with 1 row x 8 inputs).
    fn inputs_at_once() -> usize {
        8
    }

    fn tile_rows(inputs: usize) -> usize {
        match inputs {
            1 => 4,
            2..=4 => 2,
            _ => 1,
        }
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
    /// (low | fifth << 4) - 16 is `low` when the fifth bit is set and `low | 0xF0` (low - 16 as
    /// a signed byte) when it is not: one OR instead of a shift, an OR and a subtraction.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed_quants(block: *const u8) -> std::arch::x86_64::__m256i {
        use super::x86::*;
        use std::arch::x86_64::*;
        // SAFETY: a Q5_0 block is its scale, 4 bytes of fifth bits and 16 of nibbles (the
        // caller promises a whole one).
        let (bits, nibbles) = unsafe {
            (
                block.add(2).cast::<u32>().read_unaligned(),
                nibbles_low_then_high(block.add(6)),
            )
        };
        let fifth_set = bytes_from_bits(u32::from_le(bits));
        let below_sixteen = _mm256_andnot_si256(fifth_set, _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(nibbles, below_sixteen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    crate::quant::test_support::dot_kernel_tests!(GgmlType::Q5_0);
}

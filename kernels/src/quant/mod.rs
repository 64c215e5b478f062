//! ggml's block-quantized weight formats: what a block holds, how to turn blocks back into f32,
//! and products that read the blocks directly.
//!
//! A quantized row of `n` values is `n / block_len` blocks of `block_bytes` bytes each, laid out
//! exactly as llama.cpp writes them in a GGUF file, so tensors are used in place from the mapped
//! file without a copy.
//!
//! - [`dequantize`]: blocks back to f32, bit for bit as ggml (and gguf-py) compute them.
//! - [`quantize_row_q8_0`], [`quantize_row_q8_k`]: activations to 8-bit blocks, so that a weight row
//!   times an activation row is an integer dot product per block ([`dot_q4_k_q8_k`] and friends).
//! - [`matmul_rows_quant`]: Y = X W^T for a few input rows, W quantized, in parallel over W's rows.
//!
//! One file per format holds everything that knows that format's bytes: its unpacking, its
//! dequantization and its dot products (portable, and AVX2 where the CPU has it).

mod activations;
mod amx;
mod dequantize;
mod fields;
mod floats;
mod instruction_set;
pub mod interleaved;
mod matmul;
mod matvec_many;
mod q4_0;
mod q4_k;
mod q4_k_x8;
mod q5_0;
mod q5_k;
mod q6_k;
mod q6_k_x8;
mod q8_0;
mod q8_0_x8;
mod q8_k_groups;
mod row_dot;
#[cfg(test)]
mod test_support;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activations::{BlockQ8_0, BlockQ8K, QK_K, QK8_0, quantize_row_q8_0, quantize_row_q8_k};
pub use amx::{TileStatus, tile_status};
#[doc(hidden)]
pub use amx::{emulate_tiles_for_tests, pack_tile_panels};
pub use dequantize::dequantize;
pub use instruction_set::{InstructionSet, limit_instruction_set};
pub use interleaved::RowLayout;
pub use matmul::matmul_rows_quant;
pub use matvec_many::{MatVecJob, matvec_many_quant};
pub use q4_0::dot_q4_0_q8_0;
pub use q4_k::dot_q4_k_q8_k;
pub use q5_0::dot_q5_0_q8_0;
pub use q5_k::dot_q5_k_q8_k;
pub use q6_k::dot_q6_k_q8_k;
pub use q8_0::{dot_q8_0_q8_0, quantize_q8_0};

/// The tensor element types we read, numbered as in ggml's `enum ggml_type` (the numbers are the
/// ones stored in GGUF files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q5_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

impl GgmlType {
    pub const ALL: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::BF16,
    ];

    /// The type with ggml's number `id`, or `None` for a type we do not read.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's number for the type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q5_0 => 6,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The name llama.cpp prints for the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Values per block (1 for the plain float types).
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            // f16 scale + 16 bytes of nibbles
            GgmlType::Q4_0 => 18,
            // f16 scale + 4 bytes of fifth bits + 16 bytes of nibbles
            GgmlType::Q5_0 => 22,
            // f16 scale + 32 signed bytes
            GgmlType::Q8_0 => 34,
            // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
            GgmlType::Q4K => 144,
            // as Q4_K plus 32 bytes of fifth bits
            GgmlType::Q5K => 176,
            // 128 bytes low nibbles, 64 bytes high 2 bits, 16 signed 8-bit scales, f16 d
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of a row of `len` values, or `None` when `len` is not a whole number of blocks.
    pub fn row_bytes(self, len: usize) -> Option<usize> {
        len.is_multiple_of(self.block_len())
            .then(|| len / self.block_len() * self.block_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_none() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        // Q4_1 (3) and IQ2_XXS (16) exist in ggml but are not read here.
        assert_eq!(GgmlType::from_id(3), None);
        assert_eq!(GgmlType::from_id(16), None);
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q8_0.row_bytes(64), Some(68));
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4K.row_bytes(1408), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
    }
}

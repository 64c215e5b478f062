//! Matrices whose rows are stored eight at a time, interleaved (see [`super::q4_k_x8`]): one
//! front for every format that has such a layout, so that callers hold a [`RowLayout`] and a
//! type instead of knowing each format's module.
//!
//! The layout is ours, not the file's: a loader rearranges a weight once, when it loads it, and
//! every product of a decode step or a prompt then reads eight rows per vector instruction.

use super::activations::{BlockQ8_0, BlockQ8K};
use super::{GgmlType, q4_k_x8, q8_0_x8};

/// Rows stored together in an interleaved layout.
pub const ROWS_TOGETHER: usize = 8;

/// How a quantized matrix's rows lie in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RowLayout {
    /// Row after row, each row's blocks in order: as a GGUF file stores them.
    #[default]
    InFileOrder,
    /// Groups of eight rows, each group's blocks interleaved (only for the types
    /// [`can_interleave`] accepts, and row counts that are multiples of 8).
    Interleaved,
}

/// Whether `ty` has an interleaved layout and kernels for it.
pub fn can_interleave(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q8_0 | GgmlType::Q5_0)
}

/// `rows` rows of `ty` (`row_bytes` each, in file order) rearranged into interleaved groups of
/// eight; the result has the same length.
///
/// Panics unless [`can_interleave`] says yes, `rows` is a multiple of 8 and `bytes` holds the
/// rows (caller bugs).
pub fn interleave(ty: GgmlType, bytes: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
    match ty {
        GgmlType::Q4K => q4_k_x8::interleave(bytes, rows, row_bytes),
        GgmlType::Q8_0 | GgmlType::Q5_0 => q8_0_x8::interleave(ty, bytes, rows, row_bytes),
        _ => panic!("{} has no interleaved layout", ty.name()),
    }
}

/// The inverse of [`interleave`]: the rows in file order again.
pub fn deinterleave(ty: GgmlType, bytes: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
    match ty {
        GgmlType::Q4K => q4_k_x8::deinterleave(bytes, rows, row_bytes),
        GgmlType::Q8_0 | GgmlType::Q5_0 => q8_0_x8::deinterleave(ty, bytes, rows, row_bytes),
        _ => panic!("{} has no interleaved layout", ty.name()),
    }
}

/// Y = X W^T for W stored as [`interleave`] left it: [`super::matmul_rows_quant`]'s contract.
pub fn matmul_interleaved(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    match ty {
        GgmlType::Q4K => q4_k_x8::matmul_interleaved(weights, rows, cols, x, n, y),
        GgmlType::Q8_0 | GgmlType::Q5_0 => {
            q8_0_x8::matmul_interleaved(ty, weights, rows, cols, x, n, y)
        }
        _ => panic!("{} has no interleaved layout", ty.name()),
    }
}

/// One input row, quantized once for every matrix of a [`super::matvec_many_quant`] pass that
/// takes it: in the block types its matrices pair with (empty where none does).
#[derive(Clone, Copy)]
pub(super) struct PreparedInput<'a> {
    pub(super) q8_0: &'a [BlockQ8_0],
    /// [`q8_0_x8::offsets`] of `q8_0`, for interleaved Q5_0.
    pub(super) q5_0_offsets: &'a [i32],
    pub(super) q8_k: &'a [BlockQ8K],
}

/// One group of eight interleaved rows of `ty` times one prepared input.
pub(super) fn dot_group(
    ty: GgmlType,
    group: &[u8],
    input: PreparedInput<'_>,
) -> [f32; ROWS_TOGETHER] {
    match ty {
        GgmlType::Q4K => {
            let [products] = q4_k_x8::dot_group(group, [input.q8_k]);
            products
        }
        GgmlType::Q8_0 | GgmlType::Q5_0 => {
            let input = q8_0_x8::Input {
                blocks: input.q8_0,
                offsets: input.q5_0_offsets,
            };
            q8_0_x8::dot_group_one(ty, group, input)
        }
        _ => panic!("{} has no interleaved layout", ty.name()),
    }
}

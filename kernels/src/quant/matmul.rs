//! Y = X W^T with W in any of the GGUF types, for the few input rows of a decode step or a small
//! batch: the quantized counterpart of [`crate::matvec::matmul_rows_f32`].
//!
//! Each input row is quantized once (Q8_0 or Q8_K blocks, as the weight type pairs them), then
//! every thread takes contiguous bands of W's rows, in sub-bands that stay in cache while every
//! group of up to four inputs (eight for Q4_K and Q5_0, a row at a time) passes over them, in
//! register tiles of up to 4 rows x 4 inputs or 1 row x 8 inputs (see
//! `RowDot::dot_tile`): each weight block is unpacked once per tile, each input block loaded once
//! per tile. The float types are converted a row at a time instead (F32 used in place when the
//! bytes are aligned).

use rayon::prelude::*;

use super::activations::{BlockQ8_0, BlockQ8K, QK_K, QK8_0, quantize_row_q8_0, quantize_row_q8_k};
use super::floats::{CONVERT_CHUNK, bf16_to_f32, f16_to_f32, f32_from_le};
use super::row_dot::RowDot;
use super::{GgmlType, q4_0, q4_k, q5_0, q5_k, q6_k, q8_0};
use crate::matvec::matmul_rows_f32;
use crate::simd::dot;

/// Rows one task takes at least (as in matvec): enough work per task that scheduling is noise.
const MIN_ROWS_PER_TASK: usize = 16;

/// Writes X W^T into `y` ([n, rows]) for `n` input rows `x` ([n, cols]) and the weights `weights`:
/// `rows` rows of `cols` values of type `ty`, laid out as in a GGUF file.
///
/// Quantized weights meet 8-bit quantized inputs, as in llama.cpp: each product is within about
/// half an input quantization step per weight of the f32 product (see the `quant` tests), far
/// below the weights' own quantization error.
///
/// Panics if `cols` is not a whole number of `ty`'s blocks or a slice length disagrees with the
/// sizes given (caller bugs).
pub fn matmul_rows_quant(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let Some(row_bytes) = row_bytes_of_work(ty, weights, rows, cols, x, n, y) else {
        return;
    };
    if super::amx::wanted(ty, n) {
        let layout = super::RowLayout::InFileOrder;
        super::amx::matmul_quant(ty, layout, weights, rows, cols, x, n, y);
        return;
    }
    match ty {
        GgmlType::F32 => f32_weights(weights, rows, cols, x, n, y),
        GgmlType::F16 => converted_rows(weights, row_bytes, cols, x, n, y, f16_to_f32),
        GgmlType::BF16 => converted_rows(weights, row_bytes, cols, x, n, y, bf16_to_f32),
        GgmlType::Q4_0 => quantized_rows::<q4_0::Kernel>(weights, row_bytes, &q8_0_inputs(x), n, y),
        GgmlType::Q5_0 => quantized_rows::<q5_0::Kernel>(weights, row_bytes, &q8_0_inputs(x), n, y),
        GgmlType::Q8_0 => quantized_rows::<q8_0::Kernel>(weights, row_bytes, &q8_0_inputs(x), n, y),
        GgmlType::Q4K => quantized_rows::<q4_k::Kernel>(weights, row_bytes, &q8_k_inputs(x), n, y),
        GgmlType::Q5K => quantized_rows::<q5_k::Kernel>(weights, row_bytes, &q8_k_inputs(x), n, y),
        GgmlType::Q6K => quantized_rows::<q6_k::Kernel>(weights, row_bytes, &q8_k_inputs(x), n, y),
    }
}

/// The bytes of one row of `cols` values of `ty`, after checking what every product of `n`
/// inputs `x` with `rows` such rows (`weights`) into `y` needs: whole blocks per row, and slices
/// as long as the sizes say. `None` when there is nothing to multiply (no rows or inputs; with
/// no columns, Y is all zeros and written here).
///
/// Panics when a check fails (caller bugs).
pub(super) fn row_bytes_of_work(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Option<usize> {
    let row_bytes = ty.row_bytes(cols).unwrap_or_else(|| {
        panic!(
            "{} rows hold blocks of {} values; {cols} columns is not a whole number of them",
            ty.name(),
            ty.block_len()
        )
    });
    assert_eq!(
        weights.len(),
        rows * row_bytes,
        "{rows} rows of {cols} {} values take {} bytes",
        ty.name(),
        rows * row_bytes
    );
    assert_eq!(x.len(), n * cols, "x must hold n x cols values");
    assert_eq!(y.len(), n * rows, "y must hold n x rows values");
    if cols == 0 {
        y.fill(0.0);
    }
    (rows > 0 && n > 0 && cols > 0).then_some(row_bytes)
}

/// The input rows (one after another) as Q8_0 blocks: the rows' lengths are whole blocks, so the
/// blocks of row i are the i-th run of `cols / 32`.
pub(super) fn q8_0_inputs(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut blocks = vec![BlockQ8_0::ZERO; x.len() / QK8_0];
    quantize_row_q8_0(x, &mut blocks);
    blocks
}

/// The input rows as Q8_K blocks, as [`q8_0_inputs`].
pub(super) fn q8_k_inputs(x: &[f32]) -> Vec<BlockQ8K> {
    let mut blocks = vec![BlockQ8K::ZERO; x.len() / QK_K];
    quantize_row_q8_k(x, &mut blocks);
    blocks
}

/// Runs `band_product(band of weight rows, out)` over bands of W's rows in parallel, where `out`
/// is the band's part of Y input by input ([n, band rows]: input i's values of the band's rows
/// one after another), then copies each input's run into its row of Y. Bands start at multiples
/// of `rows_together` rows (rows that are stored interleaved stay in one band).
pub(super) fn for_each_band(
    weights: &[u8],
    row_bytes: usize,
    rows_together: usize,
    n: usize,
    y: &mut [f32],
    band_product: impl Fn(&[u8], &mut [f32]) + Sync,
) {
    let rows = y.len() / n;
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = rows
        .div_ceil(threads * 4)
        .max(MIN_ROWS_PER_TASK)
        .next_multiple_of(rows_together);
    if n == 1 {
        // For one input row Y^T is Y itself.
        y.par_chunks_mut(rows_per_task)
            .enumerate()
            .for_each(|(band, out)| {
                let first = band * rows_per_task * row_bytes;
                band_product(&weights[first..first + out.len() * row_bytes], out);
            });
        return;
    }
    // Each task fills its band's runs, then copies them into Y itself, in parallel, while they
    // are still in cache. (One thread transposing a whole Y^T afterwards took 7-9% of a
    // prompt's profile; lite:4 Q4_K_M prefill went 411.9-430.9 -> 481.6-490.2 tok/s with each
    // task transposing its band, and 462.6-485.2 -> 474.6-530.7 with runs and no transposing.)
    let out = Output {
        y: y.as_mut_ptr(),
        len: y.len(),
    };
    (0..rows.div_ceil(rows_per_task))
        .into_par_iter()
        .for_each(|band| {
            let first_row = band * rows_per_task;
            let band_rows = rows_per_task.min(rows - first_row);
            let mut runs = vec![0f32; band_rows * n];
            let first = first_row * row_bytes;
            band_product(&weights[first..first + band_rows * row_bytes], &mut runs);
            for (i, run) in runs.chunks_exact(band_rows).enumerate() {
                out.write_run(i * rows + first_row, run);
            }
        });
}

/// Weight bytes a task keeps in cache (its share of L2) while every group of inputs passes over
/// them, when there are more inputs than one tile takes.
pub(super) const SUB_BAND_BYTES: usize = 128 * 1024;

/// Weights larger than this (about the last-level cache) come from memory, and the matmul
/// prefetches them a tile ahead (measured: Q6_K 102400 x 2048, n = 8, 2 threads: 71-76 -> 120-126
/// GOP/s); smaller ones are left to the hardware (prefetching them cost the 32-value formats
/// 10-25% in cache).
pub(super) const PREFETCH_ABOVE_BYTES: usize = 24 << 20;

/// Y, written by bands of W's rows from several threads: band tasks write disjoint sets of
/// elements (the columns of Y of their own rows).
struct Output {
    y: *mut f32,
    len: usize,
}

// SAFETY: `Output` is only written through `write`, at elements no other task writes (each task
// owns a band of rows), while the `&mut [f32]` it came from is borrowed for the whole matmul.
unsafe impl Sync for Output {}

impl Output {
    fn write(&self, index: usize, value: f32) {
        assert!(index < self.len);
        // SAFETY: in bounds (checked above); no other task writes this element (see the Sync
        // impl), and nothing reads Y until every task has finished.
        unsafe { *self.y.add(index) = value };
    }

    /// `values` into Y from element `start` on.
    fn write_run(&self, start: usize, values: &[f32]) {
        assert!(start + values.len() <= self.len);
        // SAFETY: in bounds (checked above); as `write`, for each element of the run.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.y.add(start), values.len()) };
    }
}

/// Every weight row of a band times every quantized input row, in tiles of up to 4 rows and 4
/// inputs (or 1 row and up to 8, see `RowDot::inputs_at_once`). With more inputs than a tile
/// takes, a band goes through its rows in sub-bands that stay in cache while every group of
/// inputs meets them.
fn quantized_rows<K: RowDot>(
    weights: &[u8],
    row_bytes: usize,
    inputs: &[K::Activation],
    n: usize,
    y: &mut [f32],
) {
    let rows = y.len() / n;
    let blocks_per_row = inputs.len() / n;
    let threads = rayon::current_num_threads().max(1);
    // About four tasks per thread (whole tiles of 4 rows each) so that uneven threads balance.
    let rows_per_task = rows
        .div_ceil(threads * 4)
        .max(MIN_ROWS_PER_TASK)
        .next_multiple_of(4);
    let sub_band = (SUB_BAND_BYTES / row_bytes).max(4) / 4 * 4;
    let out = Output {
        y: y.as_mut_ptr(),
        len: y.len(),
    };
    let from_memory = weights.len() > PREFETCH_ABOVE_BYTES;
    let tasks = rows.div_ceil(rows_per_task);
    (0..tasks).into_par_iter().for_each(|task| {
        let band = task * rows_per_task..((task + 1) * rows_per_task).min(rows);
        let mut start = band.start;
        while start < band.end {
            let end = (start + sub_band).min(band.end);
            let at_once = K::inputs_at_once();
            for first_input in (0..n).step_by(at_once) {
                let group = at_once.min(n - first_input);
                let tile_rows = K::tile_rows(group);
                let mut row = start;
                while row < end {
                    let left = end - row;
                    let take = if left >= tile_rows {
                        tile_rows
                    } else if left >= 2 && tile_rows > 2 {
                        2
                    } else {
                        1
                    };
                    if from_memory && first_input == 0 {
                        // The first group of inputs meets the sub-band's rows straight from
                        // memory: fetch the next tile's rows while this one computes.
                        let next = (row + take) * row_bytes;
                        prefetch(&weights[next.min(weights.len())..], take * row_bytes);
                    }
                    let at = Tile {
                        weights,
                        row_bytes,
                        inputs,
                        blocks_per_row,
                        rows,
                        first_row: row,
                        first_input,
                        out: &out,
                    };
                    match (take, group) {
                        (4, 1) => at.run::<K, 4, 1>(),
                        (4, 2) => at.run::<K, 4, 2>(),
                        (4, 3) => at.run::<K, 4, 3>(),
                        (4, 4) => at.run::<K, 4, 4>(),
                        (2, 1) => at.run::<K, 2, 1>(),
                        (2, 2) => at.run::<K, 2, 2>(),
                        (2, 3) => at.run::<K, 2, 3>(),
                        (2, 4) => at.run::<K, 2, 4>(),
                        (_, 1) => at.run::<K, 1, 1>(),
                        (_, 2) => at.run::<K, 1, 2>(),
                        (_, 3) => at.run::<K, 1, 3>(),
                        (_, 4) => at.run::<K, 1, 4>(),
                        _ => at.run_wide::<K>(group),
                    }
                    row += take;
                }
            }
            start = end;
        }
    });
}

/// Asks the CPU to bring the first `len` bytes of `bytes` (or all of them, if fewer) into cache.
#[inline]
fn prefetch(bytes: &[u8], len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for line in bytes[..len.min(bytes.len())].chunks(64) {
            // SAFETY: a prefetch reads nothing and cannot fault; the address is in `bytes`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, len);
}

/// Where one tile lies: its first weight row and first input, in the whole product.
struct Tile<'a, A> {
    weights: &'a [u8],
    row_bytes: usize,
    inputs: &'a [A],
    blocks_per_row: usize,
    rows: usize,
    first_row: usize,
    first_input: usize,
    out: &'a Output,
}

impl<A> Tile<'_, A> {
    /// One row times `inputs` (5 to 8) inputs: out of line, so that the formats that never
    /// take more than 4 inputs keep the code (and the stack frame) they had.
    #[inline(never)]
    fn run_wide<K: RowDot<Activation = A>>(&self, inputs: usize) {
        match inputs {
            5 => self.run::<K, 1, 5>(),
            6 => self.run::<K, 1, 6>(),
            7 => self.run::<K, 1, 7>(),
            _ => self.run::<K, 1, 8>(),
        }
    }

    /// Rows `first_row..first_row + R` times inputs `first_input..first_input + N`, into Y.
    #[inline]
    fn run<K: RowDot<Activation = A>, const R: usize, const N: usize>(&self) {
        let rows: [&[u8]; R] = std::array::from_fn(|j| {
            let start = (self.first_row + j) * self.row_bytes;
            &self.weights[start..start + self.row_bytes]
        });
        let inputs: [&[A]; N] = std::array::from_fn(|k| {
            let start = (self.first_input + k) * self.blocks_per_row;
            &self.inputs[start..start + self.blocks_per_row]
        });
        let products = K::dot_tile(rows, inputs);
        for (j, products) in products.iter().enumerate() {
            for (k, &product) in products.iter().enumerate() {
                let index = (self.first_input + k) * self.rows + self.first_row + j;
                self.out.write(index, product);
            }
        }
    }
}

/// F32 weights in place when the bytes are aligned (as they are in a mapped GGUF file, whose
/// tensor data is aligned to at least 32 bytes); otherwise converted a row at a time.
fn f32_weights(weights: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    if cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid f32, and align_to only puts correctly aligned,
        // whole f32s in the middle slice.
        let (head, floats, tail) = unsafe { weights.align_to::<f32>() };
        if head.is_empty() && tail.is_empty() {
            matmul_rows_f32(floats, rows, cols, x, n, y);
            return;
        }
    }
    converted_rows(weights, 4 * cols, cols, x, n, y, f32_from_le);
}

/// Float weights a row at a time: `convert` writes a row's values into a buffer the size of the
/// row (in chunks when the row is long), which then meets every input row.
fn converted_rows(
    weights: &[u8],
    row_bytes: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    convert: fn(&[u8], &mut [f32]),
) {
    let bytes_per_value = row_bytes / cols;
    for_each_band(weights, row_bytes, 1, n, y, |band, out| {
        let chunk = cols.min(CONVERT_CHUNK);
        let mut values = vec![0f32; chunk];
        let band_rows = band.len() / row_bytes;
        out.fill(0.0);
        for (r, row) in band.chunks_exact(row_bytes).enumerate() {
            for (start, bytes) in (0..cols)
                .step_by(chunk)
                .zip(row.chunks(chunk * bytes_per_value))
            {
                let values = &mut values[..bytes.len() / bytes_per_value];
                convert(bytes, values);
                for (i, input) in x.chunks_exact(cols).enumerate() {
                    out[i * band_rows + r] += dot(values, &input[start..start + values.len()]);
                }
            }
        }
    });
}

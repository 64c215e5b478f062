//! Weight rows into the bf16 panels the tiles load, for any weight type: the layout, the
//! general road (dequantize to f32, then round and place each value), and the choice of the
//! AVX-512 road ([`super::panel_avx512`]) for interleaved rows where the CPU and the type have
//! one.
//!
//! A panel is 32 weight rows. For each half of the rows (16 rows: one tile's columns), for each
//! slice of 32 values, one weight tile of 16 rows x 64 bytes, where tile row k holds values 2k and
//! 2k + 1 of the slice for each of the 16 weight rows in turn (the pair layout `TDPBF16PS` reads).

use super::super::interleaved::deinterleave_on_this_thread;
use super::super::{GgmlType, RowLayout, dequantize};
use super::{PANEL_ROWS, SLICE};
use crate::quant::amx::tiles::TILE_ROWS;

/// Buffers a band's panels reuse: the rows in file order, and their f32 values.
#[derive(Default)]
pub(super) struct Scratch {
    in_file_order: Vec<u8>,
    values: Vec<f32>,
}

/// The `take` (at most 32) weight rows in `bytes` (`ty` in `layout`, rows of `cols` values) into
/// `panel` (32 rows x `padded_cols` values, padded_cols a multiple of 32). Values past `cols`
/// are never written (they stay as the caller left them: zero), nor are rows past `take`.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_rows(
    ty: GgmlType,
    layout: RowLayout,
    bytes: &[u8],
    take: usize,
    cols: usize,
    padded_cols: usize,
    scratch: &mut Scratch,
    panel: &mut [u16],
) {
    #[cfg(target_arch = "x86_64")]
    if layout == RowLayout::Interleaved && super::panel_avx512::packs(ty) {
        // SAFETY: `packs` said the CPU has the features the function is compiled for.
        unsafe { super::panel_avx512::pack_groups(ty, bytes, take, padded_cols, panel) };
        return;
    }
    let row_bytes = bytes.len() / take.max(1);
    let rows = match layout {
        RowLayout::InFileOrder => bytes,
        RowLayout::Interleaved => {
            scratch.in_file_order.resize(bytes.len(), 0);
            deinterleave_on_this_thread(ty, bytes, row_bytes, &mut scratch.in_file_order);
            &scratch.in_file_order[..]
        }
    };
    scratch.values.resize(take * cols, 0.0);
    dequantize(ty, rows, &mut scratch.values);
    pack_values(&scratch.values, cols, padded_cols, panel);
}

/// Rows of f32 (`values`, [take, cols], take at most 32) into the panel, each value rounded to
/// the nearest bf16 (ties to even).
pub(super) fn pack_values(values: &[f32], cols: usize, padded_cols: usize, panel: &mut [u16]) {
    let slices = padded_cols / SLICE;
    for (row, values) in values.chunks_exact(cols.max(1)).enumerate() {
        let tile_rows = tile_rows_of(row, slices, panel);
        for (slice, values) in values.chunks(SLICE).enumerate() {
            let tile = &mut tile_rows[slice * TILE_ROWS * SLICE..];
            for (pair, values) in values.chunks(2).enumerate() {
                for (j, &value) in values.iter().enumerate() {
                    tile[pair * SLICE + j] = half::bf16::from_f32(value).to_bits();
                }
            }
        }
    }
}

/// The part of the panel from weight row `row`'s first value on: its half's first tile, offset
/// by the row's place in the tile rows (so value 2k + j of slice s is at s 512 + 32 k + j).
pub(super) fn tile_rows_of(row: usize, slices: usize, panel: &mut [u16]) -> &mut [u16] {
    assert!(row < PANEL_ROWS);
    let (half, row_in_tile) = (row / TILE_ROWS, row % TILE_ROWS);
    &mut panel[half * slices * TILE_ROWS * SLICE + 2 * row_in_tile..]
}

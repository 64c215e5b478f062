//! Y = X W^T for a prompt's many input rows on AMX tiles, in bf16: every weight type is turned
//! into bf16 a panel of 32 rows at a time, and the panel then meets every input row on the tile
//! unit (`TDPBF16PS`: 16 x 16 x 32 products per instruction).
//!
//! Why bf16 and not the int8 tiles: a block-quantized row has a scale (and for the K types a
//! minimum) per 16 or 32 values, so int8 tile sums would need a float correction after every 32
//! values of every product; a bf16 panel needs none, serves every weight type with one kernel,
//! and rounds the weights to 8 bits of mantissa (finer than any 4-8 bit quantization's step).
//! Turning a panel into bf16 costs the same however many inputs meet it, so the tiles are worth
//! it only for many inputs ([`TILE_MIN_INPUTS`]).
//!
//! The driver is generic over [`tiles::TileUnit`], so that its addressing, padding and packing
//! run in the tests on any machine through the emulated tiles, and on an AMX machine through the
//! real ones.

mod panel;
#[cfg(target_arch = "x86_64")]
mod panel_avx512;
mod support;
mod tiles;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use tiles::Hardware;
use tiles::{Emulated, TILE_FLOATS, TILE_ROW_BYTES, TILE_ROWS, TileUnit};

use super::matmul::{for_each_band, row_bytes_of_work};
use super::{GgmlType, InstructionSet, RowLayout};
use panel::{Scratch, pack_rows, pack_values};

/// Input rows from which a product goes to the tiles. Turning a panel into bf16 costs 0.16-0.25
/// ns per weight value on one core (`PANELS=1` quant_matmul bench, interleaved Q4_K, Q6_K, Q8_0,
/// Q5_0 on a Zen 4), whatever the number of inputs. Each input then costs about 0.002 ns per
/// weight value on the tiles if they reach half of `TDPBF16PS`'s 512 products per cycle at 2 GHz,
/// against about 0.011 ns in the int8 group kernels (46 products per cycle, measured): the tiles
/// win from about 25 inputs. An estimate from those rates, with a margin for tiles slower than
/// assumed: no AMX machine was at hand to measure it.
pub(super) const TILE_MIN_INPUTS: usize = 32;

/// Weight rows per panel: two weight tiles' worth.
const PANEL_ROWS: usize = 2 * TILE_ROWS;

/// Values of a row per tile slice: one tile row of bf16.
const SLICE: usize = TILE_ROW_BYTES / 2;

/// Whether the AMX tiles run a prompt's products in this process, and if not, why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileStatus {
    /// They do (unless [`super::limit_instruction_set`] holds the kernels below AMX).
    Usable,
    /// The CPU has no AMX tiles with bf16 (AMX-TILE, AMX-BF16, 8 tiles of 16 x 64 bytes).
    NotOnThisCpu,
    /// The OS does not save the tiles' state on a context switch (XCR0 lacks it).
    NotSavedByOs,
    /// Linux refused this process the tile data state (`arch_prctl`; kernels before 5.16).
    RefusedByLinux,
    /// The tiles are only asked for on Linux on x86-64.
    NotLinuxOnX86,
    /// The tiles computed one known product wrongly, so they are not used.
    WrongProduct,
}

impl TileStatus {
    /// One line for a log or a report.
    pub fn describe(self) -> &'static str {
        match self {
            TileStatus::Usable => "usable",
            TileStatus::NotOnThisCpu => "this CPU has no AMX tiles with bf16",
            TileStatus::NotSavedByOs => "the OS does not save the tiles' state",
            TileStatus::RefusedByLinux => "Linux refused the tile state to this process",
            TileStatus::NotLinuxOnX86 => "only asked for on Linux on x86-64",
            TileStatus::WrongProduct => "the tiles computed a known product wrongly",
        }
    }
}

/// Whether the tiles run in this process: the CPU and the OS allow them, and they gave the right
/// answer to one known product (a tile unit that computes wrongly, as an emulator or a
/// hypervisor might, is never used). Asked once per process; the binary asks at start, so its
/// log says why a CPU's tiles are not used.
pub fn tile_status() -> TileStatus {
    static STATUS: std::sync::OnceLock<TileStatus> = std::sync::OnceLock::new();
    *STATUS.get_or_init(|| {
        if let Some(refused) = support::tiles_refused() {
            return refused;
        }
        #[cfg(target_arch = "x86_64")]
        if known_product_is_right::<Hardware>() {
            return TileStatus::Usable;
        }
        TileStatus::WrongProduct
    })
}

/// Whether the tile kernels run in this process ([`tile_status`] says usable).
pub(super) fn tiles_usable() -> bool {
    tile_status() == TileStatus::Usable
}

/// One panel times 32 inputs on `T`, on this thread (the answer is cached in a `OnceLock` that
/// other tasks may wait on, so no work goes to them), with every value an exact small integer
/// in f32 and bf16: inputs x[i][k] = i + 1 + k mod 2, weights w[r][k] = (r + 1) c(k) with c(k)
/// = -1 where 3 divides k, else k mod 5. A misplaced input, row, column or pair changes some
/// product.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn known_product_is_right<T: TileUnit>() -> bool {
    let (n, cols) = (2 * TILE_ROWS, 2 * SLICE);
    let weight = |r: usize, k: usize| {
        let c = if k.is_multiple_of(3) {
            -1.0
        } else {
            (k % 5) as f32
        };
        (r + 1) as f32 * c
    };
    let input = |i: usize, k: usize| (i + 1 + k % 2) as f32;
    let values: Vec<f32> = (0..PANEL_ROWS * cols)
        .map(|at| weight(at / cols, at % cols))
        .collect();
    let mut panel = vec![0u16; PANEL_ROWS * cols];
    pack_values(&values, cols, cols, &mut panel);
    let mut inputs = vec![0u16; n * cols];
    for (at, value) in inputs.iter_mut().enumerate() {
        *value = half::bf16::from_f32(input(at / cols, at % cols)).to_bits();
    }
    let mut out = vec![f32::NAN; n * PANEL_ROWS];
    let at = PanelOutput {
        out: &mut out,
        band_rows: PANEL_ROWS,
        first_row: 0,
        take: PANEL_ROWS,
        n,
    };
    panel_times_inputs::<T>(&panel, &inputs, cols, at);
    (0..n).all(|i| {
        (0..PANEL_ROWS).all(|r| {
            let exact: f32 = (0..cols).map(|k| weight(r, k) * input(i, k)).sum();
            out[i * PANEL_ROWS + r] == exact
        })
    })
}

/// Set by [`emulate_tiles_for_tests`].
static EMULATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, for the whole process, every product the tile road takes runs on emulated tiles
/// (plain Rust, slow), on any CPU: for tests that check the road end to end through a model on
/// machines without AMX. Not for use outside tests.
#[doc(hidden)]
pub fn emulate_tiles_for_tests() {
    EMULATED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a product of `n` input rows with weights of type `ty` goes to the tiles: the CPU and
/// OS allow them (or a test asked for emulated ones), nobody limited the kernels below them, there
/// are enough inputs, and the weights are not F32 (whose f32 products the tiles' bf16 would
/// round).
pub(super) fn wanted(ty: GgmlType, n: usize) -> bool {
    n >= TILE_MIN_INPUTS
        && ty != GgmlType::F32
        && (EMULATED.load(std::sync::atomic::Ordering::Relaxed) || InstructionSet::tiles_in_use())
}

/// [`matmul_quant_on`] on the CPU's tiles, or on emulated ones where a test asked for them: for a
/// product [`wanted`] said yes to.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_quant(
    ty: GgmlType,
    layout: RowLayout,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if !EMULATED.load(std::sync::atomic::Ordering::Relaxed) {
        matmul_quant_on::<Hardware>(ty, layout, weights, rows, cols, x, n, y);
        return;
    }
    matmul_quant_on::<Emulated>(ty, layout, weights, rows, cols, x, n, y);
}

/// [`super::matmul_rows_quant`]'s product (or [`super::interleaved::matmul_interleaved`]'s, by
/// `layout`) on the tiles `T`.
///
/// Panics where those would (caller bugs).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_quant_on<T: TileUnit>(
    ty: GgmlType,
    layout: RowLayout,
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
    let padded_cols = cols.next_multiple_of(SLICE);
    let input_stride = input_row_length(padded_cols);
    let inputs = inputs_as_bf16(x, cols, input_stride, n);
    let inputs = &inputs[..];
    let panels = PanelSource {
        ty,
        layout,
        row_bytes,
        cols,
    };
    for_each_band(weights, row_bytes, PANEL_ROWS, n, y, |band, out| {
        let band_rows = band.len() / row_bytes;
        panels.for_each(band, |first_row, take, panel| {
            let at = PanelOutput {
                out: &mut *out,
                band_rows,
                first_row,
                take,
                n,
            };
            panel_times_inputs::<T>(panel, inputs, input_stride, at);
        });
    });
}

/// A weight matrix's rows as the tiles' panels.
struct PanelSource {
    ty: GgmlType,
    layout: RowLayout,
    row_bytes: usize,
    cols: usize,
}

impl PanelSource {
    /// Each panel of up to 32 of the whole rows in `rows`, packed in turn into one reused
    /// buffer and handed to `use_panel(first row, rows in it, panel)`. Nothing here hands work
    /// to other tasks (a task stolen while `use_panel` has the tiles configured would configure
    /// and release this thread's tiles).
    fn for_each(&self, rows: &[u8], mut use_panel: impl FnMut(usize, usize, &[u16])) {
        let padded_cols = self.cols.next_multiple_of(SLICE);
        let mut scratch = Scratch::default();
        let mut panel = vec![0u16; PANEL_ROWS * padded_cols];
        let row_count = rows.len() / self.row_bytes;
        for first_row in (0..row_count).step_by(PANEL_ROWS) {
            let take = PANEL_ROWS.min(row_count - first_row);
            let bytes = &rows[first_row * self.row_bytes..(first_row + take) * self.row_bytes];
            let (ty, layout, cols) = (self.ty, self.layout, self.cols);
            pack_rows(
                ty,
                layout,
                bytes,
                take,
                cols,
                padded_cols,
                &mut scratch,
                &mut panel,
            );
            use_panel(first_row, take, &panel);
        }
    }
}

/// Every 32-row panel of a weight matrix into the tiles' bf16 layout, one after another on this
/// thread, and nothing else: the part of a tile product that costs the same for any number of
/// inputs, for the `quant_matmul` bench to time (`PANELS=1`).
#[doc(hidden)]
pub fn pack_tile_panels(ty: GgmlType, layout: RowLayout, weights: &[u8], rows: usize, cols: usize) {
    let row_bytes = weights.len() / rows.max(1);
    if row_bytes == 0 {
        return;
    }
    let panels = PanelSource {
        ty,
        layout,
        row_bytes,
        cols,
    };
    panels.for_each(weights, |_, _, panel| {
        std::hint::black_box(panel);
    });
}

/// Values per row of the bf16 inputs for rows of `padded_cols` values: one slice more where
/// the rows' byte length is a multiple of 512, so that the 16 rows an input tile loads do not
/// all fall into the same few sets of the L1 cache (4 KiB apart, as 2048 values are, they would
/// share one set: 16 lines where it holds 12).
fn input_row_length(padded_cols: usize) -> usize {
    if (2 * padded_cols).is_multiple_of(512) {
        padded_cols + SLICE
    } else {
        padded_cols
    }
}

/// X in bf16, each row padded with zeros to `input_stride` values, and zero rows up to a
/// multiple of 16 (a tile's rows).
fn inputs_as_bf16(x: &[f32], cols: usize, input_stride: usize, n: usize) -> Vec<u16> {
    let mut inputs = vec![0u16; n.next_multiple_of(TILE_ROWS) * input_stride];
    inputs
        .par_chunks_mut(input_stride)
        .zip(x.par_chunks(cols.max(1)))
        .for_each(|(to, from)| {
            for (to, &from) in to.iter_mut().zip(from) {
                *to = half::bf16::from_f32(from).to_bits();
            }
        });
    inputs
}

/// Where a panel's products go: the band's part of Y input by input ([n, band_rows]), the
/// panel's first row in the band and how many of its rows are real.
struct PanelOutput<'a> {
    out: &'a mut [f32],
    band_rows: usize,
    first_row: usize,
    take: usize,
    n: usize,
}

/// One packed panel times every input row, 32 inputs (two input tiles) at a time, into `at`.
/// `inputs` holds the bf16 inputs, `input_stride` values per row, in rows up to a multiple of 16.
fn panel_times_inputs<T: TileUnit>(
    panel: &[u16],
    inputs: &[u16],
    input_stride: usize,
    at: PanelOutput<'_>,
) {
    let slices = panel.len() / (PANEL_ROWS * SLICE);
    let second_half = slices * TILE_ROWS * SLICE;
    assert!(input_stride >= slices * SLICE);
    assert!(inputs.len() >= at.n.next_multiple_of(TILE_ROWS) * input_stride);
    let mut tiles = T::configured();
    let mut products = [0f32; 4 * TILE_FLOATS];
    for first_input in (0..at.n).step_by(2 * TILE_ROWS) {
        // The inputs are padded to whole tiles: a second tile exists whenever any of its rows
        // is real.
        let both = at.n - first_input > TILE_ROWS;
        tiles.zero_accumulators();
        for slice in 0..slices {
            let weights = slice * TILE_ROWS * SLICE;
            let first = first_input * input_stride + slice * SLICE;
            let second = first + TILE_ROWS * input_stride * usize::from(both);
            // SAFETY: rows first_input..first_input + 16 (+ 16 more when `both`) of the inputs
            // exist (asserted: their count is a multiple of 16 at or above n), and each row read
            // is 64 bytes from column slice * 32 of a row of input_stride >= slices * 32 values
            // (asserted); each weight tile is 1 KiB inside the panel's half.
            unsafe {
                tiles.load_inputs(
                    inputs[first..].as_ptr(),
                    inputs[second..].as_ptr(),
                    2 * input_stride,
                    both,
                );
                tiles.load_weights(
                    panel[weights..weights + TILE_ROWS * SLICE].as_ptr(),
                    panel[second_half + weights..second_half + weights + TILE_ROWS * SLICE]
                        .as_ptr(),
                );
            }
            tiles.multiply(both);
        }
        tiles.store_accumulators(&mut products);
        for (tile, products) in products.chunks_exact(TILE_FLOATS).enumerate() {
            let (input_half, row_half) = (tile / 2, tile % 2);
            for (m, products) in products.chunks_exact(TILE_ROWS).enumerate() {
                let input = first_input + input_half * TILE_ROWS + m;
                let first = row_half * TILE_ROWS;
                if input >= at.n || first >= at.take {
                    continue;
                }
                let count = TILE_ROWS.min(at.take - first);
                let start = input * at.band_rows + at.first_row + first;
                at.out[start..start + count].copy_from_slice(&products[..count]);
            }
        }
    }
}

#[cfg(test)]
mod tests;

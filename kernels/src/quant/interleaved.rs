//! Matrices whose rows are stored eight at a time, interleaved (see [`super::q4_k_x8`]): one
//! front for every format that has such a layout, so that callers hold a [`RowLayout`] and a
//! type instead of knowing each format's module.
//!
//! The layout is ours, not the file's: a loader rearranges a weight once, when it loads it, and
//! every product of a decode step or a prompt then reads eight rows per vector instruction.

use rayon::prelude::*;

use super::activations::{BlockQ8_0, BlockQ8K};
use super::matmul::{PREFETCH_ABOVE_BYTES, SUB_BAND_BYTES, for_each_band};
use super::{GgmlType, InstructionSet, q4_k_x8, q6_k_x8, q8_0_x8, q8_k_groups};

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
    matches!(
        ty,
        GgmlType::Q4K | GgmlType::Q6K | GgmlType::Q8_0 | GgmlType::Q5_0
    )
}

/// `rows` rows of `ty` (`row_bytes` each, in file order) rearranged into interleaved groups of
/// eight; the result has the same length.
///
/// Panics unless [`can_interleave`] says yes, `rows` is a multiple of 8 and `bytes` holds the
/// rows (caller bugs).
pub fn interleave(ty: GgmlType, bytes: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    interleave_into(ty, bytes, rows, row_bytes, &mut out);
    out
}

/// [`interleave`] into `out`, memory the caller chose (as long as `bytes`).
pub fn interleave_into(ty: GgmlType, bytes: &[u8], rows: usize, row_bytes: usize, out: &mut [u8]) {
    regroup(ty, bytes, rows, row_bytes, true, out);
}

/// The inverse of [`interleave`]: the rows in file order again.
pub fn deinterleave(ty: GgmlType, bytes: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    regroup(ty, bytes, rows, row_bytes, false, &mut out);
    out
}

/// Rows to `ty`'s interleaved groups (`into_groups`) or back, into `out`.
fn regroup(
    ty: GgmlType,
    bytes: &[u8],
    rows: usize,
    row_bytes: usize,
    into_groups: bool,
    out: &mut [u8],
) {
    match ty {
        GgmlType::Q4K => q4_k_x8::GROUP_BLOCK.regroup(bytes, rows, row_bytes, into_groups, out),
        GgmlType::Q6K => q6_k_x8::GROUP_BLOCK.regroup(bytes, rows, row_bytes, into_groups, out),
        GgmlType::Q8_0 | GgmlType::Q5_0 => {
            q8_0_x8::group_block_of(ty).regroup(bytes, rows, row_bytes, into_groups, out)
        }
        _ => panic!("{} has no interleaved layout", ty.name()),
    }
}

/// Whole interleaved groups of `ty` rows (`row_bytes` each) back in file order, into `rows` (as
/// long as `groups`), on the calling thread: for a caller that must not hand work to other
/// tasks meanwhile (the AMX driver, whose tile configuration a stolen task would release).
pub(super) fn deinterleave_on_this_thread(
    ty: GgmlType,
    groups: &[u8],
    row_bytes: usize,
    rows: &mut [u8],
) {
    match ty {
        GgmlType::Q4K => q4_k_x8::GROUP_BLOCK.deinterleave_on_this_thread(groups, row_bytes, rows),
        GgmlType::Q6K => q6_k_x8::GROUP_BLOCK.deinterleave_on_this_thread(groups, row_bytes, rows),
        GgmlType::Q8_0 | GgmlType::Q5_0 => {
            q8_0_x8::group_block_of(ty).deinterleave_on_this_thread(groups, row_bytes, rows)
        }
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
    if super::amx::wanted(ty, n) {
        let layout = RowLayout::Interleaved;
        super::amx::matmul_quant(ty, layout, weights, rows, cols, x, n, y);
        return;
    }
    match ty {
        GgmlType::Q4K => q4_k_x8::matmul_interleaved(weights, rows, cols, x, n, y),
        GgmlType::Q6K => q6_k_x8::matmul_interleaved(weights, rows, cols, x, n, y),
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
    /// [`q8_0_x8::offsets`] of `q8_0` for interleaved Q8_0 and Q5_0, for the kernels of
    /// `level`.
    pub(super) q8_0_offsets: &'a [i32],
    pub(super) q5_0_offsets: &'a [i32],
    pub(super) q8_k: &'a [BlockQ8K],
    /// The instruction set the offsets are for, and the kernels run on.
    pub(super) level: InstructionSet,
}

/// One group of eight interleaved rows of `ty` times one prepared input (`from_memory`: the
/// kernel prefetches the weights).
pub(super) fn dot_group(
    ty: GgmlType,
    group: &[u8],
    input: PreparedInput<'_>,
    from_memory: bool,
) -> [f32; ROWS_TOGETHER] {
    match ty {
        GgmlType::Q4K => {
            let [products] = q8_k_groups::dot_group::<q4_k_x8::Q4KGroups, 1>(
                input.level,
                group,
                [input.q8_k],
                from_memory,
            );
            products
        }
        GgmlType::Q6K => {
            let [products] = q8_k_groups::dot_group::<q6_k_x8::Q6KGroups, 1>(
                input.level,
                group,
                [input.q8_k],
                from_memory,
            );
            products
        }
        GgmlType::Q8_0 | GgmlType::Q5_0 => {
            let offsets = if ty == GgmlType::Q8_0 {
                input.q8_0_offsets
            } else {
                input.q5_0_offsets
            };
            let q8_0_input = q8_0_x8::Input {
                blocks: input.q8_0,
                offsets,
            };
            q8_0_x8::dot_group_one(ty, input.level, group, q8_0_input, from_memory)
        }
        _ => panic!("{} has no interleaved layout", ty.name()),
    }
}

/// The products of one group of eight rows with up to [`MOST_INPUTS_AT_ONCE`] inputs: entry k
/// holds input k's, for as many inputs as were asked.
pub(super) type GroupProducts = [[f32; ROWS_TOGETHER]; MOST_INPUTS_AT_ONCE];

/// The most inputs a group kernel meets at once.
pub(super) const MOST_INPUTS_AT_ONCE: usize = 4;

/// The driver every interleaved format's matmul shares: checks the sizes, then each thread
/// takes bands of whole groups, in sub-bands that stay in cache while the inputs pass over them
/// `inputs_at_once` at a time (the rest one at a time). `group_products(group, first, take,
/// from_memory)` gives the group's products with inputs `first..first + take` (the kernel has the
/// quantized inputs); `from_memory` says the group comes straight from memory (the first inputs
/// of a large matrix, or a single input), for kernels that prefetch.
///
/// Panics unless `rows` is a multiple of 8, `cols` of `ty`'s block, and the slices hold what
/// the sizes say (caller bugs).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_groups(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    n: usize,
    y: &mut [f32],
    inputs_at_once: usize,
    group_products: impl Fn(&[u8], usize, usize, bool) -> GroupProducts + Sync,
) {
    let name = ty.name();
    let row_bytes = ty
        .row_bytes(cols)
        .filter(|_| rows.is_multiple_of(ROWS_TOGETHER))
        .unwrap_or_else(|| {
            panic!(
                "interleaved {name} takes rows in eights and columns in {}s, not {rows} x {cols}",
                ty.block_len()
            )
        });
    assert_eq!(
        weights.len(),
        rows * row_bytes,
        "{rows} x {cols} {name} values"
    );
    assert_eq!(y.len(), n * rows, "y must hold n x rows values");
    assert!((1..=MOST_INPUTS_AT_ONCE).contains(&inputs_at_once));
    if rows == 0 || n == 0 {
        return;
    }
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    let group_bytes = ROWS_TOGETHER * row_bytes;
    let sub_band_bytes = (SUB_BAND_BYTES / group_bytes).max(1) * group_bytes;
    // A large matrix does not stay in cache; nor, in a decode step, does any (one input: the
    // step reads every weight once, far more than the cache holds).
    let from_memory = weights.len() > PREFETCH_ABOVE_BYTES || n == 1;
    for_each_band(weights, row_bytes, ROWS_TOGETHER, n, y, |band, out| {
        // `out` is the band's part of Y, input by input: input i's value of the band's row r at
        // i band_rows + r, so a group's eight products for one input are one 32-byte store.
        let band_rows = band.len() / row_bytes;
        for (sub_band_index, sub_band) in band.chunks(sub_band_bytes).enumerate() {
            let first_row = sub_band_index * (sub_band_bytes / row_bytes);
            let mut first = 0;
            while first < n {
                let take = if n - first >= inputs_at_once {
                    inputs_at_once
                } else {
                    1
                };
                for (g, group) in sub_band.chunks_exact(group_bytes).enumerate() {
                    // The first inputs meet the sub-band straight from memory; the others find
                    // it in cache.
                    let products = group_products(group, first, take, from_memory && first == 0);
                    let row = first_row + g * ROWS_TOGETHER;
                    for (k, products) in products[..take].iter().enumerate() {
                        out[(first + k) * band_rows + row..][..ROWS_TOGETHER]
                            .copy_from_slice(products);
                    }
                }
                first += take;
            }
        }
    });
}

/// A kernel's products for N inputs as [`GroupProducts`] (zeros past N).
pub(super) fn padded<const N: usize>(products: [[f32; ROWS_TOGETHER]; N]) -> GroupProducts {
    std::array::from_fn(|k| products.get(k).copied().unwrap_or_default())
}

/// How a format places one row's block in a group block and reads it back (`put(block, r,
/// group_block)`, `take(group_block, r, block)`), and its row-by-row product with an input of
/// `A` blocks: everything the shared rearranging and the portable products need.
pub(super) struct GroupBlock<A: 'static> {
    pub(super) ty: GgmlType,
    pub(super) put: fn(&[u8], usize, &mut [u8]),
    pub(super) take: fn(&[u8], usize, &mut [u8]),
    pub(super) dot_row: fn(&[u8], &[A]) -> f32,
}

impl<A> GroupBlock<A> {
    /// `rows` rows of `row_bytes` bytes (file order) as interleaved groups (the tests' way to
    /// [`Self::regroup`]).
    ///
    /// Panics unless `rows` is a multiple of 8 and `bytes` holds `rows` rows of whole blocks.
    #[cfg(test)]
    pub(super) fn interleave(&self, bytes: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
        let mut out = vec![0u8; bytes.len()];
        self.regroup(bytes, rows, row_bytes, true, &mut out);
        out
    }

    /// The inverse of [`Self::interleave`].
    pub(super) fn deinterleave(&self, bytes: &[u8], rows: usize, row_bytes: usize) -> Vec<u8> {
        let mut out = vec![0u8; bytes.len()];
        self.regroup(bytes, rows, row_bytes, false, &mut out);
        out
    }

    /// Each of the eight rows of `group` times each input through the row-by-row kernel, on the
    /// rows put back in file order: the portable road of the group kernels.
    pub(super) fn portable_products<const N: usize>(
        &self,
        group: &[u8],
        inputs: [&[A]; N],
    ) -> [[f32; ROWS_TOGETHER]; N] {
        let row_bytes = group.len() / ROWS_TOGETHER;
        let rows = self.deinterleave(group, ROWS_TOGETHER, row_bytes);
        let rows: Vec<&[u8]> = rows.chunks_exact(row_bytes.max(1)).collect();
        inputs.map(|x| std::array::from_fn(|r| (self.dot_row)(rows[r], x)))
    }

    /// Rows to groups (`into_groups`) or back, into `out` (as long as `bytes`; every byte is
    /// written), a group of rows per parallel task.
    pub(super) fn regroup(
        &self,
        bytes: &[u8],
        rows: usize,
        row_bytes: usize,
        into_groups: bool,
        out: &mut [u8],
    ) {
        let block_bytes = self.check_shape(bytes, rows, row_bytes);
        assert_eq!(out.len(), bytes.len(), "regrouped bytes keep their length");
        let group_bytes = (ROWS_TOGETHER * row_bytes).max(1);
        out.par_chunks_mut(group_bytes)
            .zip(bytes.par_chunks(group_bytes))
            .for_each(|(target, source)| {
                self.regroup_one(source, row_bytes, block_bytes, into_groups, target)
            });
    }

    /// One group of eight rows (`source`) to its group blocks or back, into `target`, on this
    /// thread.
    fn regroup_one(
        &self,
        source: &[u8],
        row_bytes: usize,
        block_bytes: usize,
        into_groups: bool,
        target: &mut [u8],
    ) {
        let group_block_bytes = ROWS_TOGETHER * block_bytes;
        for b in 0..row_bytes / block_bytes {
            let group_block = b * group_block_bytes..(b + 1) * group_block_bytes;
            for r in 0..ROWS_TOGETHER {
                let at = r * row_bytes + b * block_bytes;
                let row_block = at..at + block_bytes;
                if into_groups {
                    (self.put)(&source[row_block], r, &mut target[group_block.clone()]);
                } else {
                    (self.take)(&source[group_block.clone()], r, &mut target[row_block]);
                }
            }
        }
    }

    /// The whole groups in `groups` back in file order, into `rows`, on this thread (no parallel
    /// tasks: see [`deinterleave_on_this_thread`]).
    fn deinterleave_on_this_thread(&self, groups: &[u8], row_bytes: usize, rows: &mut [u8]) {
        let block_bytes = self.check_shape(groups, groups.len() / row_bytes.max(1), row_bytes);
        let group_bytes = (ROWS_TOGETHER * row_bytes).max(1);
        for (source, target) in groups.chunks(group_bytes).zip(rows.chunks_mut(group_bytes)) {
            self.regroup_one(source, row_bytes, block_bytes, false, target);
        }
    }

    /// The format's block size, after checking that `bytes` is `rows` (a multiple of 8) rows of
    /// `row_bytes` bytes of whole blocks.
    fn check_shape(&self, bytes: &[u8], rows: usize, row_bytes: usize) -> usize {
        let block_bytes = self.ty.block_bytes();
        assert!(
            rows.is_multiple_of(ROWS_TOGETHER),
            "{rows} rows do not split into groups of {ROWS_TOGETHER}"
        );
        assert!(
            row_bytes.is_multiple_of(block_bytes) && bytes.len() == rows * row_bytes,
            "{} bytes are not {rows} rows of {row_bytes} bytes of {} blocks",
            bytes.len(),
            self.ty.name()
        );
        block_bytes
    }
}

#[cfg(test)]
impl<A: super::test_support::ActivationBlock> GroupBlock<A> {
    /// Asserts what a group kernel, `kernel(group, from_memory)`, gives for the eight rows
    /// `bytes` (file order) times `inputs`: prefetching or not, the same bits; the portable road
    /// is the row-by-row kernel bit for bit, and the kernel agrees with it within 1e-5 of the sum
    /// of |w x̂| (the integer sums are exact; the float sums run in another order).
    pub(super) fn check_products<const N: usize>(
        &self,
        bytes: &[u8],
        inputs: [&[A]; N],
        kernel: impl Fn(&[u8], bool) -> [[f32; ROWS_TOGETHER]; N],
    ) {
        let row_bytes = bytes.len() / ROWS_TOGETHER;
        let group = self.interleave(bytes, ROWS_TOGETHER, row_bytes);
        let ours = kernel(&group, false);
        assert_eq!(
            kernel(&group, true).map(|r| r.map(f32::to_bits)),
            ours.map(|r| r.map(f32::to_bits)),
            "{}: prefetching changes nothing but the timing",
            self.ty.name()
        );
        let portable = self.portable_products(&group, inputs);
        let name = self.ty.name();
        for (k, x) in inputs.iter().enumerate() {
            for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
                let expected = (self.dot_row)(row, x);
                assert_eq!(
                    portable[k][r].to_bits(),
                    expected.to_bits(),
                    "{name} row {r}"
                );
                let tolerance = 1e-5 * super::test_support::abs_products(self.ty, row, x);
                assert!(
                    (ours[k][r] - expected).abs() <= tolerance,
                    "{name} x {} blocks, input {k}, row {r}: {} vs {expected} (tolerance {tolerance})",
                    x.len(),
                    ours[k][r]
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::activations::{QK_K, quantize_row_q8_0, quantize_row_q8_k};
    use crate::quant::matmul_rows_quant;
    use crate::quant::test_support::{Rng, abs_products, random_blocks};

    fn interleaved_types() -> impl Iterator<Item = GgmlType> {
        GgmlType::ALL.into_iter().filter(|&ty| can_interleave(ty))
    }

    #[test]
    fn interleaving_round_trips() {
        let (rows, blocks) = (16, 3);
        for ty in interleaved_types() {
            let row_bytes = blocks * ty.block_bytes();
            let bytes = random_blocks(ty, rows * blocks, &mut Rng::new(7));
            let packed = interleave(ty, &bytes, rows, row_bytes);
            assert_ne!(packed, bytes, "{}", ty.name());
            assert_eq!(
                deinterleave(ty, &packed, rows, row_bytes),
                bytes,
                "{}",
                ty.name()
            );
        }
    }

    /// Sum over `row` of |w x̂| for input x quantized as `ty` pairs it (Q8_K or Q8_0).
    fn abs_products_of(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        if ty.block_len() == QK_K {
            let mut blocks = vec![BlockQ8K::ZERO; x.len() / QK_K];
            quantize_row_q8_k(x, &mut blocks);
            abs_products(ty, row, &blocks)
        } else {
            let mut blocks = vec![BlockQ8_0::ZERO; x.len() / ty.block_len()];
            quantize_row_q8_0(x, &mut blocks);
            abs_products(ty, row, &blocks)
        }
    }

    #[test]
    fn the_interleaved_matmul_matches_the_row_by_row_matmul() {
        let mut rng = Rng::new(13);
        // On one thread a band is a quarter of the rows: with one block a row, enough rows that
        // a band holds more groups than a sub-band, so the sub-bands' outputs are cut too.
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a thread pool");
        for ty in interleaved_types() {
            let sub_band_groups = SUB_BAND_BYTES / (ROWS_TOGETHER * ty.block_bytes());
            let many_rows = 4 * ROWS_TOGETHER * (sub_band_groups + 2);
            for (rows, blocks, pool) in [(24, 3, None), (many_rows, 1, Some(&one_thread))] {
                let cols = blocks * ty.block_len();
                let row_bytes = blocks * ty.block_bytes();
                let bytes = random_blocks(ty, rows * blocks, &mut rng);
                let packed = interleave(ty, &bytes, rows, row_bytes);
                for n in [1, 2, 3, 5] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
                    let mut expected = vec![0f32; n * rows];
                    matmul_rows_quant(ty, &bytes, rows, cols, &x, n, &mut expected);
                    let mut ours = vec![f32::NAN; n * rows];
                    let mut product =
                        || matmul_interleaved(ty, &packed, rows, cols, &x, n, &mut ours);
                    match pool {
                        Some(pool) => pool.install(product),
                        None => product(),
                    }
                    for i in 0..n {
                        let input = &x[i * cols..(i + 1) * cols];
                        for r in 0..rows {
                            let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                            let tolerance = 1e-5 * abs_products_of(ty, row, input);
                            let (got, want) = (ours[i * rows + r], expected[i * rows + r]);
                            assert!(
                                (got - want).abs() <= tolerance,
                                "{} {rows} rows, n = {n}, input {i}, row {r}: {got} vs {want}",
                                ty.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

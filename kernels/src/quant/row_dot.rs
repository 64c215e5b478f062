//! What every quantized format offers `matmul_rows_quant`: a tile of a few weight rows times a
//! few quantized input rows at once.
//!
//! With several inputs (a short prefill, a batch, the tokens routed to one expert) each weight
//! block is unpacked once per tile (nibbles, high bits, packed scales, the f16 factors) and meets
//! every input of the tile, and each input block is loaded once and meets every row of the tile.
//! With one input (a decode step) several rows still share the input's loads.

pub(super) trait RowDot {
    /// The quantized activation block the format pairs with (Q8_0 or Q8_K).
    type Activation: Copy + Sync;

    /// `rows` (R weight rows) times each of `inputs`: `result[r][k]` is row r times input k.
    /// Each result has the bits that the same row and input alone (`R = N = 1`) give: every pair
    /// is accumulated by the same operations in the same order, whatever the tile's shape.
    ///
    /// Panics unless every row holds exactly one block per block of each input.
    fn dot_tile<const R: usize, const N: usize>(
        rows: [&[u8]; R],
        inputs: [&[Self::Activation]; N],
    ) -> [[f32; N]; R];

    /// Rows per tile for `inputs` inputs at once (1 to [`Self::inputs_at_once`]). With one
    /// input (a decode step) the K-quants go a row at a time (their wide blocks keep the loop
    /// busy, and one row is one sequential stream for the prefetchers) while the 32-value
    /// formats take 4 rows, which share the input's loads; with 2 to 4 inputs 2 rows keep the
    /// tile's sums in registers, and with more a row's sums for every input take them all.
    fn tile_rows(inputs: usize) -> usize {
        if matches!(inputs, 2..=4) { 2 } else { 1 }
    }

    /// Inputs a tile meets at once (1 to 8): 4 by default, 8 (a row at a time) where unpacking
    /// a weight block costs enough that sharing it among 8 inputs pays (Q4_K and Q5_0).
    fn inputs_at_once() -> usize {
        4
    }
}

/// Asserts that every row holds one block of `block_bytes` per block of every input (`name` is
/// the format's, for the message).
pub(super) fn check_tile<A>(rows: &[&[u8]], inputs: &[&[A]], block_bytes: usize, name: &str) {
    for row in rows {
        for x in inputs {
            assert_eq!(
                row.len(),
                x.len() * block_bytes,
                "a {name} row must hold one block per activation block"
            );
        }
    }
}

/// A tile's results computed one pair at a time by `dot` (the portable kernels).
pub(super) fn tile_by_pairs<A, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    inputs: [&[A]; N],
    dot: fn(&[u8], &[A]) -> f32,
) -> [[f32; N]; R] {
    rows.map(|row| inputs.map(|x| dot(row, x)))
}

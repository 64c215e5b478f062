//! What every quantized format offers `matmul_rows_quant`: one weight row times several
//! quantized input rows at once.
//!
//! With several inputs (a short prefill, a batch, the tokens routed to one expert) a row's
//! blocks are unpacked once (nibbles, high bits, packed scales, the f16 factors) and each
//! unpacked block meets every input, rather than being unpacked again per input.

pub(super) trait RowDot {
    /// The quantized activation block the format pairs with (Q8_0 or Q8_K).
    type Activation: Copy + Sync;

    /// `weights` (one row) times each of `inputs`. Each result has the bits that the same input
    /// alone (`N = 1`) gives: every input is accumulated by the same operations in the same order.
    ///
    /// Panics unless the row holds exactly one block per block of each input.
    fn dot_rows<const N: usize>(weights: &[u8], inputs: [&[Self::Activation]; N]) -> [f32; N];
}

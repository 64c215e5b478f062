//! The CPU operands of our candle ops, checked: a contiguous slice of the expected type, or an
//! error naming the op and the operand.

use candle_core::{CpuStorage, Layout};

/// A contiguous f32 operand's values; `what` names it in the error ("latent attention: the
/// latent rows").
pub(crate) fn f32_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{what} must be contiguous f32"),
    }
}

/// A contiguous u32 operand's values.
pub(crate) fn u32_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [u32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{what} must be contiguous u32"),
    }
}

/// A contiguous u8 operand's values (weights in GGUF blocks).
pub(crate) fn u8_values<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [u8]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U8(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{what} must be contiguous u8"),
    }
}

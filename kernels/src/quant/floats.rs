//! The plain float types: F32, F16 and BF16 rows, little-endian.

use half::slice::HalfFloatSliceExt;

/// Rows converted per call when floats are turned into f32 on the fly: enough values to keep the
/// vector conversion busy, few enough (16 KiB of f32) to stay in L1 next to the inputs.
pub(super) const CONVERT_CHUNK: usize = 4096;

pub(super) fn f32_from_le(bytes: &[u8], out: &mut [f32]) {
    for (value, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// F16 to f32: eight at a time with F16C where the CPU has it, else through `half` (which uses
/// the CPU's own conversion where it finds one).
pub(super) fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::has_avx2_fma_f16c() {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { super::x86::f16_to_f32(bytes, out) };
            return;
        }
    }
    let mut halves = [half::f16::ZERO; CONVERT_CHUNK];
    for (bytes, out) in bytes
        .chunks(2 * CONVERT_CHUNK)
        .zip(out.chunks_mut(CONVERT_CHUNK))
    {
        let halves = &mut halves[..out.len()];
        for (h, b) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
            *h = half::f16::from_le_bytes([b[0], b[1]]);
        }
        halves.convert_to_f32_slice(out);
    }
}

/// BF16 is the top half of an f32, so widening is a shift (exact, NaN payloads kept).
pub(super) fn bf16_to_f32(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::x86::has_avx2_fma_f16c() {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { super::x86::bf16_to_f32(bytes, out) };
            return;
        }
    }
    for (value, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *value = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

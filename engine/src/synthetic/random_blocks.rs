//! Seeded random tensor data in any of the engine's storage types, with a chosen spread.
//!
//! Quantized blocks are not made by quantizing floats: their quants are random bytes and only
//! their f16 scales are chosen, so that the values a block decodes to have the asked standard
//! deviation and (nearly) zero mean. That is as fast as writing bytes, which matters for files
//! of many gigabytes, and exercises every bit of every block format.
//!
//! Values are generated per group (one block, or 256 plain floats), each group from its own
//! stream, so the bytes depend on the seed and the group's index only: not on how the work is
//! split into pieces or threads.

use half::{bf16, f16};
use kernels::quant::GgmlType;
use rayon::prelude::*;

/// What a tensor's values look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spread {
    /// Zero mean, this standard deviation.
    Centered { std: f32 },
    /// Around 1 (RMSNorm weights): uniform in [0.9, 1.1].
    NearOne,
}

/// Values per generation group of the plain float types.
const FLOAT_GROUP: usize = 256;

/// Standard deviation of a uniform integer on 0..=max (max + 1 equally likely values).
fn uniform_int_std(max: u32) -> f32 {
    let n = (max + 1) as f32;
    ((n * n - 1.0) / 12.0).sqrt()
}

/// Values (or blocks) per generation group of `ty`, and that group's bytes.
pub fn group_shape(ty: GgmlType) -> (usize, usize) {
    match ty.block_len() {
        1 => (FLOAT_GROUP, FLOAT_GROUP * ty.block_bytes()),
        len => (len, ty.block_bytes()),
    }
}

/// Fills `out` with the groups of the tensor whose stream is `stream`, from group number
/// `first_group` on, in parallel. `out` holds whole blocks; only a tensor's last piece may end in
/// a partial group (of plain floats).
pub fn fill(ty: GgmlType, spread: Spread, stream: u64, first_group: u64, out: &mut [u8]) {
    let (_, group_bytes) = group_shape(ty);
    assert!(
        out.len().is_multiple_of(ty.block_bytes()),
        "{} bytes are not whole {} blocks",
        out.len(),
        ty.name()
    );
    // Enough groups per task that scheduling costs nothing next to the work.
    let per_task = (1 << 16) / group_bytes + 1;
    out.par_chunks_mut(group_bytes * per_task)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, group) in chunk.chunks_mut(group_bytes).enumerate() {
                let index = first_group + (task * per_task + i) as u64;
                let mut rng = Rng::new(stream ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                fill_group(ty, spread, &mut rng, group);
            }
        });
}

fn fill_group(ty: GgmlType, spread: Spread, rng: &mut Rng, out: &mut [u8]) {
    let std = match spread {
        Spread::Centered { std } => std,
        // Blocks cannot centre on one; norms are stored as floats in every real file.
        Spread::NearOne => {
            assert!(
                ty.block_len() == 1,
                "norm weights are plain floats, not {}",
                ty.name()
            );
            0.0
        }
    };
    let value = |rng: &mut Rng| match spread {
        Spread::Centered { std } => std * 3f32.sqrt() * rng.signed_unit(),
        Spread::NearOne => 1.0 + 0.1 * rng.signed_unit(),
    };
    match ty {
        GgmlType::F32 => out
            .chunks_exact_mut(4)
            .for_each(|v| v.copy_from_slice(&value(rng).to_le_bytes())),
        GgmlType::F16 => out
            .chunks_exact_mut(2)
            .for_each(|v| v.copy_from_slice(&f16::from_f32(value(rng)).to_le_bytes())),
        GgmlType::BF16 => out
            .chunks_exact_mut(2)
            .for_each(|v| v.copy_from_slice(&bf16::from_f32(value(rng)).to_le_bytes())),
        // d * q, q a random signed byte.
        GgmlType::Q8_0 => {
            put_f16(out, 0, std / uniform_int_std(255));
            rng.fill(&mut out[2..]);
        }
        // d * (q - 8), q a random nibble.
        GgmlType::Q4_0 => {
            put_f16(out, 0, std / uniform_int_std(15));
            rng.fill(&mut out[2..]);
        }
        // d * (q - 16), q five random bits.
        GgmlType::Q5_0 => {
            put_f16(out, 0, std / uniform_int_std(31));
            rng.fill(&mut out[2..]);
        }
        GgmlType::Q4K => k_quant_with_minimums(out, std, 15, rng),
        GgmlType::Q5K => k_quant_with_minimums(out, std, 31, rng),
        // d * scale * (q - 32), q six random bits, positive 8-bit scales per 16 values.
        GgmlType::Q6K => {
            rng.fill(&mut out[..192]);
            let scales: [u8; 16] = std::array::from_fn(|_| 32 + (rng.next() % 96) as u8);
            out[192..208].copy_from_slice(&scales);
            put_f16(out, 208, std / (uniform_int_std(63) * rms(&scales)));
        }
    }
}

/// Q4_K and Q5_K: `d * scale * q - dmin * min` per sub-block of 32. Each sub-block's minimum is
/// its scale and dmin is d times the quants' midpoint, so every value is
/// `d * scale * (q - max_q / 2)`: centred, whatever the random scales.
fn k_quant_with_minimums(out: &mut [u8], std: f32, max_q: u32, rng: &mut Rng) {
    let scales: [u8; 8] = std::array::from_fn(|_| 32 + (rng.next() % 32) as u8);
    let d = std / (uniform_int_std(max_q) * rms(&scales));
    put_f16(out, 0, d);
    put_f16(out, 2, d * max_q as f32 / 2.0);
    out[4..16].copy_from_slice(&pack_scales_and_mins(&scales, &scales));
    // Q5_K's fifth bits and the nibbles of both: random.
    rng.fill(&mut out[16..]);
}

/// Eight 6-bit scales and minimums in ggml's 12-byte packing (the inverse of
/// `get_scale_min_k4`): bytes 0..4 and 4..8 hold scales and minimums 0..4 in their low six bits
/// and the top two bits of scales and minimums 4..8 in their high two; bytes 8..12 hold the low
/// four bits of scale (low nibble) and minimum (high nibble) 4..8.
pub fn pack_scales_and_mins(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = (scales[j] & 63) | ((scales[j + 4] >> 4) << 6);
        packed[j + 4] = (mins[j] & 63) | ((mins[j + 4] >> 4) << 6);
        packed[j + 8] = (scales[j + 4] & 15) | ((mins[j + 4] & 15) << 4);
    }
    packed
}

fn rms(values: &[u8]) -> f32 {
    let sum: f32 = values.iter().map(|&v| (v as f32) * (v as f32)).sum();
    (sum / values.len() as f32).sqrt()
}

fn put_f16(out: &mut [u8], at: usize, value: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
}

/// splitmix64: tiny, fast, and good enough for weights nobody trains.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        let len = tail.len();
        tail.copy_from_slice(&last[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `ty` decodes to, from `groups` groups.
    fn decoded(ty: GgmlType, spread: Spread, groups: usize) -> Vec<f32> {
        let (values, bytes) = group_shape(ty);
        let mut data = vec![0u8; groups * bytes];
        fill(ty, spread, 7, 0, &mut data);
        let mut out = vec![0f32; groups * values];
        kernels::quant::dequantize(ty, &data, &mut out);
        out
    }

    #[test]
    fn every_type_decodes_to_the_asked_spread() {
        for ty in GgmlType::ALL {
            let values = decoded(ty, Spread::Centered { std: 0.02 }, 64);
            let n = values.len() as f32;
            let mean = values.iter().sum::<f32>() / n;
            let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n).sqrt();
            assert!((std / 0.02 - 1.0).abs() < 0.05, "{}: std {std}", ty.name());
            // Q4_0's quants centre on -0.5, a ninth of their spread; the rest is sampling.
            let bound = 0.11 * 0.02 + 4.0 * 0.02 / n.sqrt();
            assert!(mean.abs() < bound, "{}: mean {mean}", ty.name());
        }
    }

    #[test]
    fn norms_are_near_one() {
        let values = decoded(GgmlType::F32, Spread::NearOne, 4);
        assert!(values.iter().all(|v| (0.9..=1.1).contains(v)));
    }

    #[test]
    fn bytes_do_not_depend_on_how_the_work_is_split() {
        let ty = GgmlType::Q4K;
        let (_, bytes) = group_shape(ty);
        let spread = Spread::Centered { std: 1.0 };
        let mut whole = vec![0u8; 1000 * bytes];
        fill(ty, spread, 3, 0, &mut whole);
        let mut pieces = vec![0u8; 1000 * bytes];
        let (first, second) = pieces.split_at_mut(333 * bytes);
        fill(ty, spread, 3, 0, first);
        fill(ty, spread, 3, 333, second);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn scale_packing_is_what_the_kernels_unpack() {
        let scales = [0, 1, 17, 63, 32, 48, 5, 62];
        let mins = [63, 2, 40, 0, 15, 16, 61, 33];
        // One Q4_K block with d = dmin = 1 and all nibbles 1: value = scale - min per sub-block.
        let mut block = vec![0u8; 144];
        put_f16(&mut block, 0, 1.0);
        put_f16(&mut block, 2, 1.0);
        block[4..16].copy_from_slice(&pack_scales_and_mins(&scales, &mins));
        block[16..].fill(0x11);
        let mut out = vec![0f32; 256];
        kernels::quant::dequantize(GgmlType::Q4K, &block, &mut out);
        for s in 0..8 {
            assert_eq!(
                out[32 * s],
                scales[s] as f32 - mins[s] as f32,
                "sub-block {s}"
            );
        }
    }
}

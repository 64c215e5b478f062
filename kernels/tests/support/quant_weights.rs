//! Random weights of every GGUF type for the integration tests (the quantized matmul's and the
//! GPU suite's): random quant bytes with finite f16 scales, or values for the float types.

use kernels::quant::GgmlType;

/// splitmix64: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Where a block keeps its f16 scales, and which bytes hold quant bits (cleared to find what a
/// K-quant block subtracts).
pub fn layout(ty: GgmlType) -> (&'static [usize], std::ops::Range<usize>) {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[0], 0..0),
        GgmlType::Q4K => (&[0, 2], 16..144),
        GgmlType::Q5K => (&[0, 2], 16..176),
        GgmlType::Q6K => (&[208], 0..0),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => (&[], 0..0),
    }
}

/// Random weights: random quant bytes with finite scales for the quantized types, values in
/// [-1, 1) for the float types.
pub fn random_weights(ty: GgmlType, values: usize, rng: &mut Rng) -> Vec<u8> {
    match ty {
        GgmlType::F32 => (0..values)
            .flat_map(|_| rng.signed_unit().to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..values)
            .flat_map(|_| half::f16::from_f32(rng.signed_unit()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..values)
            .flat_map(|_| half::bf16::from_f32(rng.signed_unit()).to_le_bytes())
            .collect(),
        _ => {
            let mut bytes: Vec<u8> = (0..ty.row_bytes(values).unwrap())
                .map(|_| rng.next_u64() as u8)
                .collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &offset in layout(ty).0 {
                    let scale = rng.signed_unit() * 0.1;
                    block[offset..offset + 2]
                        .copy_from_slice(&half::f16::from_f32(scale).to_le_bytes());
                }
            }
            bytes
        }
    }
}

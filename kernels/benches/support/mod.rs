//! What the kernel benches share: a seeded generator and random quantized matrices.

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

    /// A number in `0..n`.
    #[allow(dead_code)] // Not every bench draws indices.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` values in [-1, 1], in steps of 0.001.
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next_u64() % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }
}

/// A [rows, cols] matrix of `ty` (file order): random quant bytes with small finite f16 scales
/// where the format keeps them.
pub fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rows * ty.row_bytes(cols).unwrap())
        .map(|_| rng.next_u64() as u8)
        .collect();
    let offsets: &[usize] = match ty {
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &o in offsets {
            let scale = half::f16::from_f32((rng.next_u64() % 1000) as f32 * 1e-5 + 1e-4);
            block[o..o + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    bytes
}

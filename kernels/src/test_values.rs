//! Deterministic test inputs for the kernels' tests, and how the tests compare outputs.

/// `count` values in [-1, 1] in steps of 1e-4, from an xorshift generator seeded with `seed`.
pub fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 20_001) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

/// The largest difference between `ours` and `expected` (NaN when any is: an output never
/// written holds garbage, NaN on the emulated GPU driver), and the largest magnitude in
/// `expected`: the two figures the tests' relative bars compare.
pub fn worst_and_largest(ours: &[f32], expected: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), expected.len(), "output sizes");
    let largest = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0f32,
            |worst, e| if e.is_nan() || e > worst { e } else { worst },
        );
    (worst, largest)
}

//! How fast this machine streams memory into the cores: the denominator of a decode roofline
//! (decode reads every active weight once per token, so tokens/s can be at most
//! bandwidth / bytes read per token).

use std::time::Instant;

use rayon::prelude::*;

/// Bytes each task sums: large enough to stream, small enough to balance the threads.
const CHUNK_BYTES: usize = 1 << 20;

/// Reads a `bytes`-byte buffer on every thread of the pool `passes` times and returns the best
/// pass's rate in GB/s (1e9 bytes). The buffer should be several times the last-level cache
/// (1 GiB is typical); it is written once first so every page is really mapped.
pub fn read_gb_per_second(bytes: usize, passes: usize) -> f64 {
    let words = (bytes / 8).max(CHUNK_BYTES / 8);
    let buffer: Vec<u64> = (0..words as u64).collect();
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..passes.max(1) {
        let started = Instant::now();
        checksum ^= buffer
            .par_chunks(CHUNK_BYTES / 8)
            .map(sum_words)
            .reduce(|| 0, u64::wrapping_add);
        best = best.min(started.elapsed().as_secs_f64());
    }
    // The checksum keeps the reads from being optimised away.
    std::hint::black_box(checksum);
    (words * 8) as f64 / best / 1e9
}

/// Four independent sums so the loop is bound by loads, not by one addition chain.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut quads = words.chunks_exact(4);
    for quad in &mut quads {
        for (lane, &word) in lanes.iter_mut().zip(quad) {
            *lane = lane.wrapping_add(word);
        }
    }
    let tail: u64 = quads.remainder().iter().fold(0, |s, &w| s.wrapping_add(w));
    lanes.iter().fold(tail, |s, &l| s.wrapping_add(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_word() {
        let words: Vec<u64> = (1..=11).collect();
        assert_eq!(sum_words(&words), 66);
    }

    #[test]
    fn reports_a_positive_finite_rate() {
        let rate = read_gb_per_second(4 << 20, 2);
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
    }
}

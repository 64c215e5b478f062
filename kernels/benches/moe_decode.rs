//! `cargo bench -p kernels --bench moe_decode`: the quantized products of one decode step's
//! MoE layer, straight from memory, as DeepSeek-V2-Lite has them: the gate/up (Q4_K, 2816 x
//! 2048) and down (Q5_0, or Q8_0 with `DOWN=Q8_0`; 2048 x 1408) matrices of 8 experts drawn at
//! random from 64, interleaved, through `matvec_many_quant` on `THREADS` threads (2 unless
//! the environment says otherwise).
//!
//! It prints GB/s of weight bytes next to the machine's read bandwidth, with the weights in
//! ordinary (4 KiB) pages and in memory advised 2 MiB pages, as the engine's loader keeps
//! them (`engine::weight_arena`). The two layouts run in alternation, since the machine may be
//! shared; each figure is bytes over seconds summed over all rounds.

use std::time::Instant;

use kernels::quant::{GgmlType, MatVecJob, RowLayout, interleaved, matvec_many_quant};

mod support;
use support::{Rng, random_weights};

/// A random interleaved matrix.
fn matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = random_weights(ty, rows, cols, rng);
    interleaved::interleave(ty, &bytes, rows, bytes.len() / rows)
}

/// Every expert's matrix one after another, in a Vec or in a map advised 2 MiB pages.
struct Experts {
    bytes: Box<dyn std::ops::Deref<Target = [u8]>>,
    each: usize,
}

impl Experts {
    fn new(matrices: &[Vec<u8>], huge_pages: bool) -> Self {
        let each = matrices[0].len();
        let bytes: Box<dyn std::ops::Deref<Target = [u8]>> = if huge_pages {
            let mut map = memmap2::MmapOptions::new()
                .len(each * matrices.len())
                .map_anon()
                .expect("an anonymous map");
            #[cfg(target_os = "linux")]
            map.advise(memmap2::Advice::HugePage)
                .expect("madvise(MADV_HUGEPAGE)");
            for (target, matrix) in map.chunks_exact_mut(each).zip(matrices) {
                target.copy_from_slice(matrix);
            }
            Box::new(map)
        } else {
            Box::new(matrices.concat())
        };
        Self { bytes, each }
    }

    fn expert(&self, e: usize) -> &[u8] {
        &self.bytes[e * self.each..(e + 1) * self.each]
    }
}

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let down_type = match std::env::var("DOWN").as_deref() {
        Ok("Q8_0") => GgmlType::Q8_0,
        _ => GgmlType::Q5_0,
    };
    let (hidden, intermediate, experts, chosen, rounds) = (2048, 1408, 64, 8, 40);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut rng = Rng(7);
    let gate_ups: Vec<Vec<u8>> = (0..experts)
        .map(|_| matrix(GgmlType::Q4K, 2 * intermediate, hidden, &mut rng))
        .collect();
    let downs: Vec<Vec<u8>> = (0..experts)
        .map(|_| matrix(down_type, hidden, intermediate, &mut rng))
        .collect();
    let layouts: Vec<(&str, Experts, Experts)> = [("4 KiB pages", false), ("2 MiB pages", true)]
        .into_iter()
        .map(|(name, huge)| {
            (
                name,
                Experts::new(&gate_ups, huge),
                Experts::new(&downs, huge),
            )
        })
        .collect();
    drop((gate_ups, downs));
    let x = rng.values(hidden);
    let hidden_states: Vec<Vec<f32>> = (0..chosen).map(|_| rng.values(intermediate)).collect();
    let inputs: Vec<&[f32]> = hidden_states.iter().map(Vec::as_slice).collect();
    let mut gate_up_out = vec![vec![0f32; 2 * intermediate]; chosen];
    let mut down_out = vec![vec![0f32; hidden]; chosen];
    // (seconds, bytes) per layout; the first round warms up.
    let mut totals = vec![(0f64, 0usize); layouts.len()];
    for round in 0..=rounds {
        for ((_, gate_up, down), total) in layouts.iter().zip(&mut totals) {
            let picks: Vec<usize> = (0..chosen).map(|_| rng.below(experts)).collect();
            let gate_up_jobs: Vec<MatVecJob> = picks
                .iter()
                .map(|&e| MatVecJob {
                    ty: GgmlType::Q4K,
                    layout: RowLayout::Interleaved,
                    weights: gate_up.expert(e),
                    rows: 2 * intermediate,
                    input: 0,
                })
                .collect();
            let down_jobs: Vec<MatVecJob> = picks
                .iter()
                .enumerate()
                .map(|(i, &e)| MatVecJob {
                    ty: down_type,
                    layout: RowLayout::Interleaved,
                    weights: down.expert(e),
                    rows: hidden,
                    input: i,
                })
                .collect();
            let started = Instant::now();
            pool.install(|| {
                let mut outs: Vec<&mut [f32]> =
                    gate_up_out.iter_mut().map(Vec::as_mut_slice).collect();
                matvec_many_quant(&gate_up_jobs, &[&x], &mut outs);
                let mut outs: Vec<&mut [f32]> =
                    down_out.iter_mut().map(Vec::as_mut_slice).collect();
                matvec_many_quant(&down_jobs, &inputs, &mut outs);
            });
            std::hint::black_box((&gate_up_out, &down_out));
            if round > 0 {
                total.0 += started.elapsed().as_secs_f64();
                total.1 += chosen * (gate_up.each + down.each);
            }
        }
    }
    let read = pool.install(|| kernels::bandwidth::read_gb_per_second(1 << 30, 3));
    println!(
        "threads {threads}, Q4_K gate/up + {} down, {chosen} of {experts} experts, {rounds} rounds",
        down_type.name()
    );
    println!("memory read bandwidth        {read:6.2} GB/s");
    for ((name, _, _), (seconds, bytes)) in layouts.iter().zip(totals) {
        let rate = bytes as f64 / seconds / 1e9;
        println!(
            "MoE products, {name}  {rate:6.2} GB/s ({:.2} of read)",
            rate / read
        );
    }
}

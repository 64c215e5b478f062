//! `cargo bench -p kernels --bench quant_matmul`: `matmul_rows_quant` on DeepSeek-V2-Lite-sized
//! matrices, for the types a Q4_K_M file holds (and Q5_K, Q4_0), on a pool of `THREADS` threads
//! (2 unless the environment says otherwise).
//!
//! n = 1 reports GB/s of weight bytes (decode is a stream over the weights); n > 1 reports
//! GOP/s = 2 rows cols n / s (prefill is compute). Each figure is the best of several timed
//! runs, since the machine may be shared.

use std::time::{Duration, Instant};

use kernels::quant::{
    GgmlType, InstructionSet, RowLayout, interleaved, limit_instruction_set, matmul_rows_quant,
    pack_tile_panels,
};

mod support;
use support::{Rng, random_weights};

/// Best seconds per call over `runs` runs of at least `min_time` each.
fn best_seconds(runs: usize, min_time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let start = Instant::now();
        let mut calls = 0u32;
        while start.elapsed() < min_time || calls == 0 {
            f();
            calls += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / calls as f64);
    }
    best
}

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    // NS=1,64 picks the input counts.
    let ns: Vec<usize> = std::env::var("NS")
        .ok()
        .map(|ns| ns.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64]);
    // CALLS=k runs every case exactly k times untimed, for `perf stat` to count the CPU time (or
    // the cycles, where the machine counts them) of exactly that work.
    let calls: Option<usize> = std::env::var("CALLS").ok().and_then(|c| c.parse().ok());
    // KERNELS=avx2 (or portable, avx512-vnni, amx) holds the kernels at most at that level.
    if let Some(name) = std::env::var("KERNELS").ok().filter(|k| !k.is_empty()) {
        let level = InstructionSet::from_name(&name)
            .unwrap_or_else(|| panic!("KERNELS={name}: not portable, avx2, avx512-vnni or amx"));
        limit_instruction_set(level);
    }
    // PANELS=1 times, instead, the part of an AMX tile product that does not depend on the inputs:
    // turning the weights into bf16 panels (one thread, ns per weight value).
    let panels = std::env::var("PANELS").is_ok_and(|p| p == "1");
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    // "x8": the same matrix with its rows interleaved in eights (`kernels::quant::interleaved`).
    let cases: [(GgmlType, &str, usize, usize); 15] = [
        (GgmlType::Q4K, "expert gate/up", 1408, 2048),
        (GgmlType::Q4K, "x8 expert gate/up", 1408, 2048),
        (GgmlType::Q4K, "dense gate/up", 10944, 2048),
        (GgmlType::Q4K, "x8 dense gate/up", 10944, 2048),
        (GgmlType::Q6K, "output", 102400, 2048),
        (GgmlType::Q6K, "x8 output", 102400, 2048),
        (GgmlType::Q6K, "expert gate/up", 1408, 2048),
        (GgmlType::Q6K, "x8 expert gate/up", 1408, 2048),
        (GgmlType::Q5_0, "expert down", 2048, 1408),
        (GgmlType::Q5_0, "x8 expert down", 2048, 1408),
        (GgmlType::Q8_0, "expert down", 2048, 1408),
        (GgmlType::Q8_0, "x8 expert down", 2048, 1408),
        (GgmlType::Q8_0, "dense down", 2048, 10944),
        (GgmlType::Q5K, "expert gate/up", 1408, 2048),
        (GgmlType::Q4_0, "expert down", 2048, 1408),
    ];
    println!(
        "threads {threads}, best of {runs}, group kernels {}",
        InstructionSet::in_use().name()
    );
    let mut rng = Rng(1);
    for (ty, what, rows, cols) in cases {
        let label = format!("{} {what} {rows}x{cols}", ty.name());
        if filter.as_ref().is_some_and(|f| !label.contains(f.as_str())) {
            continue;
        }
        let x8 = what.starts_with("x8");
        let mut w = random_weights(ty, rows, cols, &mut rng);
        if x8 {
            w = interleaved::interleave(ty, &w, rows, w.len() / rows);
        }
        let product = |x: &[f32], n: usize, y: &mut [f32]| {
            if x8 {
                interleaved::matmul_interleaved(ty, &w, rows, cols, x, n, y)
            } else {
                matmul_rows_quant(ty, &w, rows, cols, x, n, y)
            }
        };
        let mut line = format!("{label:<34}");
        if panels {
            let layout = if x8 {
                RowLayout::Interleaved
            } else {
                RowLayout::InFileOrder
            };
            let s = best_seconds(runs, Duration::from_millis(250), || {
                pack_tile_panels(ty, layout, &w, rows, cols)
            });
            println!(
                "{line}  bf16 panels {:6.3} ns/value",
                s * 1e9 / (rows * cols) as f64
            );
            continue;
        }
        for &n in &ns {
            let x = rng.values(n * cols);
            let mut y = vec![0f32; n * rows];
            if let Some(calls) = calls {
                pool.install(|| {
                    for _ in 0..calls {
                        product(&x, n, &mut y);
                        std::hint::black_box(&y);
                    }
                });
                continue;
            }
            let min_time = Duration::from_millis(if n == 1 { 150 } else { 250 });
            let s = pool.install(|| {
                best_seconds(runs, min_time, || {
                    product(&x, n, &mut y);
                    std::hint::black_box(&y);
                })
            });
            if n == 1 {
                line += &format!("  n=1 {:6.1} GB/s", w.len() as f64 / s / 1e9);
            } else {
                let gops = 2.0 * (rows * cols * n) as f64 / s / 1e9;
                line += &format!("  n={n} {gops:6.1} GOP/s");
            }
        }
        println!("{line}");
    }
}

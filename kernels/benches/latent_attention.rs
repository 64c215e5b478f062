//! `cargo bench -p kernels --bench latent_attention`: one decode step of the paged absorbed-MLA
//! attention on the CPU, at DeepSeek-V2-Lite's shape (16 heads, latent 512, rope 64) over a
//! cached context of `CONTEXTS` tokens (512,2048,8192 unless the environment says otherwise) in
//! pages of 32, on `THREADS` threads (2 by default).
//!
//! Each context is measured two ways in alternation, so that a shared machine's noise falls on
//! both: the page products in place (AVX-512, `page_products`) and packed matrix products (the
//! road every CPU without AVX-512 takes, forced here by holding the kernels at AVX2). It prints
//! microseconds per layer-step, the latent bytes read per second, and their ratio. Eight layers'
//! caches are visited in turn, so that at long contexts the keys come from memory as they do in
//! a model, not from the cache the previous step warmed.

use std::time::Instant;

use kernels::paged_attention::{LatentPages, LatentQueries, absorbed_attention};
use kernels::quant::{InstructionSet, limit_instruction_set};
use kernels::test_values::values;

const HEADS: usize = 16;
const KV_LORA: usize = 512;
const ROPE: usize = 64;
const PAGE_TOKENS: usize = 32;
const LAYERS: usize = 8;
const ROUNDS: usize = 5;

fn environment(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let threads: usize = environment("THREADS", "2").parse().expect("THREADS");
    let contexts: Vec<usize> = environment("CONTEXTS", "512,2048,8192")
        .split(',')
        .map(|c| c.trim().parse().expect("CONTEXTS: token counts"))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    let in_place_level = InstructionSet::vectors_in_use();
    let row = KV_LORA + ROPE;
    let q_latent = values(HEADS * KV_LORA, 2);
    let q_rope = values(HEADS * ROPE, 3);
    let mut out = vec![0f32; HEADS * KV_LORA];
    println!(
        "{{\"threads\": {threads}, \"in_place_level\": \"{}\", \"rows\": [",
        in_place_level.name()
    );
    for (index, &context) in contexts.iter().enumerate() {
        let pages_per_layer = context.div_ceil(PAGE_TOKENS);
        let caches: Vec<Vec<Vec<f32>>> = (0..LAYERS)
            .map(|layer| {
                (0..pages_per_layer)
                    .map(|page| values(PAGE_TOKENS * row, (layer * 100_003 + page) as u64 + 7))
                    .collect()
            })
            .collect();
        let tables: Vec<Vec<&[f32]>> = caches
            .iter()
            .map(|pages| pages.iter().map(Vec::as_slice).collect())
            .collect();
        let steps = (4096 * 8 / context).clamp(LAYERS, 512);
        let mut seconds = [0f64; 2];
        for _ in 0..ROUNDS {
            for (road, level) in [in_place_level, InstructionSet::Avx2]
                .into_iter()
                .enumerate()
            {
                limit_instruction_set(level);
                let started = Instant::now();
                pool.install(|| {
                    for step in 0..steps {
                        absorbed_attention(
                            &LatentQueries {
                                latent: &q_latent,
                                rope: &q_rope,
                                tokens: 1,
                                heads: HEADS,
                                first_position: context - 1,
                            },
                            &LatentPages {
                                pages: &tables[step % LAYERS],
                                page_tokens: PAGE_TOKENS,
                                kv_lora: KV_LORA,
                                rope: ROPE,
                            },
                            0.07,
                            &mut out,
                        );
                    }
                });
                seconds[road] += started.elapsed().as_secs_f64();
            }
        }
        limit_instruction_set(InstructionSet::Amx);
        let bytes = (context * row * 4 * steps * ROUNDS) as f64;
        let [in_place, packed] =
            seconds.map(|s| (s * 1e6 / (steps * ROUNDS) as f64, bytes / s / 1e9));
        println!(
            "  {{\"context\": {context}, \"in_place_us\": {:.1}, \"in_place_gb_per_s\": {:.2}, \
             \"packed_us\": {:.1}, \"packed_gb_per_s\": {:.2}, \"packed_over_in_place\": {:.3}}}{}",
            in_place.0,
            in_place.1,
            packed.0,
            packed.1,
            packed.0 / in_place.0,
            if index + 1 < contexts.len() { "," } else { "" }
        );
    }
    println!("]}}");
}

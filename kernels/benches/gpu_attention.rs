//! `cargo bench -p kernels --bench gpu_attention`: the paged absorbed-MLA kernel on a GPU, one
//! decode step (and a 64-token prompt tail) over a cached context, at DeepSeek-V2-Lite's and
//! DeepSeek-V2's attention shapes. Reports microseconds per step and the latent bytes the step
//! must read (every head group reads each cached row once) per second, to set against the
//! card's memory bandwidth. Times include the two launches; each figure is the best of `RUNS`
//! runs of at least 0.2 s. Without a GPU (or NVRTC) it says why and exits 0.

use std::time::{Duration, Instant};

use kernels::cuda::MlaShape;
use kernels::cuda::driver::Gpu;
use kernels::cuda::launch::{AttentionStep, GpuKernels};
use kernels::cuda::nvrtc::Nvrtc;

const PAGE_TOKENS: usize = 16;

fn main() {
    let gpu = match Gpu::open(0) {
        Ok(gpu) => gpu,
        Err(error) => {
            println!("{{\"gpu\": null, \"reason\": {:?}}}", error.to_string());
            return;
        }
    };
    let nvrtc = match Nvrtc::open() {
        Ok(nvrtc) => nvrtc,
        Err(error) => {
            println!(
                "{{\"gpu\": {:?}, \"reason\": {:?}}}",
                gpu.name,
                error.to_string()
            );
            return;
        }
    };
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "{{\"gpu\": {:?}, \"compute_capability\": \"{}.{}\", \"multiprocessors\": {}, \"rows\": [",
        gpu.name, gpu.compute_capability.0, gpu.compute_capability.1, gpu.multiprocessors
    );
    let shapes = [
        (
            "lite",
            MlaShape {
                heads: 16,
                kv_lora: 512,
                rope: 64,
            },
        ),
        (
            "v2",
            MlaShape {
                heads: 128,
                kv_lora: 512,
                rope: 64,
            },
        ),
    ];
    let mut first_row = true;
    for (name, shape) in shapes {
        let kernels = GpuKernels::compile(&gpu, &nvrtc, shape).unwrap_or_else(|e| panic!("{e}"));
        let head_groups = shape.heads / shape.heads_per_block().unwrap();
        for context in [1024usize, 4096, 16384, 32768] {
            for tokens in [1, 64] {
                let first_position = context - tokens;
                let row = shape.kv_lora + shape.rope;
                let pages = context.div_ceil(PAGE_TOKENS);
                let upload = |values: usize| gpu.upload(&vec![0.01f32; values]).unwrap();
                let (q_latent, q_rope) = (
                    upload(tokens * shape.heads * shape.kv_lora),
                    upload(tokens * shape.heads * shape.rope),
                );
                let pool = upload(pages * PAGE_TOKENS * row);
                let table: Vec<i32> = (0..pages as i32).collect();
                let page_table = gpu.upload(&table).unwrap();
                let step = AttentionStep {
                    q_latent: &q_latent,
                    q_rope: &q_rope,
                    pool: &pool,
                    page_table: &page_table,
                    tokens,
                    first_position,
                    page_tokens: PAGE_TOKENS,
                    softmax_scale: 0.07,
                };
                let workspace = kernels
                    .attention_workspace(tokens, first_position, PAGE_TOKENS)
                    .unwrap();
                let mut best = f64::INFINITY;
                for run in 0..=runs {
                    let start = Instant::now();
                    let mut steps = 0u32;
                    while start.elapsed() < Duration::from_millis(200) || steps == 0 {
                        kernels.launch_attention(&step, &workspace).unwrap();
                        steps += 1;
                        if steps.is_multiple_of(16) {
                            gpu.synchronize().unwrap();
                        }
                    }
                    gpu.synchronize().unwrap();
                    if run > 0 {
                        best = best.min(start.elapsed().as_secs_f64() / steps as f64);
                    }
                }
                let bytes = (context * row * 4 * head_groups) as f64;
                println!(
                    "{}  {{\"shape\": \"{name}\", \"context\": {context}, \"tokens\": {tokens}, \
                     \"splits\": {}, \"us_per_step\": {:.2}, \"latent_gb_per_second\": {:.1}}}",
                    if first_row { "" } else { "," },
                    workspace.splits(),
                    best * 1e6,
                    bytes / best / 1e9
                );
                first_row = false;
            }
        }
    }
    println!("]}}");
}

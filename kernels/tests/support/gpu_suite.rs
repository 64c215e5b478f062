//! The GPU suite's cases: every CUDA kernel, launched by `kernels::cuda::launch`, against its CPU
//! reference on random inputs of real and awkward shapes. `gpu.rs` runs them on an NVIDIA GPU
//! (ignored by default); `gpu_on_cpu.rs` runs them on the emulated driver (`cuda_on_cpu/`) in
//! every test run.

use kernels::cuda::MlaShape;
use kernels::cuda::driver::Gpu;
use kernels::cuda::launch::GpuKernels;
use kernels::cuda::launch_shapes::Arithmetic;
use kernels::cuda::nvrtc::Nvrtc;
use kernels::expert_rows::{combine_expert_rows, expert_rows};
use kernels::grouped_matmul::{ExpertWeights, grouped_matmul, grouped_matmul_bf16};
use kernels::paged_attention::{LatentPages, LatentQueries, absorbed_attention};
use kernels::quant::{GgmlType, dequantize};
use kernels::routing::{GroupLimit, Weighting, route_token};
use kernels::test_values::worst_and_largest;

use super::quant_weights::{Rng, random_weights};

/// One `#[test]` per case, each opening its GPU and NVRTC with `open` (an expression giving
/// `(Gpu, Nvrtc)`), with the attributes given (an `#[ignore]`, say).
#[macro_export]
macro_rules! gpu_suite {
    ($(#[$attribute:meta])* open: $open:expr) => {
        $crate::gpu_suite!(@each [$(#[$attribute])*] $open;
            routing_matches_the_cpu_reference,
            paged_attention_decode_matches_the_cpu_reference,
            a_span_against_cached_pages_matches_the_cpu_reference,
            the_grouped_expert_matmul_matches_the_cpu_reference,
            weights_in_gguf_blocks_match_the_cpu_reference,
            weights_in_gguf_blocks_on_tensor_cores_match_their_bf16_rounding,
            expert_rows_place_every_choice_as_the_cpu_reference_does,
            a_moe_layer_through_rows_on_the_gpu_matches_the_cpu_reference);
    };
    (@each $attributes:tt $open:expr; $case:ident $(, $rest:ident)*) => {
        $crate::gpu_suite!(@one $attributes $open; $case);
        $crate::gpu_suite!(@each $attributes $open; $($rest),*);
    };
    (@each $attributes:tt $open:expr;) => {};
    (@one [$($attribute:tt)*] $open:expr; $case:ident) => {
        #[test]
        $($attribute)*
        fn $case() {
            let (gpu, nvrtc) = $open;
            support::gpu_suite::$case(&gpu, &nvrtc);
        }
    };
}

/// Seeded values in [-1, 1).
fn random(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

const LITE: MlaShape = MlaShape {
    heads: 16,
    kv_lora: 512,
    rope: 64,
};
const TINY: MlaShape = MlaShape {
    heads: 4,
    kv_lora: 64,
    rope: 16,
};

pub fn routing_matches_the_cpu_reference(gpu: &Gpu, nvrtc: &Nvrtc) {
    let kernels = GpuKernels::compile(gpu, nvrtc, TINY).unwrap();
    // (experts, top_k, limit, weighting): Lite, DeepSeek-V2, the tiny model, and odd sizes.
    let cases = [
        (64, 6, GroupLimit::None, Weighting::Scale(1.0)),
        (
            160,
            6,
            GroupLimit::Groups {
                groups: 8,
                keep_groups: 3,
            },
            Weighting::Scale(16.0),
        ),
        (12, 2, GroupLimit::None, Weighting::Normalize),
        (
            33,
            5,
            GroupLimit::Groups {
                groups: 3,
                keep_groups: 2,
            },
            Weighting::Normalize,
        ),
    ];
    for (case, &(experts, top_k, limit, weighting)) in cases.iter().enumerate() {
        let tokens = 37;
        // Logits spread as a router's are (a few units).
        let logits: Vec<f32> = random(tokens * experts, case as u64 + 1)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let gpu_routes = kernels
            .route(&logits, experts, top_k, limit, weighting)
            .unwrap();
        for (token, row) in logits.chunks_exact(experts).enumerate() {
            let mut cpu = Vec::new();
            route_token(row, top_k, limit, weighting, &mut cpu);
            let gpu_route = &gpu_routes[token];
            assert_eq!(
                gpu_route.iter().map(|c| c.0).collect::<Vec<_>>(),
                cpu.iter().map(|c| c.0).collect::<Vec<_>>(),
                "case {case}, token {token}"
            );
            for (g, c) in gpu_route.iter().zip(&cpu) {
                assert!(
                    (g.1 - c.1).abs() <= 1e-5 * c.1.abs().max(1.0),
                    "case {case}, token {token}: {gpu_route:?} vs {cpu:?}"
                );
            }
        }
    }
}

/// The pool's pages listed out of order (reversed, then rotated by 3), so that the page table's
/// indirection is exercised.
fn shuffled_pool(pages: usize, page_tokens: usize, row: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let pool = random(pages * page_tokens * row, seed);
    let table: Vec<i32> = (0..pages)
        .map(|i| ((pages - 1 - i + 3) % pages) as i32)
        .collect();
    (pool, table)
}

fn assert_attention_matches(kernels: &GpuKernels, shape: MlaShape, tokens: usize, first: usize) {
    let page_tokens = 16;
    let row = shape.kv_lora + shape.rope;
    let pages = (first + tokens).div_ceil(page_tokens) + 1;
    let seed = (tokens * 1000 + first) as u64;
    let (pool, table) = shuffled_pool(pages, page_tokens, row, seed);
    let latent = random(tokens * shape.heads * shape.kv_lora, seed + 1);
    let roped = random(tokens * shape.heads * shape.rope, seed + 2);
    let scale = 1.0 / ((shape.kv_lora + shape.rope) as f32).sqrt();
    let on_gpu = kernels
        .absorbed_attention(
            &latent,
            &roped,
            tokens,
            first,
            &pool,
            &table,
            page_tokens,
            scale,
        )
        .unwrap();
    let page_slices: Vec<&[f32]> = table
        .iter()
        .map(|&page| &pool[page as usize * page_tokens * row..][..page_tokens * row])
        .collect();
    let keys = LatentPages {
        pages: &page_slices,
        page_tokens,
        kv_lora: shape.kv_lora,
        rope: shape.rope,
    };
    let queries = LatentQueries {
        latent: &latent,
        rope: &roped,
        tokens,
        heads: shape.heads,
        first_position: first,
    };
    let mut on_cpu = vec![0f32; tokens * shape.heads * shape.kv_lora];
    absorbed_attention(&queries, &keys, scale, &mut on_cpu);
    let (worst, largest) = worst_and_largest(&on_gpu, &on_cpu);
    eprintln!("{shape:?} tokens {tokens} from {first}: worst {worst:e} of {largest:e}");
    assert!(
        worst <= 1e-5 * largest.max(1e-3),
        "{shape:?} {tokens}@{first}: {worst:e}"
    );
}

pub fn paged_attention_decode_matches_the_cpu_reference(gpu: &Gpu, nvrtc: &Nvrtc) {
    for shape in [LITE, TINY] {
        let kernels = GpuKernels::compile(gpu, nvrtc, shape).unwrap();
        // One key, a part page, many pages (split-K), a long context.
        for context in [1, 17, 300, 4100] {
            assert_attention_matches(&kernels, shape, 1, context - 1);
        }
    }
}

pub fn a_span_against_cached_pages_matches_the_cpu_reference(gpu: &Gpu, nvrtc: &Nvrtc) {
    for shape in [LITE, TINY] {
        let kernels = GpuKernels::compile(gpu, nvrtc, shape).unwrap();
        // A fresh prompt (from position 0) and a tail after 37 cached tokens: causal per token.
        assert_attention_matches(&kernels, shape, 23, 0);
        assert_attention_matches(&kernels, shape, 5, 37);
    }
}

/// Expert e's rows start at entry e: 0, then the running sum of `rows_per_expert`.
fn row_offsets_of(rows_per_expert: &[usize]) -> Vec<usize> {
    let mut offsets = vec![0];
    for rows in rows_per_expert {
        offsets.push(offsets.last().unwrap() + rows);
    }
    offsets
}

/// The grouped product of `x` (rows in expert order) on the GPU against the CPU reference,
/// printed under `what`; asserts the GPU's is within f32 rounding of the reference's (sums of k
/// products in another order: a few ulps of sqrt(k) * |x| * |w|).
fn assert_grouped_matches(
    kernels: &GpuKernels,
    x: &[f32],
    row_offsets: &[usize],
    (weights, arithmetic): (ExpertWeights, Arithmetic),
    (n, k): (usize, usize),
    what: &str,
) {
    let rows = *row_offsets.last().unwrap();
    let on_gpu = kernels
        .grouped_matmul(x, None, row_offsets, weights, (n, k), arithmetic)
        .unwrap();
    let mut on_cpu = vec![0f32; rows * n];
    grouped_matmul(x, row_offsets, weights, n, k, &mut on_cpu);
    let (worst, largest) = worst_and_largest(&on_gpu, &on_cpu);
    eprintln!("{what} [{n}, {k}]: worst {worst:e} of {largest:e}");
    assert!(largest > 0.0 && largest.is_finite(), "{what}: {largest:e}");
    assert!(
        worst <= 1e-5 * largest,
        "{what} [{n}, {k}]: {worst:e} of {largest:e}"
    );
}

pub fn the_grouped_expert_matmul_matches_the_cpu_reference(gpu: &Gpu, nvrtc: &Nvrtc) {
    let kernels = GpuKernels::compile(gpu, nvrtc, TINY).unwrap();
    // Lite's gate projection (n 1408, k 2048) over 8 experts with uneven rows (one idle, one past
    // a tile), and an awkward small shape (both in tiles: f32 arithmetic for f32 weights, tensor
    // cores for bf16); then few rows per expert (the matvec): a decode step, experts past one
    // and two of its 4-row passes, in 16-byte loads and, at k 47, value by value.
    for (n, k, rows_per_expert) in [
        (1408, 2048, vec![3, 0, 64, 65, 1, 130, 7, 2]),
        (33, 47, vec![5, 0, 0, 70]),
        (1408, 2048, vec![1, 0, 2, 0, 1, 1, 0, 1]),
        (96, 80, vec![9, 0, 5, 13]),
        (33, 47, vec![2, 0, 7, 1]),
    ] {
        let row_offsets = row_offsets_of(&rows_per_expert);
        let experts = rows_per_expert.len();
        let rows = *row_offsets.last().unwrap();
        let x = random(rows * k, n as u64);
        let w = random(experts * n * k, k as u64);
        let bits: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        // Tensor cores take bf16 inputs: with bf16 weights x holds bf16 values too, as a bf16
        // model's activations do, so only the order of the sums differs from the reference.
        let x_bf16: Vec<f32> = x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        // bf16 weights in f32 arithmetic: the f32 tiles read them exactly.
        for (x, weights, arithmetic) in [
            (&x, ExpertWeights::F32(&w), Arithmetic::F32),
            (&x_bf16, ExpertWeights::Bf16(&bits), Arithmetic::Bf16),
            (&x, ExpertWeights::Bf16(&bits), Arithmetic::F32),
        ] {
            let what = format!(
                "grouped {:?} in {arithmetic:?} {rows_per_expert:?}",
                weights.format()
            );
            let product = (weights, arithmetic);
            assert_grouped_matches(&kernels, x, &row_offsets, product, (n, k), &what);
        }
    }
}

pub fn weights_in_gguf_blocks_match_the_cpu_reference(gpu: &Gpu, nvrtc: &Nvrtc) {
    let kernels = GpuKernels::compile(gpu, nvrtc, TINY).unwrap();
    // Every block format GGUF files hold (block_formats_and_k), through the tiles (one expert
    // past a tile, one idle) and the matvec (a decode step's few rows, F16's last values past
    // whole runs of 32); one expert alone is a dense Linear.
    for (f, (ty, k)) in block_formats_and_k().enumerate() {
        for rows_per_expert in [vec![3, 0, 70, 1], vec![1, 0, 2, 5], vec![9]] {
            let n = 40;
            let row_offsets = row_offsets_of(&rows_per_expert);
            let experts = rows_per_expert.len();
            let rows = *row_offsets.last().unwrap();
            let x = random(rows * k, 31 + f as u64);
            let bytes = random_weights(ty, experts * n * k, &mut Rng(17 + f as u64));
            let weights = (ExpertWeights::Blocks { ty, bytes: &bytes }, Arithmetic::F32);
            let what = format!("{} {rows_per_expert:?}", ty.name());
            assert_grouped_matches(&kernels, &x, &row_offsets, weights, (n, k), &what);
        }
    }
}

/// The GGUF block formats GPU kernels read, each with a k of whole blocks (Lite's 1408 for the
/// formats of 32, 512 for the K-quants of 256) but F16's 1007 (rows of any length).
fn block_formats_and_k() -> impl Iterator<Item = (GgmlType, usize)> {
    [
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ]
    .into_iter()
    .map(|ty| {
        let k = match ty.block_len() {
            256 => 512,
            1 => 1007,
            _ => 1408,
        };
        (ty, k)
    })
}

pub fn weights_in_gguf_blocks_on_tensor_cores_match_their_bf16_rounding(gpu: &Gpu, nvrtc: &Nvrtc) {
    let kernels = GpuKernels::compile(gpu, nvrtc, TINY).unwrap();
    // A bf16 model's prompt over GGUF weights: the tiles on tensor cores decode each run of 32
    // values, round them to bf16 and multiply x rounded to bf16. The reference is the CPU's
    // product of the same roundings (grouped_matmul_bf16): x to bf16, and each weight
    // dequantized as gguf-py does (kernels::quant::dequantize) then rounded to bf16. Experts past a tile, one idle, outputs
    // past a column tile, F16's last values past whole runs (k 1007).
    for (f, (ty, k)) in block_formats_and_k().enumerate() {
        for (rows_per_expert, n) in [(vec![3, 0, 70, 1], 72), (vec![40], 40)] {
            let row_offsets = row_offsets_of(&rows_per_expert);
            let experts = rows_per_expert.len();
            let rows = *row_offsets.last().unwrap();
            let x: Vec<f32> = random(rows * k, 41 + f as u64)
                .into_iter()
                .map(|v| half::bf16::from_f32(v).to_f32())
                .collect();
            let bytes = random_weights(ty, experts * n * k, &mut Rng(23 + f as u64));
            let weights = ExpertWeights::Blocks { ty, bytes: &bytes };
            let on_gpu = kernels
                .grouped_matmul(&x, None, &row_offsets, weights, (n, k), Arithmetic::Bf16)
                .unwrap();
            let mut on_cpu = vec![0f32; rows * n];
            grouped_matmul_bf16(&x, &row_offsets, weights, n, k, &mut on_cpu);
            let mut values = vec![0f32; experts * n * k];
            dequantize(ty, &bytes, &mut values);
            let (worst, largest) = worst_and_largest(&on_gpu, &on_cpu);
            // The GPU may fuse a block's multiply and subtraction, so a decoded weight can differ
            // from the CPU's in its last f32 bit, and then, rarely, in its bf16 rounding: one
            // bf16 step (at most 2^-7 of it) of one product. Two such per sum are allowed; a
            // wrong value or scale moves a sum by whole products.
            let largest_product = values.iter().fold(0f32, |m, v| m.max(v.abs()))
                * x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let allowed = 1e-5 * largest + 2.0 * largest_product / 128.0;
            eprintln!(
                "{} on tensor cores {rows_per_expert:?} [{n}, {k}]: worst {worst:e} of {largest:e} \
                 (allowed {allowed:e})",
                ty.name()
            );
            assert!(
                largest > 0.0 && largest.is_finite(),
                "{}: {largest:e}",
                ty.name()
            );
            assert!(worst <= allowed, "{}: {worst:e} of {largest:e}", ty.name());
        }
    }
}

/// Seeded choices of `top_k` distinct experts per token, skewed so that a few experts take most
/// tokens (some past a tile of 64 rows) and some take none.
fn skewed_choices(tokens: usize, top_k: usize, experts: usize, seed: u64) -> Vec<u32> {
    let draws = random(tokens * experts, seed);
    draws
        .chunks_exact(experts)
        .flat_map(|draw| {
            let mut order: Vec<usize> = (0..experts).collect();
            // Low experts score higher: expert e's key is its draw minus e / experts.
            order.sort_by(|&a, &b| {
                let key = |e: usize| draw[e] - 1.5 * e as f32 / experts as f32;
                key(b).total_cmp(&key(a))
            });
            order.into_iter().take(top_k).map(|e| e as u32)
        })
        .collect()
}

pub fn expert_rows_place_every_choice_as_the_cpu_reference_does(gpu: &Gpu, nvrtc: &Nvrtc) {
    let kernels = GpuKernels::compile(gpu, nvrtc, TINY).unwrap();
    // (tokens, top_k, experts): a decode step of Lite, a prompt of Lite, DeepSeek-V2's 160
    // experts, more choices than the block has threads.
    for (tokens, top_k, experts) in [(1, 6, 64), (300, 6, 64), (77, 6, 160), (2000, 2, 12)] {
        let chosen = skewed_choices(tokens, top_k, experts, tokens as u64);
        let on_cpu = expert_rows(&chosen, experts, top_k);
        let on_gpu = kernels.expert_rows(&chosen, experts, top_k).unwrap();
        assert_eq!(on_gpu.row_offsets, on_cpu.row_offsets, "{tokens} x {top_k}");
        assert_eq!(
            on_gpu.tile_offsets, on_cpu.tile_offsets,
            "{tokens} x {top_k}"
        );
        // Every choice has its own row, inside its expert's rows, holding its token.
        let mut taken = vec![false; chosen.len()];
        for (choice, (&row, &expert)) in on_gpu.choice_row.iter().zip(&chosen).enumerate() {
            let row = row as usize;
            let expert = expert as usize;
            assert!(!std::mem::replace(&mut taken[row], true), "row {row} twice");
            assert!(
                (on_cpu.row_offsets[expert]..on_cpu.row_offsets[expert + 1])
                    .contains(&(row as u32))
            );
            assert_eq!(on_gpu.row_token[row] as usize, choice / top_k);
        }
    }
}

pub fn a_moe_layer_through_rows_on_the_gpu_matches_the_cpu_reference(gpu: &Gpu, nvrtc: &Nvrtc) {
    let kernels = GpuKernels::compile(gpu, nvrtc, TINY).unwrap();
    // The engine's road for a layer's routed experts: the GPU places the rows, the grouped
    // matmul reads each row's token in place, the rows are combined back with their weights.
    // A decode step and a keystroke of Lite (few rows per expert: the matvec), a prompt over
    // 16 experts (the tiles, some experts past one), an awkward small shape.
    for (tokens, top_k, experts, n, k) in [
        (1, 6, 64, 1408, 2048),
        (150, 6, 64, 96, 80),
        (400, 6, 16, 96, 80),
        (9, 2, 5, 33, 47),
    ] {
        let chosen = skewed_choices(tokens, top_k, experts, 3 * tokens as u64);
        let x = random(tokens * k, n as u64);
        let w = random(experts * n * k, k as u64);
        let weights: Vec<f32> = random(chosen.len(), 5).iter().map(|v| v.abs()).collect();
        let base = random(tokens * n, 11);

        let on_gpu = kernels.expert_rows(&chosen, experts, top_k).unwrap();
        let row_offsets: Vec<usize> = on_gpu.row_offsets.iter().map(|&r| r as usize).collect();
        let rows = kernels
            .grouped_matmul(
                &x,
                Some(&on_gpu.row_token),
                &row_offsets,
                ExpertWeights::F32(&w),
                (n, k),
                Arithmetic::F32,
            )
            .unwrap();
        let combined = kernels
            .combine_expert_rows(&rows, &on_gpu.choice_row, &weights, top_k, Some(&base), n)
            .unwrap();

        let on_cpu = expert_rows(&chosen, experts, top_k);
        let gathered: Vec<f32> = on_cpu
            .row_token
            .iter()
            .flat_map(|&token| {
                x[token as usize * k..(token as usize + 1) * k]
                    .iter()
                    .copied()
            })
            .collect();
        let mut cpu_rows = vec![0f32; chosen.len() * n];
        let cpu_offsets: Vec<usize> = on_cpu.row_offsets.iter().map(|&r| r as usize).collect();
        grouped_matmul(
            &gathered,
            &cpu_offsets,
            ExpertWeights::F32(&w),
            n,
            k,
            &mut cpu_rows,
        );
        let mut expected = vec![0f32; tokens * n];
        combine_expert_rows(
            &cpu_rows,
            &on_cpu.choice_row,
            &weights,
            top_k,
            Some(&base),
            &mut expected,
        );

        let (worst, largest) = worst_and_largest(&combined, &expected);
        eprintln!(
            "moe rows {tokens} x {top_k} of {experts}, [{n}, {k}]: worst {worst:e} of {largest:e}"
        );
        assert!(worst <= 1e-5 * largest, "{worst:e} of {largest:e}");
    }
}

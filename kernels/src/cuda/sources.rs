//! The CUDA C sources, their entry points and their compile-time sizes.

/// One `.cu` file of `kernels/cuda/`.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// The file name, also the program name NVRTC reports errors under.
    pub file: &'static str,
    pub source: &'static str,
    /// The `extern "C" __global__` functions it defines.
    pub entry_points: &'static [&'static str],
    /// The CPU function in this crate that computes the same thing.
    pub cpu_reference: &'static str,
}

/// Every kernel source.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "moe_routing.cu",
        source: include_str!("../../cuda/moe_routing.cu"),
        entry_points: &["moe_route"],
        cpu_reference: "kernels::routing::route_token",
    },
    KernelSource {
        file: "mla_paged_attention.cu",
        source: include_str!("../../cuda/mla_paged_attention.cu"),
        entry_points: &["mla_split_partials", "mla_merge_splits"],
        cpu_reference: "kernels::paged_attention::absorbed_attention",
    },
    KernelSource {
        file: "moe_grouped_matmul.cu",
        // The block formats' decoders come first: the products read quantized weights too.
        source: concat!(
            include_str!("../../cuda/ggml_blocks.cu"),
            include_str!("../../cuda/moe_grouped_matmul.cu")
        ),
        entry_points: &[
            "moe_grouped_matmul_f32",
            "moe_grouped_matmul_bf16",
            "moe_grouped_matmul_f16",
            "moe_grouped_matmul_q8_0",
            "moe_grouped_matmul_q4_0",
            "moe_grouped_matmul_q5_0",
            "moe_grouped_matmul_q4_k",
            "moe_grouped_matmul_q5_k",
            "moe_grouped_matmul_q6_k",
            "moe_grouped_mma_bf16",
            "moe_grouped_mma_f16",
            "moe_grouped_mma_q8_0",
            "moe_grouped_mma_q4_0",
            "moe_grouped_mma_q5_0",
            "moe_grouped_mma_q4_k",
            "moe_grouped_mma_q5_k",
            "moe_grouped_mma_q6_k",
            "moe_expert_matvec_f32",
            "moe_expert_matvec_bf16",
            "moe_expert_matvec_f16",
            "moe_expert_matvec_q8_0",
            "moe_expert_matvec_q4_0",
            "moe_expert_matvec_q5_0",
            "moe_expert_matvec_q4_k",
            "moe_expert_matvec_q5_k",
            "moe_expert_matvec_q6_k",
        ],
        cpu_reference: "kernels::grouped_matmul::grouped_matmul",
    },
    KernelSource {
        file: "moe_expert_rows.cu",
        source: include_str!("../../cuda/moe_expert_rows.cu"),
        entry_points: &["moe_expert_rows", "moe_combine"],
        cpu_reference: "kernels::expert_rows::expert_rows",
    },
];

/// What `moe_route` and `moe_expert_rows` can do: the router keeps a chosen expert per lane of
/// a warp and the kept groups in a 64-bit mask; both keep a few values per expert in shared
/// memory (at 1024 experts, 16 KiB for the router's four warps, 8 KiB for the rows).
#[derive(Debug, Clone, Copy)]
pub struct RoutingLimits;

impl RoutingLimits {
    pub const MAX_TOP_K: usize = 32;
    pub const MAX_GROUPS: usize = 64;
    pub const MAX_EXPERTS: usize = 1024;
}

/// The block and tile sizes the MoE kernels are written for (their `#define`s), for launches.
#[derive(Debug, Clone, Copy)]
pub struct MoeLaunch;

impl MoeLaunch {
    /// Tokens, one warp each, per moe_route block (`WARPS_PER_BLOCK`).
    pub const ROUTING_WARPS: u32 = 4;
    /// Outputs per grouped-matmul tile (`TILE_COLS`; its rows are
    /// [`crate::expert_rows::EXPERT_TILE_ROWS`]) and its threads (`THREADS`).
    pub const GROUPED_TILE_COLUMNS: usize = 64;
    pub const GROUPED_THREADS: u32 = 256;
    /// Threads of the tensor-core tiles (`MMA_THREADS`: four warps of 32 x 32 outputs).
    pub const MMA_THREADS: u32 = 128;
    /// Weight rows, one warp each, per moe_expert_matvec block (`MATVEC_WARPS`).
    pub const MATVEC_WARPS: usize = 8;
    /// Mean rows per expert up to which the matvec is used ([`super::launch_shapes::experts_take_the_matvec`]).
    pub const MATVEC_MEAN_ROWS: usize = 16;
    /// Threads of moe_expert_rows' single block and of each moe_combine block (any multiple of
    /// 32 works; these are what the launches use).
    pub const EXPERT_ROWS_THREADS: u32 = 1024;
    pub const COMBINE_THREADS: u32 = 256;
}

/// The sizes `mla_paged_attention.cu` is compiled for (NVRTC compiles it at model load, so the
/// loops and register arrays are sized exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MlaShape {
    pub heads: usize,
    pub kv_lora: usize,
    pub rope: usize,
}

/// Static shared memory a CUDA block may use without opting in.
const SHARED_MEMORY_BYTES: usize = 48 * 1024;
/// Keys loaded into shared memory at a time.
const KEYS_PER_TILE: usize = 4;
/// Heads a block takes at most: each thread keeps this many accumulators per latent dimension.
const MAX_HEADS_PER_BLOCK: usize = 16;

impl MlaShape {
    /// Heads one block attends with (every key row it loads serves all of them): the largest
    /// divisor of `heads`, at most 16, whose queries, key tile and weights fit the static shared
    /// memory. `None` when not even one head fits (a latent over ~12,000 values).
    pub fn heads_per_block(&self) -> Option<usize> {
        let row = (self.kv_lora + self.rope) * 4;
        (1..=MAX_HEADS_PER_BLOCK.min(self.heads))
            .rev()
            .filter(|h| self.heads.is_multiple_of(*h))
            .find(|&h| {
                let bytes = h * row + KEYS_PER_TILE * row + h * KEYS_PER_TILE * 4 + 3 * h * 4;
                bytes <= SHARED_MEMORY_BYTES
            })
    }
}

/// Threads of an attention block (`THREADS` in mla_paged_attention.cu).
pub const MLA_THREADS: u32 = 256;

/// The NVRTC options (`-D` sizes) for `mla_paged_attention.cu` at `shape`, or why it cannot be.
pub fn mla_compile_options(shape: MlaShape) -> Result<Vec<String>, String> {
    if shape.heads == 0 || shape.kv_lora == 0 {
        return Err(format!("no heads or no latent: {shape:?}"));
    }
    let heads_per_block = shape.heads_per_block().ok_or_else(|| {
        format!(
            "a latent row of {} + {} floats does not fit a CUDA block's shared memory",
            shape.kv_lora, shape.rope
        )
    })?;
    Ok(vec![
        format!("-DKV_LORA={}", shape.kv_lora),
        format!("-DROPE={}", shape.rope),
        format!("-DHEADS_PER_BLOCK={heads_per_block}"),
        format!("-DKEYS_PER_TILE={KEYS_PER_TILE}"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_source() {
        // Written out, or one of the three a block format's BLOCK_FORMAT_ENTRY_POINTS defines.
        let by_macro = |source: &str, entry: &str| {
            [
                "moe_grouped_matmul_",
                "moe_grouped_mma_",
                "moe_expert_matvec_",
            ]
            .iter()
            .filter_map(|kernel| entry.strip_prefix(kernel))
            .any(|format| source.contains(&format!("\nBLOCK_FORMAT_ENTRY_POINTS({format}, ")))
        };
        for source in SOURCES {
            for entry in source.entry_points {
                let definition = format!("__global__ void {entry}(");
                let with_bounds = format!("{entry}(const");
                assert!(
                    source.source.contains(&definition)
                        || source.source.contains(&with_bounds)
                        || by_macro(source.source, entry),
                    "{} does not define {entry}",
                    source.file
                );
            }
        }
    }

    #[test]
    fn heads_per_block_divides_the_heads_and_fits() {
        let lite = MlaShape {
            heads: 16,
            kv_lora: 512,
            rope: 64,
        };
        assert_eq!(lite.heads_per_block(), Some(16));
        // DeepSeek-V2: 128 heads, groups of 16.
        let v2 = MlaShape { heads: 128, ..lite };
        assert_eq!(v2.heads_per_block(), Some(16));
        // A wide latent leaves room for fewer heads; 12 heads take a divisor of 12.
        let wide = MlaShape {
            heads: 12,
            kv_lora: 1024,
            rope: 64,
        };
        let per_block = wide.heads_per_block().unwrap();
        assert!(per_block < 12 && 12 % per_block == 0, "{per_block}");
        let huge = MlaShape {
            heads: 4,
            kv_lora: 16384,
            rope: 64,
        };
        assert_eq!(huge.heads_per_block(), None);
        assert!(mla_compile_options(huge).is_err());
        assert!(
            mla_compile_options(lite)
                .unwrap()
                .contains(&"-DHEADS_PER_BLOCK=16".to_string())
        );
    }
}

//! How each of our kernels is launched: grid, block and dynamic shared memory from the sizes of
//! the work. Both launchers take their shapes from here: the engine's (cudarc, through candle)
//! and `launch.rs` (the GPU suite's, which also runs on the emulated driver in every test run),
//! so the suite checks the engine's launch sizes too.

use super::sources::{MLA_THREADS, MlaShape, MoeLaunch};
use crate::expert_rows::most_row_tiles;
use crate::quant::GgmlType;

/// Grid and block sizes of a launch (blocks are one-dimensional), and its dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared_bytes: u32,
}

/// `moe_route` over `tokens` tokens of `experts` logits: a warp per token, each keeping its
/// token's probabilities in shared memory.
pub fn route(tokens: usize, experts: usize) -> LaunchShape {
    LaunchShape {
        grid: (
            tokens.div_ceil(MoeLaunch::ROUTING_WARPS as usize) as u32,
            1,
            1,
        ),
        block: 32 * MoeLaunch::ROUTING_WARPS,
        shared_bytes: MoeLaunch::ROUTING_WARPS * experts as u32 * 4,
    }
}

/// `moe_expert_rows`: one block, a row count and a cursor per expert in shared memory.
pub fn expert_rows(experts: usize) -> LaunchShape {
    LaunchShape {
        grid: (1, 1, 1),
        block: MoeLaunch::EXPERT_ROWS_THREADS,
        shared_bytes: 2 * experts as u32 * 4,
    }
}

/// `moe_combine` of `tokens` tokens: a block per token.
pub fn combine(tokens: usize) -> LaunchShape {
    LaunchShape {
        grid: (tokens as u32, 1, 1),
        block: MoeLaunch::COMBINE_THREADS,
        shared_bytes: 0,
    }
}

/// What the experts' products may round their inputs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    /// Every value as it is, in f32: what an f32 model computes (the golden logits' tolerance
    /// of 1e-4 holds only so).
    F32,
    /// x and the weights rounded to bf16, the sums in f32, on tensor cores: what a bf16 model
    /// computes anyway (its activations are bf16, and a GGUF weight rounded to bf16 is what a
    /// bf16 copy of the file would hold).
    Bf16,
}

/// Which kernel computes the routed experts' products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertsProduct {
    /// `moe_expert_matvec_*`: a warp per weight row, for few rows per expert.
    Matvec,
    /// `moe_grouped_matmul_*`: 64 x 64 tiles in f32 arithmetic.
    Tiles,
    /// `moe_grouped_mma_*`: the same tiles on tensor cores, in bf16 arithmetic.
    TensorTiles,
}

impl ExpertsProduct {
    /// The kernel's entry point for weights in `format` (F32, BF16, or a GGUF block type:
    /// `moe_expert_matvec_q4_k`...).
    pub fn entry(self, format: GgmlType) -> String {
        let kernel = match self {
            Self::Matvec => "moe_expert_matvec",
            Self::Tiles => "moe_grouped_matmul",
            Self::TensorTiles => "moe_grouped_mma",
        };
        format!("{kernel}_{}", format.name().to_ascii_lowercase())
    }

    /// The kernel's parameters in order, for every launcher to push as it lists them.
    pub fn parameters(self) -> &'static [ProductParameter] {
        use ProductParameter::*;
        match self {
            Self::Matvec => &[X, Weights, RowToken, RowOffsets, Experts, N, K, Y],
            Self::Tiles | Self::TensorTiles => &[
                X,
                Weights,
                RowToken,
                RowOffsets,
                TileOffsets,
                Experts,
                N,
                K,
                Y,
            ],
        }
    }
}

/// One parameter of the experts' product kernels (`moe_grouped_matmul.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductParameter {
    /// The inputs, f32 [tokens or rows, k].
    X,
    /// [experts, n, k] in the entry point's format.
    Weights,
    /// Each row's token in x, or a null pointer when x's rows are in row order.
    RowToken,
    /// Expert e's rows start at entry e (experts + 1 entries).
    RowOffsets,
    /// Expert e's row tiles start at entry e (the tiles only).
    TileOffsets,
    /// i32 sizes.
    Experts,
    N,
    K,
    /// The output, f32 [rows, n].
    Y,
}

/// The products of `rows` routed rows over `experts` experts, `n` outputs each, weights in
/// `format`: the kernel and its launch, decided from these sizes alone (before the routing is
/// known: the tiles' grid holds the most any routing can take, and tiles past the last exit at
/// once). Few rows per expert take the matvec (exact in either arithmetic); more take the
/// tiles, on tensor cores in bf16 `arithmetic` for any weights but f32 ones (a bf16 model's
/// are not f32). `None` when there is nothing to compute.
pub fn experts_product(
    rows: usize,
    experts: usize,
    n: usize,
    format: GgmlType,
    arithmetic: Arithmetic,
) -> Option<(ExpertsProduct, LaunchShape)> {
    let tiles = most_row_tiles(rows, experts) as u32;
    if tiles == 0 || n == 0 {
        return None;
    }
    let tiles_grid = (n.div_ceil(MoeLaunch::GROUPED_TILE_COLUMNS) as u32, tiles, 1);
    Some(if experts_take_the_matvec(rows, experts) {
        let shape = LaunchShape {
            grid: (
                n.div_ceil(MoeLaunch::MATVEC_WARPS) as u32,
                experts as u32,
                1,
            ),
            block: 32 * MoeLaunch::MATVEC_WARPS as u32,
            shared_bytes: 0,
        };
        (ExpertsProduct::Matvec, shape)
    } else if arithmetic == Arithmetic::Bf16 && format != GgmlType::F32 {
        let shape = LaunchShape {
            grid: tiles_grid,
            block: MoeLaunch::MMA_THREADS,
            shared_bytes: 0,
        };
        (ExpertsProduct::TensorTiles, shape)
    } else {
        let shape = LaunchShape {
            grid: tiles_grid,
            block: MoeLaunch::GROUPED_THREADS,
            shared_bytes: 0,
        };
        (ExpertsProduct::Tiles, shape)
    })
}

/// An attention step's two launches: `mla_split_partials` over `splits` splits of
/// `pages_per_split` pages, then `mla_merge_splits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionLaunch {
    pub splits: usize,
    pub pages_per_split: usize,
    pub partials: LaunchShape,
    pub merge: LaunchShape,
}

/// The launches of `tokens` query tokens over `pages` pages at `shape` on a GPU of
/// `multiprocessors`, or why the shape cannot run (a latent too wide for a block).
pub fn attention(
    shape: MlaShape,
    tokens: usize,
    pages: usize,
    multiprocessors: usize,
) -> Result<AttentionLaunch, String> {
    let heads_per_block = shape
        .heads_per_block()
        .ok_or_else(|| format!("{shape:?} does not fit a CUDA block"))?;
    let head_groups = shape.heads / heads_per_block;
    let (splits, pages_per_split) = attention_splits(pages, head_groups, tokens, multiprocessors);
    Ok(AttentionLaunch {
        splits,
        pages_per_split,
        partials: LaunchShape {
            grid: (splits as u32, head_groups as u32, tokens as u32),
            block: MLA_THREADS,
            shared_bytes: 0,
        },
        merge: LaunchShape {
            grid: (shape.heads as u32, tokens as u32, 1),
            block: MLA_THREADS,
            shared_bytes: 0,
        },
    })
}

/// Whether the experts' products take `moe_expert_matvec_*` (a warp streams each weight row once
/// per 4 of its expert's rows) rather than the 64-row tiles of `moe_grouped_matmul_*`, which
/// spend most of their multiply-adds on empty rows when experts have few: at most
/// [`MoeLaunch::MATVEC_MEAN_ROWS`] rows per expert on average (a decode step has 6 rows over
/// 64 experts, a keystroke's 44 new tokens about 4 per expert, a 512-token chunk 48). Decided
/// from the shapes, before the routing is known.
pub fn experts_take_the_matvec(rows: usize, experts: usize) -> bool {
    rows <= MoeLaunch::MATVEC_MEAN_ROWS * experts
}

/// How an attention step over `pages` pages is split for `mla_split_partials`: (splits, pages
/// per split), enough blocks for two per multiprocessor given `head_groups x tokens` blocks per
/// split, in whole pages.
pub fn attention_splits(
    pages: usize,
    head_groups: usize,
    tokens: usize,
    multiprocessors: usize,
) -> (usize, usize) {
    let pages = pages.max(1);
    let wanted = (2 * multiprocessors.max(1)).div_ceil((head_groups * tokens).max(1));
    let pages_per_split = pages.div_ceil(wanted.clamp(1, pages));
    (pages.div_ceil(pages_per_split), pages_per_split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_the_pages_in_whole_pages() {
        // Lite decode on an H200 (132 multiprocessors): one page per split up to 264 pages.
        assert_eq!(attention_splits(257, 1, 1, 132), (257, 1));
        assert_eq!(attention_splits(1000, 1, 1, 132), (250, 4));
        // Many tokens already fill the GPU: one split.
        assert_eq!(attention_splits(40, 1, 512, 132), (1, 40));
        for (pages, groups, tokens) in [(1, 1, 1), (7, 8, 3), (300, 8, 1), (5, 1, 1000)] {
            let (splits, per_split) = attention_splits(pages, groups, tokens, 132);
            assert!(splits * per_split >= pages && (splits - 1) * per_split < pages);
        }
    }

    #[test]
    fn experts_products_pick_the_matvec_for_few_rows_and_size_tiles_for_any_routing() {
        use Arithmetic::{Bf16, F32};
        // A decode step of Lite: 6 rows over 64 experts, the matvec, a block row per expert.
        let (kind, shape) = experts_product(6, 64, 1408, GgmlType::Q4K, Bf16).unwrap();
        assert_eq!(kind, ExpertsProduct::Matvec);
        assert_eq!(shape.grid, (176, 64, 1));
        // A 512-token chunk: 3072 rows, tiles for the most any routing takes; on tensor cores
        // in bf16 arithmetic, for bf16 weights and for blocks, never for f32 weights.
        let (kind, shape) = experts_product(3072, 64, 1408, GgmlType::F32, Bf16).unwrap();
        assert_eq!(kind, ExpertsProduct::Tiles);
        assert_eq!(shape.grid, (22, most_row_tiles(3072, 64) as u32, 1));
        for format in [GgmlType::BF16, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16] {
            let (kind, tensor_shape) = experts_product(3072, 64, 1408, format, Bf16).unwrap();
            assert_eq!(kind, ExpertsProduct::TensorTiles);
            assert_eq!(tensor_shape.grid, shape.grid);
            assert_eq!(tensor_shape.block, MoeLaunch::MMA_THREADS);
            // In f32 arithmetic every format keeps its values exactly.
            let (kind, _) = experts_product(3072, 64, 1408, format, F32).unwrap();
            assert_eq!(kind, ExpertsProduct::Tiles);
        }
        assert_eq!(experts_product(0, 64, 1408, GgmlType::F32, F32), None);
        assert_eq!(experts_product(6, 64, 0, GgmlType::F32, F32), None);
        // Every entry point a launch can name is one the source defines.
        let source = super::super::SOURCES
            .iter()
            .find(|source| source.file == "moe_grouped_matmul.cu")
            .unwrap();
        for format in GgmlType::ALL {
            for (rows, arithmetic) in [(6, F32), (3072, F32), (3072, Bf16)] {
                let (product, _) = experts_product(rows, 64, 1408, format, arithmetic).unwrap();
                let entry = product.entry(format);
                assert!(source.entry_points.contains(&entry.as_str()), "{entry}");
            }
        }
    }
}

//! What the interleaved formats that meet Q8_K inputs (Q4_K and Q6_K) share: picking the kernel
//! of an instruction set for one group of eight rows, and the matmul around it. Each format
//! supplies its kernels through [`Q8KGroups`].

use super::GgmlType;
use super::InstructionSet;
use super::activations::{BlockQ8K, QK_K};
use super::interleaved::{
    GroupProducts, MOST_INPUTS_AT_ONCE, ROWS_TOGETHER, matmul_groups, padded,
};
use super::matmul::q8_k_inputs;

/// A format's group kernels: each takes one group of eight interleaved rows and N inputs' Q8_K
/// blocks and gives `result[k][r]`, row r times input k. The integer sums are exactly the
/// row-by-row kernel's; the float sums run in another order, so results agree with it to
/// rounding. With `PREFETCH`, a kernel asks for the weights ahead of the block it multiplies.
pub(super) trait Q8KGroups {
    const TYPE: GgmlType;
    /// Inputs a group meets at once in the AVX2 kernel (the VNNI kernels, with 32 registers,
    /// meet [`MOST_INPUTS_AT_ONCE`]).
    const INPUTS_AT_ONCE_AVX2: usize;

    /// The row-by-row kernel on the group's rows put back in file order.
    fn portable<const N: usize>(
        group: &[u8],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; ROWS_TOGETHER]; N];

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; ROWS_TOGETHER]; N];

    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512VL and AVX512_VNNI.
    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const N: usize, const PREFETCH: bool>(
        group: &[u8],
        inputs: [&[BlockQ8K]; N],
    ) -> [[f32; ROWS_TOGETHER]; N];
}

/// One group of eight interleaved rows of `K` times each of `inputs`, on the kernel of `level`
/// (see [`Q8KGroups`]). `from_memory`: the weights come straight from memory, and the kernel
/// prefetches them.
///
/// Panics unless the CPU supports `level` and the group holds one group block per block of each
/// input.
pub(super) fn dot_group<K: Q8KGroups, const N: usize>(
    level: InstructionSet,
    group: &[u8],
    inputs: [&[BlockQ8K]; N],
    from_memory: bool,
) -> [[f32; ROWS_TOGETHER]; N] {
    for x in inputs {
        assert_eq!(
            group.len(),
            x.len() * ROWS_TOGETHER * K::TYPE.block_bytes(),
            "a group of {} rows must hold one group block per activation block",
            K::TYPE.name()
        );
    }
    assert!(level.is_supported(), "this CPU lacks {}", level.name());
    match level {
        // SAFETY (both arms): the CPU has the features the kernels need.
        #[cfg(target_arch = "x86_64")]
        InstructionSet::Avx512Vnni => unsafe {
            if from_memory {
                K::vnni::<N, true>(group, inputs)
            } else {
                K::vnni::<N, false>(group, inputs)
            }
        },
        #[cfg(target_arch = "x86_64")]
        InstructionSet::Avx2 => unsafe {
            if from_memory {
                K::avx2::<N, true>(group, inputs)
            } else {
                K::avx2::<N, false>(group, inputs)
            }
        },
        _ => K::portable(group, inputs),
    }
}

/// Writes X W^T into `y` ([n, rows]) for `n` input rows `x` ([n, cols]) and W as `K`'s
/// interleaving left it: [`super::matmul_rows_quant`] for interleaved rows. Each thread takes
/// bands of whole groups; with more inputs than a group meets at once, a band goes in
/// sub-bands that stay in cache while every few inputs pass over them.
///
/// Panics unless `rows` is a multiple of 8, `cols` of 256, and the slices hold what the sizes say
/// (caller bugs).
pub(super) fn matmul<K: Q8KGroups>(
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), n * cols, "x must hold n x cols values");
    let inputs = q8_k_inputs(x);
    let blocks = cols / QK_K;
    let input = |k: usize| &inputs[k * blocks..(k + 1) * blocks];
    let level = InstructionSet::vectors_in_use();
    let products = |group: &[u8], first: usize, take: usize, from_memory: bool| -> GroupProducts {
        match take {
            4 => padded(dot_group::<K, 4>(
                level,
                group,
                std::array::from_fn(|k| input(first + k)),
                from_memory,
            )),
            2 => padded(dot_group::<K, 2>(
                level,
                group,
                [input(first), input(first + 1)],
                from_memory,
            )),
            _ => padded(dot_group::<K, 1>(level, group, [input(first)], from_memory)),
        }
    };
    let inputs_at_once = if level == InstructionSet::Avx512Vnni {
        MOST_INPUTS_AT_ONCE
    } else {
        K::INPUTS_AT_ONCE_AVX2
    };
    matmul_groups(K::TYPE, weights, rows, cols, n, y, inputs_at_once, products);
}

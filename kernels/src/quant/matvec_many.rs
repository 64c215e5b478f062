//! Several quantized matrices, each times its own input vector, in one parallel pass: what a
//! decoded token does in a mixture-of-experts layer (the gate and up projections of every expert
//! it chose and of the shared experts, then their down projections).
//!
//! One matrix at a time, each expert's product is a separate parallel dispatch over a
//! 1.6 MB matrix, and each input is quantized once per matrix; here every input is quantized
//! once and the rows of all the matrices are cut into one list of tasks, so the threads stay
//! busy across matrices and the dispatch is paid once.

use rayon::prelude::*;

use super::activations::{BlockQ8_0, BlockQ8K, QK_K, QK8_0};
use super::interleaved::{self, PreparedInput, ROWS_TOGETHER, RowLayout};
use super::matmul::{q8_0_inputs, q8_k_inputs};
use super::q8_0_x8;
use super::{
    GgmlType, InstructionSet, dot_q4_0_q8_0, dot_q4_k_q8_k, dot_q5_0_q8_0, dot_q5_k_q8_k,
    dot_q6_k_q8_k, dot_q8_0_q8_0,
};

/// Rows one task takes: enough that a task streams a good run of a matrix, few enough that a
/// handful of 1408-row expert matrices still spread over sixteen threads (and whole groups of
/// an interleaved matrix).
const ROWS_PER_TASK: usize = 64;
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(ROWS_TOGETHER));

/// One product of [`matvec_many_quant`]: `rows` rows of `ty` laid out as `layout` says, times
/// input number `input`.
#[derive(Clone, Copy, Debug)]
pub struct MatVecJob<'a> {
    pub ty: GgmlType,
    pub layout: RowLayout,
    pub weights: &'a [u8],
    pub rows: usize,
    pub input: usize,
}

/// Writes `jobs[j]`'s matrix times `inputs[jobs[j].input]` into `outs[j]` for every job, in one
/// parallel pass; a matrix has as many columns as its input has values, a whole number of its
/// type's blocks. The results equal [`super::matmul_rows_quant`]'s for one input row.
///
/// Panics if a job's type is a float type (those go through `matmul_rows_quant`), if an input
/// index is out of range, or if a length disagrees with the sizes given (caller bugs).
pub fn matvec_many_quant(jobs: &[MatVecJob], inputs: &[&[f32]], outs: &mut [&mut [f32]]) {
    assert_eq!(jobs.len(), outs.len(), "one output per job");
    for (job, out) in jobs.iter().zip(outs.iter()) {
        assert!(
            job.ty.block_len() > 1,
            "{} is not a block format",
            job.ty.name()
        );
        assert!(job.input < inputs.len(), "input {} out of range", job.input);
        assert_eq!(out.len(), job.rows, "one output per row");
        if job.layout == RowLayout::Interleaved {
            assert!(
                interleaved::can_interleave(job.ty) && job.rows.is_multiple_of(ROWS_TOGETHER),
                "{} rows of {} are not interleaved groups",
                job.rows,
                job.ty.name()
            );
        }
        let cols = inputs[job.input].len();
        let row_bytes = job
            .ty
            .row_bytes(cols)
            .unwrap_or_else(|| panic!("{cols} values are not whole {} blocks", job.ty.name()));
        assert_eq!(
            job.weights.len(),
            job.rows * row_bytes,
            "{} rows of {cols} {} values",
            job.rows,
            job.ty.name()
        );
    }
    // Whether a job on input i takes activation blocks of `len` values (Q8_0: 32, Q8_K: 256).
    let needs = |i: usize, len: usize| jobs.iter().any(|j| j.input == i && j.ty.block_len() == len);
    // Each input quantized once, in the block types its jobs pair with.
    let q8_0: Vec<Vec<BlockQ8_0>> = (0..inputs.len())
        .map(|i| {
            if needs(i, QK8_0) {
                q8_0_inputs(inputs[i])
            } else {
                Vec::new()
            }
        })
        .collect();
    let q8_k: Vec<Vec<BlockQ8K>> = (0..inputs.len())
        .map(|i| {
            if needs(i, QK_K) {
                q8_k_inputs(inputs[i])
            } else {
                Vec::new()
            }
        })
        .collect();
    let level = InstructionSet::vectors_in_use();
    // What the kernels of `level` subtract per block, for each input its interleaved `ty` jobs
    // take.
    let offsets_for = |ty: GgmlType| -> Vec<Vec<i32>> {
        (0..inputs.len())
            .map(|i| {
                let interleaved = jobs
                    .iter()
                    .any(|j| j.input == i && j.ty == ty && j.layout == RowLayout::Interleaved);
                if interleaved {
                    q8_0_x8::offsets(ty, level, &q8_0[i])
                } else {
                    Vec::new()
                }
            })
            .collect()
    };
    let (q8_0_offsets, q5_0_offsets) = (offsets_for(GgmlType::Q8_0), offsets_for(GgmlType::Q5_0));
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (index, out) in outs.iter_mut().enumerate() {
        for (chunk, values) in out.chunks_mut(ROWS_PER_TASK).enumerate() {
            tasks.push((index, chunk * ROWS_PER_TASK, values));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(index, first_row, values)| {
            let job = &jobs[index];
            let row_bytes = job.weights.len() / job.rows;
            let (x0, xk) = (&q8_0[job.input], &q8_k[job.input]);
            if job.layout == RowLayout::Interleaved {
                let group_bytes = ROWS_TOGETHER * row_bytes;
                let first = first_row * row_bytes;
                let groups =
                    job.weights[first..first + values.len() * row_bytes].chunks_exact(group_bytes);
                let input = PreparedInput {
                    q8_0: x0,
                    q8_0_offsets: &q8_0_offsets[job.input],
                    q5_0_offsets: &q5_0_offsets[job.input],
                    q8_k: xk,
                    level,
                };
                // A decode step reads each matrix once: it comes from memory.
                for (group, values) in groups.zip(values.chunks_exact_mut(ROWS_TOGETHER)) {
                    values.copy_from_slice(&interleaved::dot_group(job.ty, group, input, true));
                }
                return;
            }
            for (offset, value) in values.iter_mut().enumerate() {
                let start = (first_row + offset) * row_bytes;
                let row = &job.weights[start..start + row_bytes];
                *value = match job.ty {
                    GgmlType::Q4_0 => dot_q4_0_q8_0(row, x0),
                    GgmlType::Q5_0 => dot_q5_0_q8_0(row, x0),
                    GgmlType::Q8_0 => dot_q8_0_q8_0(row, x0),
                    GgmlType::Q4K => dot_q4_k_q8_k(row, xk),
                    GgmlType::Q5K => dot_q5_k_q8_k(row, xk),
                    GgmlType::Q6K => dot_q6_k_q8_k(row, xk),
                    GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                        unreachable!("float types were refused above")
                    }
                };
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::matmul_rows_quant;
    use crate::quant::test_support::{Rng, random_blocks};

    #[test]
    fn every_job_equals_its_own_matmul() {
        // Inputs of different lengths: the K-quants take the 512-long ones, the 32-value
        // formats also the 160-long one.
        let lengths = [512, 512, 160];
        let inputs: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                (0..lengths[i])
                    .map(|c| ((c * 7 + i * 13) % 23) as f32 / 11.0 - 1.0)
                    .collect()
            })
            .collect();
        let types: Vec<GgmlType> = GgmlType::ALL
            .into_iter()
            .filter(|ty| ty.block_len() > 1)
            .collect();
        // Odd row counts, more than one task, inputs shared and not.
        let matrices: Vec<(GgmlType, usize, usize, Vec<u8>)> = types
            .iter()
            .enumerate()
            .map(|(i, &ty)| {
                let rows = 1 + i * 37;
                let input = if ty.block_len() == QK_K { i % 2 } else { i % 3 };
                let cols = lengths[input];
                let blocks = rows * cols / ty.block_len();
                (
                    ty,
                    rows,
                    input,
                    random_blocks(ty, blocks, &mut Rng::new(i as u64 + 1)),
                )
            })
            .collect();
        let jobs: Vec<MatVecJob> = matrices
            .iter()
            .map(|(ty, rows, input, bytes)| MatVecJob {
                ty: *ty,
                layout: RowLayout::InFileOrder,
                weights: bytes,
                rows: *rows,
                input: *input,
            })
            .collect();
        let mut results: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0.0; m.1]).collect();
        let mut outs: Vec<&mut [f32]> = results.iter_mut().map(|r| r.as_mut_slice()).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        matvec_many_quant(&jobs, &refs, &mut outs);
        for ((ty, rows, input, bytes), ours) in matrices.iter().zip(&results) {
            let mut alone = vec![0f32; *rows];
            let cols = inputs[*input].len();
            matmul_rows_quant(*ty, bytes, *rows, cols, &inputs[*input], 1, &mut alone);
            assert_eq!(ours, &alone, "{}", ty.name());
            assert!(ours.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn interleaved_jobs_match_their_rows_in_file_order() {
        let cols = 512;
        let input: Vec<f32> = (0..cols)
            .map(|c| ((c * 5) % 17) as f32 / 8.0 - 1.0)
            .collect();
        for ty in GgmlType::ALL
            .into_iter()
            .filter(|&ty| interleaved::can_interleave(ty))
        {
            // Three tasks' worth of rows, the last one short.
            let rows = 136;
            let row_bytes = ty.row_bytes(cols).unwrap();
            let bytes = random_blocks(ty, rows * cols / ty.block_len(), &mut Rng::new(3));
            let packed = interleaved::interleave(ty, &bytes, rows, row_bytes);
            let jobs = [RowLayout::InFileOrder, RowLayout::Interleaved].map(|layout| MatVecJob {
                ty,
                layout,
                weights: if layout == RowLayout::Interleaved {
                    &packed
                } else {
                    &bytes
                },
                rows,
                input: 0,
            });
            let (mut in_order, mut grouped) = (vec![0f32; rows], vec![0f32; rows]);
            matvec_many_quant(&jobs, &[&input], &mut [&mut in_order, &mut grouped]);
            let largest = in_order.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (row, (a, b)) in in_order.iter().zip(&grouped).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * largest,
                    "{} row {row}: {a} vs {b}",
                    ty.name()
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "not a block format")]
    fn float_types_are_refused() {
        let weights = vec![0u8; 4 * 256];
        let job = MatVecJob {
            ty: GgmlType::F32,
            layout: RowLayout::InFileOrder,
            weights: &weights,
            rows: 1,
            input: 0,
        };
        let x = vec![0f32; 256];
        let mut out = vec![0f32; 1];
        matvec_many_quant(&[job], &[&x], &mut [&mut out]);
    }
}

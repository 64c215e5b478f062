//! `kernels::quant::dequantize` gives the same f32 bits as the reference dequantizer of the
//! `gguf` Python package (gguf==0.17.1, llama.cpp's gguf-py) on random blocks of every type.
//!
//! The fixture was written by tools/gguf_reference/make_quant_fixtures.py (see its docs for the
//! file format and how the blocks are chosen); no Python runs here.

use kernels::quant::{GgmlType, dequantize};

const FIXTURE: &[u8] = include_bytes!("fixtures/quant_blocks.bin");

struct Case {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let mut at = 0;
    let mut take = |len: usize| {
        let slice = &FIXTURE[at..at + len];
        at += len;
        slice
    };
    let u32_at = |take: &mut dyn FnMut(usize) -> &'static [u8]| {
        u32::from_le_bytes(take(4).try_into().unwrap()) as usize
    };
    assert_eq!(take(4), b"QFIX");
    assert_eq!(u32_at(&mut take), 1, "fixture version");
    let count = u32_at(&mut take);
    let cases: Vec<Case> = (0..count)
        .map(|_| {
            let id = u32_at(&mut take) as u32;
            let ty = GgmlType::from_id(id).unwrap_or_else(|| panic!("unknown type id {id}"));
            let (rows, cols, byte_count) =
                (u32_at(&mut take), u32_at(&mut take), u32_at(&mut take));
            let bytes = take(byte_count).to_vec();
            let values = take(4 * rows * cols)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Case {
                ty,
                rows,
                cols,
                bytes,
                values,
            }
        })
        .collect();
    assert_eq!(at, FIXTURE.len(), "bytes left after the last entry");
    cases
}

/// Equal bits, except that any NaN matches any NaN: gguf-py widens F16 with numpy and we with
/// F16C, which quiets signalling NaNs, and neither promises a NaN's payload.
fn same_value(ours: f32, reference: f32) -> bool {
    ours.to_bits() == reference.to_bits() || (ours.is_nan() && reference.is_nan())
}

#[test]
fn every_type_is_in_the_fixture() {
    let types: Vec<GgmlType> = cases().iter().map(|c| c.ty).collect();
    for ty in GgmlType::ALL {
        assert!(
            types.contains(&ty),
            "{} missing from the fixture",
            ty.name()
        );
    }
}

#[test]
fn whole_tensors_dequantize_bit_exactly() {
    for case in cases() {
        let mut ours = vec![f32::NAN; case.rows * case.cols];
        dequantize(case.ty, &case.bytes, &mut ours);
        for (i, (a, b)) in ours.iter().zip(&case.values).enumerate() {
            assert!(
                same_value(*a, *b),
                "{} value {i} (row {}, column {}): ours {a:e} ({:#010x}), gguf-py {b:e} ({:#010x})",
                case.ty.name(),
                i / case.cols,
                i % case.cols,
                a.to_bits(),
                b.to_bits()
            );
        }
    }
}

#[test]
fn single_rows_and_single_blocks_dequantize_the_same() {
    for case in cases() {
        let row_bytes = case.ty.row_bytes(case.cols).unwrap();
        for (row, (bytes, expected)) in case
            .bytes
            .chunks_exact(row_bytes)
            .zip(case.values.chunks_exact(case.cols))
            .enumerate()
        {
            let mut ours = vec![0f32; case.cols];
            dequantize(case.ty, bytes, &mut ours);
            assert!(
                ours.iter().zip(expected).all(|(a, b)| same_value(*a, *b)),
                "{} row {row}",
                case.ty.name()
            );
            let (block_len, block_bytes) = (case.ty.block_len(), case.ty.block_bytes());
            let mut one_block = vec![0f32; block_len];
            dequantize(
                case.ty,
                &bytes[block_bytes..2 * block_bytes],
                &mut one_block,
            );
            assert!(
                one_block
                    .iter()
                    .zip(&expected[block_len..2 * block_len])
                    .all(|(a, b)| same_value(*a, *b)),
                "{} row {row} block 1",
                case.ty.name()
            );
        }
    }
}

#[test]
fn the_fixture_exercises_the_awkward_scales() {
    // Zero and negative scales must be there, or the test above proves less than it claims.
    for case in cases() {
        let values = &case.values;
        match case.ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                assert!(values.iter().any(|v| v.is_nan()), "{}", case.ty.name());
                assert!(values.iter().any(|v| v.is_infinite()), "{}", case.ty.name());
            }
            _ => {
                let block = case.ty.block_len();
                let all_zero_block = values.chunks(block).any(|b| b.iter().all(|v| *v == 0.0));
                assert!(values.iter().all(|v| v.is_finite()), "{}", case.ty.name());
                assert!(
                    all_zero_block || case.ty == GgmlType::Q4K || case.ty == GgmlType::Q5K,
                    "{}: no block with a zero scale",
                    case.ty.name()
                );
            }
        }
    }
}

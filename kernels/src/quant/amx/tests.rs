//! The tile matmul against the definition, in f64 over the dequantized weights, on the emulated
//! tiles everywhere and on the CPU's tiles where the process may use them.
//!
//! Tolerance: the tiles multiply bf16(w) by bf16(x), each within 2^-9 of its value relative, so
//! each product is within (2^-8 + 2^-18) |w x|; the f32 sums add at most (cols + 8) 2^-24 of
//! the sum of |w x| (the hardware's rounding order differs, within the same bound).

use super::super::dequantize;
use super::super::interleaved::{can_interleave, deinterleave_on_this_thread, interleave};
use super::super::test_support::{Rng, random_blocks};
use super::tiles::{Emulated, TileUnit};
use super::*;

/// Random weights of `ty`: random blocks for the quantized types, random finite values for the
/// float ones.
fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let values = rows * cols;
    match ty {
        GgmlType::F16 => (0..values)
            .flat_map(|_| half::f16::from_f32(rng.signed_unit()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..values)
            .flat_map(|_| half::bf16::from_f32(rng.signed_unit()).to_le_bytes())
            .collect(),
        GgmlType::F32 => (0..values)
            .flat_map(|_| rng.signed_unit().to_le_bytes())
            .collect(),
        _ => random_blocks(ty, values / ty.block_len(), rng),
    }
}

/// Asserts that `y` is X W^T for the weights' dequantized values `w` ([rows, cols]) within the
/// tolerance above.
fn assert_is_the_product(w: &[f32], x: &[f32], y: &[f32], rows: usize, cols: usize, what: &str) {
    let n = x.len() / cols;
    let relative = 2f64.powi(-8) + 2f64.powi(-18) + (cols + 8) as f64 * 2f64.powi(-24);
    for i in 0..n {
        for r in 0..rows {
            let (mut exact, mut magnitude) = (0f64, 0f64);
            for k in 0..cols {
                let product = f64::from(w[r * cols + k]) * f64::from(x[i * cols + k]);
                exact += product;
                magnitude += product.abs();
            }
            let got = f64::from(y[i * rows + r]);
            assert!(
                (got - exact).abs() <= relative * magnitude * 1.01 + 1e-30,
                "{what}: input {i}, row {r}: {got} against {exact} (sum of |w x| {magnitude})"
            );
        }
    }
}

/// Every weight type the tiles take, in each layout it has, times `n` random inputs, through
/// the tiles `T`.
fn check_every_type_on<T: TileUnit>(rows: usize, n: usize) {
    let mut rng = Rng::new(7);
    for ty in GgmlType::ALL {
        // Columns that are no multiple of the 32-value slice where the type allows it.
        let cols = match ty.block_len() {
            256 => 512,
            32 => 96,
            _ => 70,
        };
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let mut w = vec![0f32; rows * cols];
        dequantize(ty, &bytes, &mut w);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| rng.signed_unit() * (1 + i % 7) as f32)
            .collect();
        let mut y = vec![f32::NAN; n * rows];
        let layout = RowLayout::InFileOrder;
        matmul_quant_on::<T>(ty, layout, &bytes, rows, cols, &x, n, &mut y);
        assert_is_the_product(&w, &x, &y, rows, cols, ty.name());
        if can_interleave(ty) {
            let row_bytes = ty.row_bytes(cols).unwrap();
            let grouped = interleave(ty, &bytes, rows, row_bytes);
            let mut y = vec![f32::NAN; n * rows];
            let layout = RowLayout::Interleaved;
            matmul_quant_on::<T>(ty, layout, &grouped, rows, cols, &x, n, &mut y);
            assert_is_the_product(
                &w,
                &x,
                &y,
                rows,
                cols,
                &format!("interleaved {}", ty.name()),
            );
        }
    }
}

#[test]
fn emulated_tiles_give_the_product_for_every_type_and_layout() {
    // 40 rows: a full panel and a partial one. 49 inputs: two input tiles, then two again of
    // which the second holds one real input.
    check_every_type_on::<Emulated>(40, 49);
}

#[test]
fn emulated_tiles_cover_single_input_tiles_and_many_bands() {
    // 8 inputs: one input tile, mostly padding. 136 rows: more bands than one.
    check_every_type_on::<Emulated>(136, 8);
}

/// The general road's rows put back in file order on one thread, for every interleaved type: the
/// bytes the file had (on a CPU with AVX-512 BF16 the tests above take the AVX-512 road instead).
#[test]
fn groups_go_back_to_file_order_on_one_thread() {
    let mut rng = Rng::new(9);
    for ty in GgmlType::ALL.into_iter().filter(|&ty| can_interleave(ty)) {
        let (rows, cols) = (24, 2 * ty.block_len());
        let row_bytes = ty.row_bytes(cols).unwrap();
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let groups = interleave(ty, &bytes, rows, row_bytes);
        let mut back = vec![0u8; bytes.len()];
        deinterleave_on_this_thread(ty, &groups, row_bytes, &mut back);
        assert!(back == bytes, "{}", ty.name());
    }
}

#[test]
fn nothing_in_nothing_out() {
    let mut y = [];
    let layout = RowLayout::InFileOrder;
    matmul_quant_on::<Emulated>(GgmlType::Q8_0, layout, &[], 0, 32, &[], 0, &mut y);
    // Rows of no columns: every product is zero, in either layout.
    for layout in [RowLayout::InFileOrder, RowLayout::Interleaved] {
        let mut y = vec![f32::NAN; 40 * 8];
        matmul_quant_on::<Emulated>(GgmlType::Q8_0, layout, &[], 8, 0, &[], 40, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{layout:?}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_cpu_tiles_give_the_product_where_the_process_may_use_them() {
    if !tiles_usable() {
        eprintln!("skipped: this CPU or OS gives no AMX tiles to the process");
        return;
    }
    check_every_type_on::<Hardware>(40, 49);
    check_every_type_on::<Hardware>(136, 8);
    // Through the public entry points, with enough inputs to choose the tiles.
    let mut rng = Rng::new(11);
    let (rows, cols, n) = (64, 256, TILE_MIN_INPUTS + 3);
    let bytes = random_weights(GgmlType::Q4K, rows, cols, &mut rng);
    let mut w = vec![0f32; rows * cols];
    dequantize(GgmlType::Q4K, &bytes, &mut w);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.signed_unit()).collect();
    let mut y = vec![0f32; n * rows];
    assert!(wanted(GgmlType::Q4K, n));
    super::super::matmul_rows_quant(GgmlType::Q4K, &bytes, rows, cols, &x, n, &mut y);
    assert_is_the_product(&w, &x, &y, rows, cols, "matmul_rows_quant on the tiles");
}

#[test]
fn the_known_product_passes_on_correct_tiles_and_fails_on_wrong_ones() {
    assert!(known_product_is_right::<Emulated>());
    // Tiles that add each pair's products in swapped order are wrong in the pair layout.
    struct SwappedPairs(Emulated);
    impl TileUnit for SwappedPairs {
        fn configured() -> Self {
            SwappedPairs(Emulated::configured())
        }
        fn zero_accumulators(&mut self) {
            self.0.zero_accumulators()
        }
        unsafe fn load_inputs(&mut self, a: *const u16, b: *const u16, stride: usize, both: bool) {
            unsafe { self.0.load_inputs(a, b, stride, both) }
        }
        unsafe fn load_weights(&mut self, first: *const u16, second: *const u16) {
            // Loads the second half's tile in place of the first.
            unsafe { self.0.load_weights(second, first) }
        }
        fn multiply(&mut self, both: bool) {
            self.0.multiply(both)
        }
        fn store_accumulators(&mut self, out: &mut [f32; 4 * TILE_FLOATS]) {
            self.0.store_accumulators(out)
        }
    }
    assert!(!known_product_is_right::<SwappedPairs>());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx512_panels_are_the_general_roads_bit_for_bit() {
    use super::panel::{Scratch, pack_rows, pack_values};
    let mut rng = Rng::new(5);
    let mut checked = 0;
    for ty in GgmlType::ALL {
        if !super::panel_avx512::packs(ty) {
            continue;
        }
        let cols: usize = if ty.block_len() == 256 { 768 } else { 160 };
        let padded_cols = cols.next_multiple_of(SLICE);
        // A whole panel, and one with the last group's rows missing.
        for take in [PANEL_ROWS, 24] {
            let bytes = random_weights(ty, take, cols, &mut rng);
            let mut values = vec![0f32; take * cols];
            dequantize(ty, &bytes, &mut values);
            let mut general = vec![0u16; PANEL_ROWS * padded_cols];
            pack_values(&values, cols, padded_cols, &mut general);
            let row_bytes = ty.row_bytes(cols).unwrap();
            let groups = interleave(ty, &bytes, take, row_bytes);
            let mut fast = vec![0u16; PANEL_ROWS * padded_cols];
            let (layout, mut scratch) = (RowLayout::Interleaved, Scratch::default());
            pack_rows(
                ty,
                layout,
                &groups,
                take,
                cols,
                padded_cols,
                &mut scratch,
                &mut fast,
            );
            assert!(
                general == fast,
                "interleaved {} panel of {take} rows",
                ty.name()
            );
            checked += 1;
        }
    }
    if checked == 0 {
        eprintln!("skipped: this CPU lacks AVX-512 BF16");
    }
}

/// Linux's own reading of the CPU (/proc/cpuinfo) against ours: without its amx_tile and
/// amx_bf16 flags the status must say the CPU has no tiles.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn the_status_agrees_with_the_kernels_cpu_flags() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .map(|line| line.split_whitespace().collect())
        .unwrap_or_default();
    let has = |flag: &str| flags.contains(&flag);
    let status = tile_status();
    println!("AMX tiles: {}", status.describe());
    if !(has("amx_tile") && has("amx_bf16")) {
        assert_eq!(status, TileStatus::NotOnThisCpu);
    }
    assert_eq!(status == TileStatus::Usable, tiles_usable());
    assert_eq!(tiles_usable(), InstructionSet::Amx.is_supported());
}

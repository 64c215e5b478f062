//! The eight AMX tile registers as the matmul uses them, behind one trait with two
//! implementations: the CPU's own ([`Hardware`], one instruction per method) and a plain-Rust
//! model of the same instructions ([`Emulated`]), so the driver's addressing, padding and
//! packing are tested on every machine, and the hardware road adds only the instructions.
//!
//! Every tile is configured as 16 rows of 64 bytes (16 f32, or 32 bf16). The roles are fixed:
//! tiles 0-3 accumulate a 32 x 32 block of products (0: inputs 0-15 x rows 0-15, 1: inputs 0-15 x
//! rows 16-31, 2: inputs 16-31 x rows 0-15, 3: inputs 16-31 x rows 16-31), tiles 4 and 5 hold
//! two 16-input slices of X, tiles 6 and 7 two 16-row slices of W in the pair layout
//! `TDPBF16PS` reads (row k holds, for each of 16 weight rows, values 2k and 2k + 1 of the
//! slice).

/// Bytes per tile row, and rows per tile.
pub(in crate::quant) const TILE_ROW_BYTES: usize = 64;
pub(in crate::quant) const TILE_ROWS: usize = 16;

/// f32 values in one accumulator tile.
pub(in crate::quant) const TILE_FLOATS: usize = TILE_ROWS * TILE_ROW_BYTES / 4;

/// The tile operations the bf16 matmul runs.
pub(in crate::quant) trait TileUnit {
    /// Tiles configured for the matmul (16 x 64 bytes each), accumulators undefined.
    fn configured() -> Self;

    /// Accumulators 0-3 to zero.
    fn zero_accumulators(&mut self);

    /// Tile 4 (and tile 5, when `both`) from 16 rows of 64 bytes at `first` (and `second`),
    /// `stride` bytes apart.
    ///
    /// # Safety
    /// Every row read must lie in memory the caller may read.
    unsafe fn load_inputs(
        &mut self,
        first: *const u16,
        second: *const u16,
        stride: usize,
        both: bool,
    );

    /// Tiles 6 and 7 from 16 rows of 64 bytes each, contiguous, at `first` and `second`.
    ///
    /// # Safety
    /// The 1 KiB at each address must lie in memory the caller may read.
    unsafe fn load_weights(&mut self, first: *const u16, second: *const u16);

    /// Accumulators += inputs x weights: 0 += 4.6, 1 += 4.7, and when `both`, 2 += 5.6, 3 += 5.7.
    fn multiply(&mut self, both: bool);

    /// The four accumulators, one after another, as four 16 x 16 f32 blocks into `out`.
    fn store_accumulators(&mut self, out: &mut [f32; 4 * TILE_FLOATS]);
}

/// The CPU's tiles. Constructed only where [`super::support::tiles_granted`] said yes (checked);
/// releases the tiles when dropped.
#[cfg(target_arch = "x86_64")]
pub(in crate::quant) struct Hardware {
    /// Not Send: the configuration belongs to the thread that loaded it.
    _this_thread: std::marker::PhantomData<*const ()>,
}

#[cfg(target_arch = "x86_64")]
impl Hardware {
    /// The 64-byte configuration `LDTILECFG` reads: palette 1, then each tile's bytes per row
    /// (u16, from byte 16) and rows (u8, from byte 48).
    fn configuration() -> [u8; 64] {
        let mut config = [0u8; 64];
        config[0] = 1;
        for tile in 0..8 {
            config[16 + 2 * tile..18 + 2 * tile]
                .copy_from_slice(&(TILE_ROW_BYTES as u16).to_le_bytes());
            config[48 + tile] = TILE_ROWS as u8;
        }
        config
    }
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for Hardware {
    fn configured() -> Self {
        assert!(
            super::support::tiles_granted(),
            "AMX tiles are not granted to this process"
        );
        let config = Self::configuration();
        // SAFETY: the CPU has AMX and the OS granted its state (checked above); the
        // configuration is 64 readable bytes.
        unsafe {
            std::arch::asm!(
                "ldtilecfg [{0}]",
                in(reg) config.as_ptr(),
                options(nostack, readonly, preserves_flags)
            );
        }
        Hardware {
            _this_thread: std::marker::PhantomData,
        }
    }

    #[inline(always)]
    fn zero_accumulators(&mut self) {
        // SAFETY: tiles configured by `configured` on this thread (Hardware is not Send).
        unsafe {
            std::arch::asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nomem, nostack, preserves_flags)
            );
        }
    }

    #[inline(always)]
    unsafe fn load_inputs(
        &mut self,
        first: *const u16,
        second: *const u16,
        stride: usize,
        both: bool,
    ) {
        // SAFETY: tiles configured on this thread; the caller vouches for the rows read.
        unsafe {
            std::arch::asm!(
                "tileloadd tmm4, [{base} + {stride}*1]",
                base = in(reg) first,
                stride = in(reg) stride,
                options(nostack, readonly, preserves_flags)
            );
            if both {
                std::arch::asm!(
                    "tileloadd tmm5, [{base} + {stride}*1]",
                    base = in(reg) second,
                    stride = in(reg) stride,
                    options(nostack, readonly, preserves_flags)
                );
            }
        }
    }

    #[inline(always)]
    unsafe fn load_weights(&mut self, first: *const u16, second: *const u16) {
        // SAFETY: tiles configured on this thread; the caller vouches for the bytes read.
        unsafe {
            std::arch::asm!(
                "tileloadd tmm6, [{first} + {stride}*1]",
                "tileloadd tmm7, [{second} + {stride}*1]",
                first = in(reg) first,
                second = in(reg) second,
                stride = in(reg) TILE_ROW_BYTES,
                options(nostack, readonly, preserves_flags)
            );
        }
    }

    #[inline(always)]
    fn multiply(&mut self, both: bool) {
        // SAFETY: tiles configured on this thread; the operands are tiles only.
        unsafe {
            std::arch::asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                options(nomem, nostack, preserves_flags)
            );
            if both {
                std::arch::asm!(
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nomem, nostack, preserves_flags)
                );
            }
        }
    }

    #[inline(always)]
    fn store_accumulators(&mut self, out: &mut [f32; 4 * TILE_FLOATS]) {
        let base = out.as_mut_ptr();
        // SAFETY: tiles configured on this thread; each store writes 16 rows of 64 bytes, one
        // quarter of `out`.
        unsafe {
            std::arch::asm!(
                "tilestored [{t0} + {stride}*1], tmm0",
                "tilestored [{t1} + {stride}*1], tmm1",
                "tilestored [{t2} + {stride}*1], tmm2",
                "tilestored [{t3} + {stride}*1], tmm3",
                t0 = in(reg) base,
                t1 = in(reg) base.add(TILE_FLOATS),
                t2 = in(reg) base.add(2 * TILE_FLOATS),
                t3 = in(reg) base.add(3 * TILE_FLOATS),
                stride = in(reg) TILE_ROW_BYTES,
                options(nostack, preserves_flags)
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Hardware {
    fn drop(&mut self) {
        // SAFETY: releases the configuration this value loaded (on this thread).
        unsafe { std::arch::asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
    }
}

/// The tile instructions in plain Rust, as Intel's pseudo-code for `TILELOADD`, `TILESTORED`,
/// `TILEZERO` and `TDPBF16PS` states them (each pair of bf16 products added to the f32 sum in
/// order; the hardware's own rounding differs in the last bits, which the tests allow for). The
/// kernels' tests run the driver on it, and so do model tests through
/// [`super::emulate_tiles_for_tests`].
pub(in crate::quant) struct Emulated {
    tiles: [[u8; TILE_ROWS * TILE_ROW_BYTES]; 8],
}

impl Emulated {
    /// 16 rows of 64 bytes, `stride` bytes apart from `from`, into `tile`.
    ///
    /// # Safety
    /// As [`TileUnit::load_inputs`].
    unsafe fn load(&mut self, tile: usize, from: *const u16, stride: usize) {
        for (row, bytes) in self.tiles[tile]
            .chunks_exact_mut(TILE_ROW_BYTES)
            .enumerate()
        {
            // SAFETY: the caller vouches that every row lies in readable memory.
            unsafe {
                let start = from.cast::<u8>().add(row * stride);
                std::ptr::copy_nonoverlapping(start, bytes.as_mut_ptr(), TILE_ROW_BYTES);
            }
        }
    }

    fn bf16(tile: &[u8], row: usize, index: usize) -> f32 {
        let at = row * TILE_ROW_BYTES + 2 * index;
        f32::from_bits(u32::from(u16::from_le_bytes([tile[at], tile[at + 1]])) << 16)
    }

    /// `TDPBF16PS acc, a, b`.
    fn dot(&mut self, acc: usize, a: usize, b: usize) {
        let (a, b) = (self.tiles[a], self.tiles[b]);
        let acc = &mut self.tiles[acc];
        for m in 0..TILE_ROWS {
            for n in 0..TILE_ROW_BYTES / 4 {
                let at = m * TILE_ROW_BYTES + 4 * n;
                let mut sum = f32::from_le_bytes(acc[at..at + 4].try_into().unwrap());
                for k in 0..TILE_ROW_BYTES / 4 {
                    sum += Self::bf16(&a, m, 2 * k) * Self::bf16(&b, k, 2 * n);
                    sum += Self::bf16(&a, m, 2 * k + 1) * Self::bf16(&b, k, 2 * n + 1);
                }
                acc[at..at + 4].copy_from_slice(&sum.to_le_bytes());
            }
        }
    }
}

impl TileUnit for Emulated {
    fn configured() -> Self {
        Emulated {
            tiles: [[0; TILE_ROWS * TILE_ROW_BYTES]; 8],
        }
    }

    fn zero_accumulators(&mut self) {
        for tile in &mut self.tiles[..4] {
            tile.fill(0);
        }
    }

    unsafe fn load_inputs(
        &mut self,
        first: *const u16,
        second: *const u16,
        stride: usize,
        both: bool,
    ) {
        // SAFETY: the caller's promise is passed on.
        unsafe {
            self.load(4, first, stride);
            if both {
                self.load(5, second, stride);
            }
        }
    }

    unsafe fn load_weights(&mut self, first: *const u16, second: *const u16) {
        // SAFETY: the caller's promise is passed on.
        unsafe {
            self.load(6, first, TILE_ROW_BYTES);
            self.load(7, second, TILE_ROW_BYTES);
        }
    }

    fn multiply(&mut self, both: bool) {
        self.dot(0, 4, 6);
        self.dot(1, 4, 7);
        if both {
            self.dot(2, 5, 6);
            self.dot(3, 5, 7);
        }
    }

    fn store_accumulators(&mut self, out: &mut [f32; 4 * TILE_FLOATS]) {
        for (tile, out) in self.tiles[..4]
            .iter()
            .zip(out.chunks_exact_mut(TILE_FLOATS))
        {
            for (value, bytes) in out.iter_mut().zip(tile.chunks_exact(4)) {
                *value = f32::from_le_bytes(bytes.try_into().unwrap());
            }
        }
    }
}

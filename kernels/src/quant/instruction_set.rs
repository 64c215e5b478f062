//! Which vector instructions the interleaved (group) kernels run on: the best the CPU has, or
//! less where a caller asked for less (to compare two levels in one run, or to rule a level
//! out on a machine where it misbehaves).
//!
//! ```
//! use kernels::quant::{InstructionSet, limit_instruction_set};
//! // Every group kernel from here on runs its AVX2 code at most, whatever the CPU has.
//! limit_instruction_set(InstructionSet::Avx2);
//! assert!(InstructionSet::in_use() <= InstructionSet::Avx2);
//! # limit_instruction_set(InstructionSet::Avx512Vnni);
//! ```

use std::sync::atomic::{AtomicU8, Ordering};

/// A level of vector instructions, from the least to the most capable: each level's kernels
/// need everything the ones below it need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstructionSet {
    /// Plain Rust, on any CPU: the reference every other level is tested against.
    Portable,
    /// AVX2 with FMA and F16C (x86-64 since 2013).
    Avx2,
    /// AVX2 plus AVX-512 VNNI on 256-bit registers (AVX512F, AVX512VL, AVX512_VNNI): one
    /// instruction multiplies 32 pairs of bytes and adds them into eight i32 lanes, where AVX2
    /// takes three, and 32 vector registers instead of 16 let a group of rows meet more inputs
    /// at once. Ice Lake, Sapphire Rapids, Zen 4 and later.
    Avx512Vnni,
    /// AVX-512 VNNI plus the AMX tiles (AMX-TILE, AMX-BF16) for the products of many input rows
    /// (a prompt's), where Linux grants the process the tile state. Sapphire Rapids and later.
    Amx,
}

impl InstructionSet {
    /// Every level, least capable first.
    pub const ALL: [InstructionSet; 4] = [
        InstructionSet::Portable,
        InstructionSet::Avx2,
        InstructionSet::Avx512Vnni,
        InstructionSet::Amx,
    ];

    /// The name a command line takes and prints.
    pub fn name(self) -> &'static str {
        match self {
            InstructionSet::Portable => "portable",
            InstructionSet::Avx2 => "avx2",
            InstructionSet::Avx512Vnni => "avx512-vnni",
            InstructionSet::Amx => "amx",
        }
    }

    /// The level named `name` (as [`Self::name`] prints it), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.name() == name)
    }

    /// Whether this CPU runs the level's kernels. One atomic load after the first call: the
    /// kernels check it on every call (a group of rows at a time).
    #[inline]
    pub fn is_supported(self) -> bool {
        let mut levels = SUPPORTED.load(Ordering::Relaxed);
        if levels == 0 {
            levels = Self::ALL
                .into_iter()
                .filter(|level| level.detect())
                .fold(DETECTED, |bits, level| bits | 1 << level as u8);
            SUPPORTED.store(levels, Ordering::Relaxed);
        }
        levels & 1 << self as u8 != 0
    }

    /// Asks the CPU (std caches each feature, but a level takes several).
    fn detect(self) -> bool {
        match self {
            InstructionSet::Portable => true,
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx2 => super::x86::has_avx2_fma_f16c(),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx512Vnni => super::x86::has_avx512_vnni(),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Amx => super::x86::has_avx512_vnni() && super::amx::tiles_usable(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The level the kernels run on now: the best the CPU supports, at most the limit
    /// [`limit_instruction_set`] set. Cached by std and an atomic: two loads per call.
    #[inline]
    pub fn in_use() -> Self {
        let limit = Self::ALL[LIMIT.load(Ordering::Relaxed) as usize];
        Self::ALL
            .into_iter()
            .rev()
            .find(|&level| level <= limit && level.is_supported())
            .unwrap_or(InstructionSet::Portable)
    }

    /// The level the vector (group) kernels run on: [`Self::in_use`], where AMX means its
    /// vector level, AVX-512 VNNI (the tiles serve only products of many inputs).
    #[inline]
    pub fn vectors_in_use() -> Self {
        Self::in_use().min(InstructionSet::Avx512Vnni)
    }

    /// Whether products of many input rows run on the AMX tiles now.
    #[inline]
    pub fn tiles_in_use() -> bool {
        Self::in_use() == InstructionSet::Amx
    }

    /// Every vector level this CPU supports, least capable first: the group kernels' tests run
    /// each (the tiles have their own).
    #[cfg(test)]
    pub(super) fn supported() -> impl Iterator<Item = Self> {
        Self::ALL
            .into_iter()
            .filter(|level| *level <= InstructionSet::Avx512Vnni && level.is_supported())
    }
}

/// The most capable level the kernels may use, as an index into [`InstructionSet::ALL`].
static LIMIT: AtomicU8 = AtomicU8::new(InstructionSet::Amx as u8);

/// Bit `level as u8` set for each level this CPU supports, and [`DETECTED`] once they were
/// asked for (0: not yet).
static SUPPORTED: AtomicU8 = AtomicU8::new(0);

/// The bit in [`SUPPORTED`] that says the CPU was asked.
const DETECTED: u8 = 1 << 7;

/// Keeps every group kernel at or below `limit` from now on, for the whole process (a level
/// the CPU lacks is never used anyway). Results differ between levels only in the order float
/// sums run: every level's integer sums are exact.
pub fn limit_instruction_set(limit: InstructionSet) {
    LIMIT.store(limit as u8, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_ordered() {
        for level in InstructionSet::ALL {
            assert_eq!(InstructionSet::from_name(level.name()), Some(level));
            assert_eq!(InstructionSet::ALL[level as usize], level);
        }
        assert_eq!(InstructionSet::from_name("sse2"), None);
        assert!(InstructionSet::Portable < InstructionSet::Avx2);
        assert!(InstructionSet::Avx2 < InstructionSet::Avx512Vnni);
        assert!(InstructionSet::Avx512Vnni < InstructionSet::Amx);
        assert!(InstructionSet::Portable.is_supported());
        assert!(InstructionSet::in_use().is_supported());
        for level in InstructionSet::ALL {
            // The cached answer, asked twice (computed, then read back), is the CPU's.
            assert_eq!(level.is_supported(), level.detect(), "{}", level.name());
            assert_eq!(level.is_supported(), level.detect(), "{}", level.name());
        }
    }
}

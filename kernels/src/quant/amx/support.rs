//! Whether this process may run AMX tile instructions: the CPU has them, the OS saves their state,
//! and (on Linux) the kernel granted the process the tile data state. Asked once per process.
//!
//! Linux enables the 8 KiB of tile data per thread only for processes that ask
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, kernel 5.16+); a tile instruction in a
//! process that did not ask raises SIGILL. So the answer here is yes only after the request was
//! granted and read back, and no on every other OS (whose rules we do not test).

use std::sync::OnceLock;

use super::TileStatus;

/// Whether the CPU has the tiles and the OS lets this process run them: `None` when it does,
/// else why not. The first call asks the CPU and the OS (and requests the tile state from
/// Linux); later calls read the cached answer.
pub(in crate::quant) fn tiles_refused() -> Option<TileStatus> {
    static REFUSED: OnceLock<Option<TileStatus>> = OnceLock::new();
    *REFUSED.get_or_init(ask_cpu_and_os)
}

/// True when the CPU has the tiles and the OS lets this process run them.
pub(in crate::quant) fn tiles_granted() -> bool {
    tiles_refused().is_none()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn ask_cpu_and_os() -> Option<TileStatus> {
    if !cpu_has_tiles() {
        Some(TileStatus::NotOnThisCpu)
    } else if !os_saves_tile_state() {
        Some(TileStatus::NotSavedByOs)
    } else if !linux_grants_tile_data() {
        Some(TileStatus::RefusedByLinux)
    } else {
        None
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn ask_cpu_and_os() -> Option<TileStatus> {
    Some(TileStatus::NotLinuxOnX86)
}

/// CPUID: AMX-TILE and AMX-BF16, and a palette 1 with room for the tiles the kernel configures
/// (eight tiles of 16 rows x 64 bytes, as on every AMX CPU so far).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpu_has_tiles() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    // SAFETY (all three): CPUID exists on every x86-64 CPU, and a leaf above the maximum the
    // CPU reports is never asked for.
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 0x1d {
        return false;
    }
    #[allow(unused_unsafe)]
    let features = unsafe { __cpuid_count(7, 0) }.edx;
    if features & (AMX_BF16 | AMX_TILE) != AMX_BF16 | AMX_TILE {
        return false;
    }
    // Leaf 0x1D, sub-leaf 1: palette 1's bytes per row (EBX low half), tile names (EBX high half)
    // and rows (ECX low half).
    #[allow(unused_unsafe)]
    let palette = unsafe { __cpuid_count(0x1d, 1) };
    let bytes_per_row = palette.ebx & 0xffff;
    let names = palette.ebx >> 16;
    let rows = palette.ecx & 0xffff;
    bytes_per_row >= 64 && names >= 8 && rows >= 16
}

/// XCR0 has the tile configuration (bit 17) and tile data (bit 18) state: the OS saves them on a
/// context switch. Read only when CPUID says the OS enabled XGETBV (OSXSAVE).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn os_saves_tile_state() -> bool {
    use std::arch::x86_64::__cpuid;
    const OSXSAVE: u32 = 1 << 27;
    const TILE_STATE: u64 = (1 << 17) | (1 << 18);
    // SAFETY: leaf 1 exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    if unsafe { __cpuid(1) }.ecx & OSXSAVE == 0 {
        return false;
    }
    let (low, high): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; OSXSAVE (checked above) says it is enabled.
    unsafe {
        std::arch::asm!(
            "xgetbv",
            in("ecx") 0u32,
            out("eax") low,
            out("edx") high,
            options(nomem, nostack, preserves_flags)
        );
    }
    let xcr0 = (u64::from(high) << 32) | u64::from(low);
    xcr0 & TILE_STATE == TILE_STATE
}

/// Requests the tile data state for this process and reads the granted set back.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn linux_grants_tile_data() -> bool {
    // From the kernel's arch/x86/include/uapi/asm/prctl.h and fpu/xstate.h.
    const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    // SAFETY: arch_prctl with these codes reads no memory but `granted`, which it writes (8
    // bytes); a kernel without them answers -EINVAL, which the check below turns into "no".
    unsafe {
        if arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
            return false;
        }
        let mut granted = 0u64;
        if arch_prctl(ARCH_GET_XCOMP_PERM, (&raw mut granted) as u64) != 0 {
            return false;
        }
        granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// The `arch_prctl` system call (158 on x86-64) with two arguments; its raw result (negative:
/// an error number). Made directly, so the kernels need no C library binding for one call.
///
/// # Safety
/// `argument` must be what `code` expects (an address the call writes, for GET codes).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn arch_prctl(code: u64, argument: u64) -> i64 {
    const SYS_ARCH_PRCTL: i64 = 158;
    let result: i64;
    // SAFETY: the caller vouches for the arguments; the syscall instruction clobbers only rcx
    // and r11 besides the result register.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") code,
            in("rsi") argument,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    result
}

//! The C allocator's settings for a process that runs a model: freed buffers stay in the
//! process for the next step instead of going back to the kernel.
//!
//! A prompt's forward pass allocates and frees buffers of hundreds of KiB to tens of MiB per
//! matrix product (each expert's batch, its outputs, their transposes). glibc hands blocks over
//! its mmap threshold straight to `mmap`, and trims the top of a heap once more than its trim
//! threshold is free; either way the next step faults the pages back in, and the kernel zeroes
//! every one. Measured on lite:4 Q4_K_M (`bench prefill --prompt 512`, 2 threads, `perf stat -e
//! page-faults`): 10 more prompts faulted in 899,085 more pages with glibc's defaults, 10,519
//! with these settings, and prefill went from 373.7-386.2 to 424.3-437.3 tok/s.

/// Raises glibc's mmap and trim thresholds: blocks up to 32 MiB (glibc's largest mmap
/// threshold) come from the heap and go back to it, and a heap keeps up to 1 GiB free before
/// giving memory back. Elsewhere (another C library, another OS) it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD_BYTES: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes the allocator's parameters; it is called before any
        // other thread exists. A refused setting (it returns 0) leaves glibc's default, which
        // is correct, only slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        }
    }
}

//! The GPU suite (cases in `support/gpu_suite.rs`) on an NVIDIA GPU. Needs the GPU and NVRTC, so
//! every test is ignored by default:
//!
//! ```sh
//! cargo test -p kernels --release --test gpu -- --ignored
//! ```
//!
//! NVRTC is the library `DEEPSEEK_LSP_NVRTC` names, else `libnvrtc.so.13`/`.so.12` on the
//! loader's path, else the one tools/nvrtc.py fetches (which needs pip and the network).
//! `gpu_on_cpu.rs` runs the same cases on the emulated driver in every test run.

mod support;

use kernels::cuda::driver::Gpu;
use kernels::cuda::nvrtc::Nvrtc;

fn gpu_and_nvrtc() -> (Gpu, Nvrtc) {
    let gpu = Gpu::open(0).unwrap_or_else(|error| panic!("{error}"));
    eprintln!(
        "GPU: {} (compute {}.{}, {} multiprocessors)",
        gpu.name, gpu.compute_capability.0, gpu.compute_capability.1, gpu.multiprocessors
    );
    // The NVRTC the machine has, else the one tools/nvrtc.py fetches.
    let nvrtc = Nvrtc::open().unwrap_or_else(|error| {
        eprintln!("{error}; fetching NVRTC with tools/nvrtc.py");
        support::fetched_nvrtc()
    });
    (gpu, nvrtc)
}

gpu_suite!(
    #[ignore = "needs an NVIDIA GPU: cargo test -p kernels --test gpu -- --ignored"]
    open: gpu_and_nvrtc()
);

//! The GPU suite (cases in `support/gpu_suite.rs`) on the emulated CUDA driver and NVRTC of
//! `cuda_on_cpu/`: our kernels' CUDA C source, compiled as C++ and run with CUDA's thread,
//! block, barrier and warp-shuffle semantics on the CPU, launched by the same Rust code as on a
//! GPU and held to the same CPU references. It needs only a C++ compiler, so it runs in CI; it
//! proves the kernels' indexing, barriers and launch sizes, not their speed on a GPU.

mod support;

gpu_suite!(open: support::cuda_on_cpu::gpu_and_nvrtc());

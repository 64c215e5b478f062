//! Our CUDA kernels (the CUDA C sources under `kernels/cuda/`), what each needs to be compiled
//! for a model's shapes, and NVRTC to compile them at run time.
//!
//! Nothing here needs CUDA at build time: the sources are text, and NVRTC is opened at run time
//! ([`nvrtc::Nvrtc::open`]), so a CPU-only build and CI can check that every kernel compiles for
//! the GPUs we target while no GPU is present. Each kernel has a CPU reference in this crate that
//! it is tested against on a GPU machine: see [`KernelSource::cpu_reference`].

pub mod driver;
pub mod launch;
pub mod launch_shapes;
mod library;
pub mod nvrtc;
mod sources;

pub use launch_shapes::{LaunchShape, attention_splits, experts_take_the_matvec};
pub use sources::{
    KernelSource, MLA_THREADS, MlaShape, MoeLaunch, RoutingLimits, SOURCES, mla_compile_options,
};

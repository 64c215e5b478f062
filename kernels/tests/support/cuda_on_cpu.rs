//! The emulated CUDA driver and NVRTC (`kernels/tests/cuda_on_cpu/`), built with the C++
//! compiler for this test process, opened through the same bindings as the real ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kernels::cuda::driver::Gpu;
use kernels::cuda::nvrtc::Nvrtc;

/// The emulated library, built once per test process: it is both the driver and NVRTC.
fn library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_on_cpu");
        let workdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_on_cpu");
        std::fs::create_dir_all(&workdir).unwrap();
        let library = workdir.join(format!("libcuda_on_cpu-{}.so", std::process::id()));
        let output = Command::new("c++")
            .args(["-std=c++17", "-O2", "-fPIC", "-shared", "-Wall"])
            .arg(format!(
                "-DCUDA_ON_CPU_HEADER=\"{}\"",
                sources.join("cuda_on_cpu.h").display()
            ))
            .arg(format!("-DCUDA_ON_CPU_WORKDIR=\"{}\"", workdir.display()))
            .arg(sources.join("cuda_on_cpu.cpp"))
            .arg("-o")
            .arg(&library)
            .arg("-ldl")
            .output()
            .expect("a C++ compiler (c++) builds the emulated CUDA driver");
        assert!(
            output.status.success(),
            "building the emulated CUDA driver failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        library
    })
}

/// The emulated GPU and the emulated NVRTC that compiles for it.
pub fn gpu_and_nvrtc() -> (Gpu, Nvrtc) {
    let library = library();
    let gpu = Gpu::open_at(library, 0).unwrap_or_else(|error| panic!("{error}"));
    let nvrtc = Nvrtc::open_at(library).unwrap_or_else(|error| panic!("{error}"));
    (gpu, nvrtc)
}

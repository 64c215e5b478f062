//! What the kernels' integration tests share.

use std::path::{Path, PathBuf};
use std::process::Command;

use kernels::cuda::nvrtc::Nvrtc;

/// NVRTC as tools/nvrtc.py fetches it from PyPI (sha256-checked; needs pip and the network).
#[allow(dead_code)]
pub fn fetched_nvrtc() -> Nvrtc {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/nvrtc.py");
    let output = Command::new("python3")
        .arg(&tools)
        .output()
        .expect("python3 runs (the test fetches NVRTC with pip)");
    assert!(
        output.status.success(),
        "fetching NVRTC failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    Nvrtc::open_at(&path).unwrap_or_else(|error| panic!("{error}"))
}

#[allow(dead_code)]
pub mod cuda_on_cpu;
#[allow(dead_code)]
pub mod gpu_suite;
#[allow(dead_code)]
pub mod quant_weights;

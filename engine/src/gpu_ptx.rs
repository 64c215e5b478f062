//! Our CUDA kernels (`kernels/cuda/`) on candle's CUDA device: each source compiled with NVRTC
//! once per process and set of options (every layer of every step asks; candle loads a module
//! once and reads the text only the first time).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use kernels::cuda::{LaunchShape, SOURCES};

/// Every GPU we target runs compute_80 PTX (the driver compiles it for newer chips).
const ARCH: &str = "-arch=compute_80";

/// `entry` of the kernel source `file` compiled with `options`, loaded on `device`. Launch it on
/// the device's stream: `device.cuda_stream().launch_builder(&kernel)`.
pub(crate) fn kernel(
    device: &CudaDevice,
    file: &'static str,
    options: &[String],
    entry: &str,
) -> candle_core::Result<CudaFunction> {
    // candle keys loaded modules by name: one per source and options.
    let module = format!("deepseek_lsp_{file}_{}", options.join("_"));
    let ptx = ptx_for(&module, file, options)?;
    Ok(device
        .get_or_load_custom_func(entry, &module, &ptx)?
        .into_cuda_function())
}

/// The PTX of `file` compiled with `options`, cached under its module name.
fn ptx_for(module: &str, file: &'static str, options: &[String]) -> candle_core::Result<Arc<str>> {
    static COMPILED: LazyLock<Mutex<HashMap<String, Arc<str>>>> = LazyLock::new(Default::default);
    let mut compiled = COMPILED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(ptx) = compiled.get(module) {
        return Ok(ptx.clone());
    }
    let source = SOURCES
        .iter()
        .find(|source| source.file == file)
        .ok_or_else(|| candle_core::Error::msg(format!("no kernel source {file}")))?;
    let mut all_options = options.to_vec();
    all_options.push(ARCH.to_string());
    let ptx: Arc<str> = compile_ptx_with_opts(
        source.source,
        CompileOptions {
            options: all_options,
            name: Some(source.file.to_string()),
            ..Default::default()
        },
    )
    .map_err(|e| candle_core::Error::msg(format!("{}: {e}", source.file)))?
    .to_src()
    .into();
    compiled.insert(module.to_string(), ptx.clone());
    Ok(ptx)
}

/// cudarc's launch configuration for one of our kernels' launch shapes
/// (`kernels::cuda::launch_shapes`, which the emulated GPU suite checks).
pub(crate) fn config(shape: LaunchShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: shape.grid,
        block_dim: (shape.block, 1, 1),
        shared_mem_bytes: shape.shared_bytes,
    }
}

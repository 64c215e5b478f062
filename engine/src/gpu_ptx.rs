//! Our CUDA kernels (`kernels/cuda/`) as PTX for candle's CUDA device: each source compiled with
//! NVRTC once per process and set of options (every layer of every step asks; candle loads a
//! module once and reads the text only the first time).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use kernels::cuda::SOURCES;

/// Every GPU we target runs compute_80 PTX (the driver compiles it for newer chips).
const ARCH: &str = "-arch=compute_80";

/// `file` compiled with `options`: the module name candle keys it by, and its PTX, for
/// `CudaDevice::get_or_load_custom_func(entry, &module, &ptx)`.
pub(crate) fn module(
    file: &'static str,
    options: &[String],
) -> candle_core::Result<(String, Arc<str>)> {
    let ptx = ptx_for(file, options)?;
    Ok((format!("deepseek_lsp_{file}_{}", options.join("_")), ptx))
}

fn ptx_for(file: &'static str, options: &[String]) -> candle_core::Result<Arc<str>> {
    type Key = (&'static str, Vec<String>);
    static COMPILED: LazyLock<Mutex<HashMap<Key, Arc<str>>>> = LazyLock::new(Default::default);
    let key = (file, options.to_vec());
    let mut compiled = COMPILED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(ptx) = compiled.get(&key) {
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
    compiled.insert(key, ptx.clone());
    Ok(ptx)
}

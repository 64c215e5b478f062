//! Every CUDA kernel of `kernels/cuda/` compiles with NVRTC for the GPUs we target (Ampere and
//! Hopper) at the model shapes we run, and defines the entry points the launcher asks for. NVRTC
//! comes from PyPI (tools/nvrtc.py fetches nvidia-cuda-nvrtc-cu12 and checks its sha256), so this
//! runs on machines without a GPU, CI included. Running the kernels against their CPU
//! references needs a GPU.

mod support;

use std::sync::OnceLock;

use kernels::cuda::nvrtc::{Nvrtc, NvrtcError};
use kernels::cuda::{KernelSource, MlaShape, SOURCES, mla_compile_options};

/// Compute capabilities whose virtual architecture every kernel must compile for.
const ARCHITECTURES: &[&str] = &["compute_80", "compute_90"];

fn nvrtc() -> &'static Nvrtc {
    static NVRTC: OnceLock<Nvrtc> = OnceLock::new();
    NVRTC.get_or_init(support::fetched_nvrtc)
}

fn source(file: &str) -> &'static KernelSource {
    SOURCES.iter().find(|s| s.file == file).unwrap()
}

/// The model shapes the attention kernel is compiled for at load: DeepSeek-V2-Lite, DeepSeek-V2
/// (128 heads: groups of 16) and the built-in tiny model.
const SHAPES: &[MlaShape] = &[
    MlaShape {
        heads: 16,
        kv_lora: 512,
        rope: 64,
    },
    MlaShape {
        heads: 128,
        kv_lora: 512,
        rope: 64,
    },
    MlaShape {
        heads: 4,
        kv_lora: 64,
        rope: 16,
    },
];

fn options_for(source: &KernelSource, architecture: &str) -> Vec<Vec<String>> {
    let arch = format!("-arch={architecture}");
    if source.file == "mla_paged_attention.cu" {
        SHAPES
            .iter()
            .map(|&shape| {
                let mut options = mla_compile_options(shape).unwrap();
                options.push(arch.clone());
                options
            })
            .collect()
    } else {
        vec![vec![arch]]
    }
}

#[test]
fn every_kernel_compiles_for_ampere_and_hopper_with_its_entry_points() {
    let nvrtc = nvrtc();
    let (major, minor) = nvrtc.version().unwrap();
    assert!(major >= 12, "NVRTC {major}.{minor} is older than CUDA 12");
    for source in SOURCES {
        for architecture in ARCHITECTURES {
            for options in options_for(source, architecture) {
                let ptx = nvrtc
                    .compile_ptx(source.source, source.file, &options)
                    .unwrap_or_else(|error| panic!("{options:?}: {error}"));
                let target = architecture.replace("compute_", "sm_");
                assert!(
                    ptx.contains(&format!(".target {target}")),
                    "{}: no .target {target} in the PTX",
                    source.file
                );
                for entry in source.entry_points {
                    assert!(
                        ptx.contains(&format!(".entry {entry}(")),
                        "{} {options:?}: no entry point {entry} (C linkage lost?)",
                        source.file
                    );
                }
            }
        }
    }
}

#[test]
fn a_compile_error_names_the_file_and_line() {
    let broken = "extern \"C\" __global__ void broken(float* x) {\n  x[0] = undefined_name;\n}\n";
    match nvrtc().compile_ptx(broken, "broken.cu", &["-arch=compute_80".to_string()]) {
        Err(NvrtcError::Compile { program, log }) => {
            assert_eq!(program, "broken.cu");
            assert!(log.contains("broken.cu(2)"), "{log}");
            assert!(log.contains("undefined_name"), "{log}");
        }
        other => panic!("a broken kernel compiled: {other:?}"),
    }
}

#[test]
fn the_attention_kernel_refuses_to_compile_without_its_sizes() {
    let attention = source("mla_paged_attention.cu");
    let error = nvrtc()
        .compile_ptx(
            attention.source,
            attention.file,
            &["-arch=compute_90".to_string()],
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("KV_LORA must be defined"),
        "{error}"
    );
}

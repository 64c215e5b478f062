#!/usr/bin/env bash
# Everything issue 11 needs a GPU for, as one prepared run:
#   1. every CUDA kernel against its CPU reference (kernels/tests/gpu.rs) and the attention
#      kernel's bench (kernels/benches/gpu_attention.rs): these need no CUDA at build time;
#   2. with a CUDA build (`--features cuda`, made here when the CUDA toolkit can be fetched):
#      the golden fixtures on the GPU (engine/tests/gpu.rs: f32 within 1e-4 on every path, bf16
#      within its bar, a Q8_0 GGUF kept in its blocks within 1e-4), then decode, prefill and
#      keystroke figures for a Lite-shaped bf16 model with the fraction of HBM bandwidth decode
#      reaches, and decode and prefill for the same shape from a Q4_K_M GGUF kept in its blocks.
#
#   tools/gpu_check.sh build   # here, any x86-64 Linux with Rust: binaries into .gpu/ (ignored)
#   tools/gpu_check.sh run     # on the GPU machine, from the repository root (no Rust needed)
#
# A device run carries `.gpu` (`carry: [".gpu"]`); everything in it is compressed to fit the
# 64 MiB a run's working tree may hold, and the CUDA binaries are built without the embedded
# default model. `run` finds NVRTC through DEEPSEEK_LSP_NVRTC, else in a CUDA toolkit or in the
# pip-installed nvidia-* packages, whose lib folders also give the CUDA build its cuBLAS, cuRAND
# and runtime; the driver comes through the loader (libcuda.so.1). LAYERS (default 8) sets the
# synthetic model's depth: Lite's 27 layers take minutes to make on the host.
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/executable_of.sh
source tools/timed_step.sh

case "${1:-}" in
build)
    mkdir -p .gpu
    rm -f .gpu/*
    test=$(cargo test -p kernels --release --test gpu --no-run --message-format=json | executable_of | tail -1)
    bench=$(cargo bench -p kernels --bench gpu_attention --no-run --message-format=json | executable_of | tail -1)
    cp "$test" .gpu/kernels-gpu-tests
    cp "$bench" .gpu/gpu-attention-bench
    if toolkit=$(python3 tools/cuda_toolkit.py); then
        eval "$toolkit"
        # NVRTC leaves inline PTX (the tensor cores' mma) to the driver: assemble every kernel
        # here with ptxas for Ampere and Hopper, so a mistake there fails the build, not the run.
        tools/ptx_check.sh
        export DEEPSEEK_LSP_EMBED_MODEL=0 CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda}
        engine=$(cargo test -p engine --release --features cuda --test gpu --no-run --message-format=json | executable_of | tail -1)
        cargo build --release --features cuda -p deepseek-lsp
        cp "$engine" .gpu/engine-gpu-tests
        cp "$CARGO_TARGET_DIR/release/deepseek-lsp" .gpu/deepseek-lsp
    else
        echo "no CUDA toolkit: only the kernel checks are built" >&2
    fi
    strip .gpu/*
    xz -T0 -6 -f .gpu/*
    ls -la .gpu
    ;;
run)
    work=$(mktemp -d)
    for packed in .gpu/*.xz; do
        binary="$work/$(basename "$packed" .xz)"
        xz -dc "$packed" > "$binary"
        chmod +x "$binary"
    done
    site=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
    libraries=$(for dir in $site; do ls -d "$dir"/nvidia/*/lib 2>/dev/null || true; done | sort -u | tr '\n' ':')
    export LD_LIBRARY_PATH="${libraries}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    if [ -z "${DEEPSEEK_LSP_NVRTC:-}" ]; then
        for path in /usr/local/cuda/lib64/libnvrtc.so.* /usr/local/cuda-*/lib64/libnvrtc.so.* \
            $(echo "$libraries" | tr ':' '\n' | sed 's|$|/libnvrtc.so.*|'); do
            case "$path" in *builtins*|*alt*) continue ;; esac
            if [ -f "$path" ]; then export DEEPSEEK_LSP_NVRTC="$path"; break; fi
        done
    fi
    echo "NVRTC: ${DEEPSEEK_LSP_NVRTC:-not found}"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores, AMX flags: $(grep -o -w 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    # Limits in seconds, most needed first; together they fit a 420-second run.
    step 60 "kernels against their CPU references" \
        "$work/kernels-gpu-tests" --ignored --nocapture --test-threads=1
    step 30 "attention kernel bench" "$work/gpu-attention-bench"
    if [ -x "$work/deepseek-lsp" ]; then
        step 90 "golden fixtures on the GPU" env ENGINE_FIXTURES=engine/tests/fixtures \
            "$work/engine-gpu-tests" --ignored --nocapture --test-threads=1
        layers=${LAYERS:-8}
        step 90 "bench all, Lite-shaped bf16" "$work/deepseek-lsp" bench all \
            --synthetic "lite:$layers" --dtype bf16 --device cuda --prompt 512 --tokens 64
        # The same shape from a Q4_K_M GGUF: its blocks stay on the GPU (about a quarter of bf16).
        step 90 "bench all, Lite-shaped Q4_K_M kept in blocks" "$work/deepseek-lsp" bench all \
            --synthetic "lite:$layers" --quant Q4_K --dtype bf16 --device cuda --prompt 512 \
            --tokens 64
        step 60 "keystroke bench, Lite-shaped bf16" "$work/deepseek-lsp" bench keystroke \
            --synthetic "lite:$layers" --dtype bf16 --device cuda --context 2048
    fi
    rm -rf "$work"
    exit "$status"
    ;;
*)
    echo "usage: tools/gpu_check.sh build|run" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The GPU checks that need no CUDA at build time: every CUDA kernel against its CPU reference
# (kernels/tests/gpu.rs) and the attention kernel's bench (kernels/benches/gpu_attention.rs).
#
#   tools/gpu_check.sh build   # here, any x86-64 Linux with Rust: binaries into .gpu/ (ignored)
#   tools/gpu_check.sh run     # on the GPU machine, from the repository root (no Rust needed)
#
# `run` finds NVRTC through DEEPSEEK_LSP_NVRTC, else in a CUDA toolkit or a pip-installed
# nvidia-cuda-nvrtc, and the driver through the loader (libcuda.so.1).
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/executable_of.sh

case "${1:-}" in
build)
    mkdir -p .gpu
    test=$(cargo test -p kernels --release --test gpu --no-run --message-format=json | executable_of | tail -1)
    bench=$(cargo bench -p kernels --bench gpu_attention --no-run --message-format=json | executable_of | tail -1)
    cp "$test" .gpu/kernels-gpu-tests
    cp "$bench" .gpu/gpu-attention-bench
    strip .gpu/kernels-gpu-tests .gpu/gpu-attention-bench
    ls -la .gpu
    ;;
run)
    if [ -z "${DEEPSEEK_LSP_NVRTC:-}" ]; then
        for candidate in /usr/local/cuda/lib64/libnvrtc.so.* /usr/local/cuda-*/lib64/libnvrtc.so.* \
            $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | tr ' ' '\n' | sed 's|$|/nvidia/*/lib/libnvrtc.so.*|'); do
            for path in $candidate; do
                case "$path" in *builtins*|*alt*) continue ;; esac
                if [ -f "$path" ]; then export DEEPSEEK_LSP_NVRTC="$path"; break 2; fi
            done
        done
    fi
    echo "NVRTC: ${DEEPSEEK_LSP_NVRTC:-not found}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    status=0
    .gpu/kernels-gpu-tests --ignored --nocapture --test-threads=1 || status=$?
    .gpu/gpu-attention-bench || status=$?
    exit "$status"
    ;;
*)
    echo "usage: tools/gpu_check.sh build|run" >&2
    exit 2
    ;;
esac

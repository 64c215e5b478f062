#!/usr/bin/env bash
# The checks that need a CPU with AMX (Sapphire Rapids or later): the tile road's tests on the
# CPU's own tiles, the panel and matmul benches, and a Lite-shaped prompt with and without the
# tiles, next to llama.cpp's prefill of the same file in each round (built here with
# llama-cpp-python's llama.cpp; `build` makes its virtualenv when missing, as
# benches/llama_cpp_peer.sh does). (CI and machines without AMX test the tile road on emulated
# tiles.)
#
#   tools/amx_check.sh build   # here, any x86-64 Linux with Rust: binaries into .amx/ (ignored)
#   tools/amx_check.sh run     # on the AMX machine, from the repository root (no Rust needed)
#
# `run` says first whether the CPU has AMX and whether the process got the tiles (`cpu_kernels`
# in the bench output is `amx` when it did); without them it still runs everything, on AVX-512.
set -euo pipefail
cd "$(dirname "$0")/.."

source tools/executable_of.sh
source tools/timed_step.sh

case "${1:-}" in
build)
    mkdir -p .amx
    tests=$(cargo test -p kernels --release --lib --no-run --message-format=json | executable_of | tail -1)
    bench=$(cargo bench -p kernels --bench quant_matmul --no-run --message-format=json | executable_of | tail -1)
    # Without the embedded default model (28 MB the check does not use), in a target folder of
    # its own so that the everyday build keeps its model.
    DEEPSEEK_LSP_EMBED_MODEL=0 CARGO_TARGET_DIR=target/amx cargo build --release -p deepseek-lsp
    cp "$tests" .amx/kernels-tests
    cp "$bench" .amx/quant-matmul-bench
    cp target/amx/release/deepseek-lsp .amx/deepseek-lsp
    strip .amx/kernels-tests .amx/quant-matmul-bench .amx/deepseek-lsp
    # Compressed: a device run's working tree, carried folders included, holds 64 MiB at most,
    # and the tracked files take about 37 MB of it.
    xz -T0 -6 -f .amx/kernels-tests .amx/quant-matmul-bench .amx/deepseek-lsp
    # llama.cpp's prefill on the same file, for side-by-side figures from one run: our harness
    # (benches/llama_cpp_prefill.c) against the llama.cpp that llama-cpp-python builds here (its
    # CPU backend for this machine's instruction sets, without AMX tiles), its libraries beside it.
    source benches/llama_venv.sh
    venv=${LLAMA_VENV:-target/llama-venv}
    llama_venv "$venv"
    site=$("$venv/bin/python" -c \
        'import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))')
    rm -rf .amx/llama && mkdir -p .amx/llama
    cc -O2 -o .amx/llama/llama_cpp_prefill benches/llama_cpp_prefill.c -I"$site/include" \
        -L"$site/llama_cpp/lib" -lllama -lggml -lggml-base -lm -Wl,-rpath,'$ORIGIN'
    for library in libllama.so.0 libggml.so.0 libggml-base.so.0 libggml-cpu.so.0; do
        cp -L "$site/llama_cpp/lib/$library" .amx/llama/
    done
    cp -L "$(cc -print-file-name=libgomp.so.1)" .amx/llama/
    tar -C .amx -cJf .amx/llama.tar.xz llama
    rm -rf .amx/llama
    ls -la .amx
    ;;
run)
    work=$(mktemp -d)
    for binary in kernels-tests quant-matmul-bench deepseek-lsp; do
        xz -dc ".amx/$binary.xz" > "$work/$binary"
        chmod +x "$work/$binary"
    done
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"
    echo "AMX flags: $(grep -o -w 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    threads=$(nproc)
    llama=""
    if [ -f .amx/llama.tar.xz ]; then
        tar -C "$work" -xJf .amx/llama.tar.xz
        llama="$work/llama/llama_cpp_prefill"
    fi
    # Limits in seconds: 440 together at most, far less when nothing hangs.
    step 60 "the tile road's tests" bash -c \
        "'$work/kernels-tests' quant:: --test-threads=1 --nocapture 2>&1 | grep -E 'amx|test result|FAILED|skipped'"
    for kernels in avx512-vnni amx; do
        step 30 "x8 matmul bench, $kernels" env KERNELS=$kernels NS=64,512 THREADS=2 RUNS=3 \
            "$work/quant-matmul-bench" "x8"
    done
    step 20 "panel bench" env PANELS=1 THREADS=1 RUNS=3 "$work/quant-matmul-bench" "x8"
    model="$work/lite4-q4k.gguf"
    step 60 "writing a Lite-shaped Q4_K_M GGUF" "$work/deepseek-lsp" bench decode \
        --synthetic lite:4 --quant Q4_K --gguf-out "$model" --prompt 16 --tokens 4
    for threads_now in 2 "$threads"; do
        for round in 1 2; do
            for kernels in avx512-vnni amx; do
                step 20 "prefill, $threads_now threads, --kernels $kernels, round $round" \
                    bash -c "'$work/deepseek-lsp' bench prefill --model '$model' --prompt 512 \
                    --repeats 3 --threads $threads_now --kernels $kernels \
                    | grep -E '\"(cpu_kernels|amx_tiles|tokens_per_second)\"'"
            done
            if [ -n "$llama" ]; then
                step 20 "llama.cpp prefill, $threads_now threads, round $round" \
                    "$llama" "$model" 512 "$threads_now" 3
            fi
        done
    done
    rm -rf "$work"
    exit "$status"
    ;;
*)
    echo "usage: tools/amx_check.sh build|run" >&2
    exit 2
    ;;
esac

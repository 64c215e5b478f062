#!/usr/bin/env bash
# Assembles every CUDA kernel of kernels/cuda/ to machine code with the CUDA toolkit's nvcc and
# ptxas, for Ampere (sm_80) and Hopper (sm_90), and prints each entry point's registers, spills
# and shared memory. NVRTC (what the product and CI compile with) stops at PTX text, and inline
# PTX is only checked when the driver assembles it, so this is where a wrong instruction shows
# without a GPU. Needs nvcc on the PATH: `eval "$(python3 tools/cuda_toolkit.py)"`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# As kernels::cuda::SOURCES assembles them: the block decoders come before the products.
cat kernels/cuda/ggml_blocks.cu kernels/cuda/moe_grouped_matmul.cu > "$work/moe_grouped_matmul.cu"
cp kernels/cuda/moe_routing.cu kernels/cuda/moe_expert_rows.cu kernels/cuda/mla_paged_attention.cu "$work"
for arch in sm_80 sm_90; do
    for source in moe_grouped_matmul.cu moe_routing.cu moe_expert_rows.cu mla_paged_attention.cu; do
        # Lite's attention sizes (the model shapes only change loop bounds).
        sizes=()
        [ "$source" = mla_paged_attention.cu ] && sizes=(-DKV_LORA=512 -DROPE=64 -DHEADS_PER_BLOCK=16)
        echo "== $source for $arch"
        nvcc -arch="$arch" -cubin "${sizes[@]}" -Xptxas -v -o /dev/null "$work/$source" 2>&1 \
            | grep -E "Compiling entry|registers|spill|error" | sed -E 's/ptxas info *: //'
        test "${PIPESTATUS[0]}" -eq 0
    done
done

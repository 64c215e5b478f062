#!/usr/bin/env bash
# Makes engine/tests/fixtures/gguf/*.gguf with llama.cpp's own converter (see the README there).
#
#   tools/gguf_convert/convert_fixture.sh [llama_cpp_python-0.3.36.tar.gz] [python]
#
# The converter comes from the llama-cpp-python 0.3.36 sdist, which vendors llama.cpp with its
# convert_hf_to_gguf.py and gguf-py; the python needs the pins in tools/requirements.txt.
set -euo pipefail

SDIST=${1:-/tmp/pdl/llama_cpp_python-0.3.36.tar.gz}
PYTHON=${2:-/root/venv/bin/python}
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tools/gguf_convert"
FIXTURES="$ROOT/engine/tests/fixtures"
OUT="$FIXTURES/gguf"

echo "$SDIST_SHA256  $SDIST" | sha256sum --check --quiet
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
LLAMA="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
mkdir -p "$OUT"

convert() {
    # The converter is single-threaded numpy/torch work: keep it polite on shared machines.
    nice -n 10 "$PYTHON" "$HERE/run_converter.py" "$LLAMA" "$@"
}

# V2-Lite shape (q_proj, no q_lora), YaRN, 8 routed + 2 shared experts; has reference logits.
convert "$FIXTURES/lite" --outtype f32 --outfile "$OUT/lite-f32.gguf"
convert "$FIXTURES/lite" --outtype q8_0 --outfile "$OUT/lite-q8_0.gguf"
# transformers on the Q8_0 file's dequantized weights: the quantized forward pass's reference.
nice -n 10 "$PYTHON" "$HERE/dequantized_reference.py" "$LLAMA" "$FIXTURES/lite" \
    "$OUT/lite-q8_0.gguf" "$OUT/lite-q8_0-reference.safetensors"
# The older and the fused layouts of the same weights.
nice -n 10 "$PYTHON" "$HERE/rewrite_layouts.py" "$LLAMA" "$OUT/lite-q8_0.gguf" "$OUT/lite-q8_0-rewritten.gguf"
# V2 shape (q_lora path), group-limited routing; its weights are f16, so f16 is lossless.
convert "$FIXTURES/v2" --outtype f16 --outfile "$OUT/v2-f16.gguf"
# Its config has mscale != mscale_all_dim, which GGUF cannot say: transformers on the file's
# weights with mscale = mscale_all_dim, as llama.cpp reads it.
nice -n 10 "$PYTHON" "$HERE/dequantized_reference.py" "$LLAMA" "$FIXTURES/v2" \
    "$OUT/v2-f16.gguf" "$OUT/v2-f16-reference.safetensors"
# The shipped model's vocabulary and hyper-parameters without weights (for the tokenizer test).
convert "$ROOT/models/tiny-coder" --vocab-only --outfile "$OUT/tiny-coder-vocab.gguf"

ls -l "$OUT"

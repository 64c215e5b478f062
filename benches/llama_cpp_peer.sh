#!/usr/bin/env bash
# deepseek-lsp against llama.cpp on the same GGUF file, same threads, same prompt and generation
# lengths (issue 10). Makes what it needs, then runs benches/llama_cpp_peer.py:
#
#   benches/llama_cpp_peer.sh [--layers 4] [--quant Q4_K|Q8_0] [--gguf FILE] [--gguf-out FILE]
#                             [--prompt 512] [--tokens 64] [--threads N] [--repeats 3] [--rounds 1]
#                             [--flash-attn] [--json FILE]
#
# Without --gguf it measures a synthetic DeepSeek-V2-Lite-shaped file of --layers layers that
# deepseek-lsp writes (llama.cpp's Q4_K_M mix for Q4_K). Small smoke run:
#
#   benches/llama_cpp_peer.sh --layers 2 --prompt 64 --tokens 8 --repeats 1
#
# On a shared machine whose speed drifts, --rounds 5 measures both sides five times, alternating,
# and reports the medians and each round's ratios.
#
# Environment:
#   LLAMA_VENV    virtualenv with llama-cpp-python 0.3.36; made when it lacks it (default
#                 target/llama-venv). Installing builds llama.cpp from source (many minutes);
#                 give an existing one to skip that. Extra CMake flags: CMAKE_ARGS, as pip reads.
#   LLAMA_SDIST   install llama-cpp-python from this sdist file instead of PyPI.
#   DEEPSEEK_LSP  the deepseek-lsp binary (default: built with cargo build --release).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LLAMA_VENV:-$ROOT/target/llama-venv}
source "$ROOT/benches/llama_venv.sh"
llama_venv "$VENV"

BIN=${DEEPSEEK_LSP:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && nice cargo build --release --quiet)
    BIN=$ROOT/target/release/deepseek-lsp
fi

exec "$VENV/bin/python" "$ROOT/benches/llama_cpp_peer.py" --deepseek-lsp "$BIN" "$@"

# Sourced by benches/llama_cpp_peer.sh and tools/amx_check.sh: the virtualenv with
# llama-cpp-python 0.3.36 (it builds llama.cpp from source, many minutes), made when missing.
#
#   llama_venv DIR   # DIR then holds it; extra CMake flags come from CMAKE_ARGS, as pip reads
#
# LLAMA_SDIST installs from that sdist file instead of PyPI.
LLAMA_CPP_PYTHON=llama-cpp-python==0.3.36

llama_venv() {
    local venv=$1
    has_llama_cpp() {
        "$venv/bin/python" -c 'import llama_cpp, numpy; assert llama_cpp.__version__ == "0.3.36"' \
            2>/dev/null
    }
    if ! has_llama_cpp; then
        echo "installing $LLAMA_CPP_PYTHON into $venv (it compiles llama.cpp)..." >&2
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        nice "$venv/bin/pip" install --quiet "${LLAMA_SDIST:-$LLAMA_CPP_PYTHON}" numpy
        has_llama_cpp || { echo "llama_cpp still not importable from $venv" >&2; return 1; }
    fi
}

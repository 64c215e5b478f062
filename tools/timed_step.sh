# Sourced by the device check scripts (gpu_check.sh, amx_check.sh): a device run has a fixed
# budget, so every step has a time limit of its own and says when it started and how long it
# took; a step that fails or overruns sets `status` and the run goes on to the next one.
#
#   step LIMIT_SECONDS NAME COMMAND [ARGS...]
status=0
step() {
    local limit=$1 name=$2 started=$SECONDS code=0
    shift 2
    echo "== $name (at ${started}s, limit ${limit}s)"
    timeout "$limit" "$@" || code=$?
    if [ "$code" -ne 0 ]; then
        status=$code
        if [ "$code" -eq 124 ]; then echo "== $name: timed out"; else echo "== $name: exit $code"; fi
    fi
    echo "== $name took $((SECONDS - started))s"
}

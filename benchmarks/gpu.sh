#!/usr/bin/env bash
# The GPU-size benchmarks in one go, most wanted first, each under its own time limit so that one
# that overruns leaves the rest their turn. Results go to the folder given (default: benchmarks/)
# as results-*-gpu.json; what the scripts print goes to gpu-log.txt there.
#
#     bash benchmarks/gpu.sh [FOLDER]
#     SIZE=tiny bash benchmarks/gpu.sh /tmp/check   # the same scripts on the tiny model: checks this file
set -u
out=${1:-benchmarks}
size=${SIZE:-gpu}
mkdir -p "$out"
bench() {
    local limit=$1
    shift
    echo "== $* (at most $limit s)"
    timeout "$limit" python "$@" || echo "== FAILED or over $limit s: $*"
}
{
    bench 130 benchmarks/run.py --size $size --output "$out/results-$size.json"
    bench 190 benchmarks/flags.py --size $size --only=defaults --only=--preset --only=--cpu-offload \
        --output "$out/results-flags-$size.json"
    bench 90 benchmarks/memory_and_batching.py --size $size --parts tiles faces \
        --output "$out/results-crop-batches-$size.json"
    bench 60 benchmarks/regions.py --size $size --output "$out/results-regions-$size.json"
    bench 60 benchmarks/flags.py --size $size --only=--compile-unet --output "$out/results-flags-compile-$size.json"
} 2>&1 | grep --line-buffered -v '^\[transformers\]' | tee "$out/$size-log.txt"

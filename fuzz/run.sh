#!/usr/bin/env bash
# Runs one fuzz target (or all four) for a bounded time, from a seed corpus
# of the project's own guests and data.
#
#   fuzz/run.sh [component_upload|api_json|data_decoders|egress|all] [SECONDS]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Crashes land in fuzz/artifacts/TARGET/; reproduce one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p artifacts/component_upload artifacts/api_json artifacts/data_decoders artifacts/egress
TARGET=${1:-all}
SECONDS_EACH=${2:-600}
ROOT=..

seed() {
    local target=$1 dir=corpus/$1
    mkdir -p "$dir"
    case $target in
    component_upload)
        cp "$ROOT"/target/wasm32-wasip2/guest/*.wasm "$dir"/ 2>/dev/null || true
        ;;
    api_json)
        printf '\x00{"module": "%064d", "memory": 1048576, "config": {"k": "v"}, "gpu": "preferred", "public": true}' 0 >"$dir/deploy"
        printf '\x01{"function": "f", "input": "s3://b/in/*.jsonl", "output": "s3://b/out", "reduce": "r", "reduce_partitions": 4}' >"$dir/job"
        printf '\x02{"tenant": "acme", "role": "invoke-only"}' >"$dir/token"
        printf '\x09{"rows": [{"amount": 1.5, "n": 3, "s": "x", "b": true, "z": null}, {"amount": 2}]}' >"$dir/rows"
        printf '\x0bBearer wgt_0123456789abcdef' >"$dir/bearer"
        printf '\x0cfall-detect' >"$dir/name"
        ;;
    data_decoders)
        printf '\x00id,amount,foreign\n1,2.5,true\n2,,false\n3,"a,b",1\n' >"$dir/csv"
        printf '\x01{"id": 1, "x": 2.5}\n{"id": 2, "x": null, "s": "t"}\n' >"$dir/jsonl"
        printf '\x03grid wasm data\nscore model batch\n' >"$dir/text"
        # A real Parquet file: the logreg example's scores of a small CSV.
        local scratch
        scratch=$(mktemp -d)
        printf 'id,amount\n1,2.5\n2,7.0\n3,1.25\n' >"$scratch/in.csv"
        if "$ROOT"/target/debug/wasmgrid run "$ROOT"/target/wasm32-wasip2/guest/logreg.wasm --input "$scratch/in.csv" \
            --output "$scratch/out" --format parquet --quiet \
            -c 'model={"features": ["amount"], "weights": [0.1], "bias": 0}' 2>/dev/null; then
            { printf '\x02'; cat "$scratch"/out/*.parquet; } >"$dir/parquet"
        fi
        rm -rf "$scratch"
        ;;
    egress)
        for u in http://127.1/ http://2130706433/ http://0x7f.0.0.1/ http://0177.0.0.1/ 'http://[::ffff:7f00:1]/' \
            'http://[64:ff9b::a9fe:a9fe]/' 'http://[2002:a00:1::]/' 10.0.0.0/8 '*.example.com' 93.184.215.14; do
            printf '%s' "$u" >"$dir/$(printf '%s' "$u" | sha256sum | cut -c1-12)"
        done
        ;;
    esac
}

run() {
    seed "$1"
    # Built once with `fuzz build -O` (which `fuzz run` would redo with
    # other flags), then the fuzzer runs straight from the binary.
    cargo +nightly fuzz build -O "$1"
    echo "== $1 for ${SECONDS_EACH}s"
    target/x86_64-unknown-linux-gnu/release/"$1" "corpus/$1" -artifact_prefix="artifacts/$1/" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1
}

if [ "$TARGET" = all ]; then
    for t in component_upload api_json data_decoders egress; do run "$t"; done
else
    run "$TARGET"
fi

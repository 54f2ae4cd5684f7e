#!/usr/bin/env bash
# Laptop demo: builds wasmgrid and the example guests, generates a little
# data, and runs two jobs with `wasmgrid run` (no grid needed):
#   1. word count (a mapper plus a reducer) over 8 text files;
#   2. a logistic-regression scorer over a CSV file, written as CSV.
# Everything it writes goes under .wasmgrid/demo.
#
# WASMGRID=path/to/wasmgrid and GUESTS=dir/with/wasm skip the builds.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${WASMGRID:-}" ]; then
    cargo build --release --quiet
    WASMGRID=target/release/wasmgrid
fi
if [ -z "${GUESTS:-}" ]; then
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
    cargo build --quiet --profile guest --target wasm32-wasip2 \
        -p wordcount-map -p wordcount-reduce -p logreg -p fall-detect
    GUESTS=target/wasm32-wasip2/guest
fi
DEMO=${DEMO_DIR:-.wasmgrid/demo}
mkdir -p "$DEMO/text"

# 8 files of words drawn from a skewed vocabulary.
for f in 0 1 2 3 4 5 6 7; do
    awk -v seed="$f" 'BEGIN { srand(seed + 1); split("grid wasm data score model batch node tenant job key value row", w, " ");
        for (l = 0; l < 2000; l++) { line = ""; for (i = 0; i < 10; i++) { r = rand(); line = line w[int(r * r * 12) + 1] " " } print line } }' \
        > "$DEMO/text/part-$f.txt"
done
# Transactions to score.
awk 'BEGIN { srand(7); print "id,amount,age_days,foreign";
    for (i = 0; i < 1000; i++) printf "%d,%.2f,%d,%d\n", i, rand() * 500, int(rand() * 3000), rand() < 0.2 }' \
    > "$DEMO/transactions.csv"

echo "== word count: 8 files -> $DEMO/wordcount"
"$WASMGRID" run "$GUESTS/wordcount_map.wasm" --reduce "$GUESTS/wordcount_reduce.wasm" \
    --input "$DEMO/text" --output "$DEMO/wordcount" --overwrite
cat "$DEMO"/wordcount/part-r-*.jsonl | sed 's/.*"word":"\([^"]*\)","count":\([0-9]*\).*/\2 \1/' | sort -rn | head -5

echo "== fraud score: $DEMO/transactions.csv -> $DEMO/scores (CSV)"
"$WASMGRID" run "$GUESTS/logreg.wasm" --input "$DEMO/transactions.csv" --output "$DEMO/scores" --format csv \
    --config 'model={"features": ["amount", "age_days", "foreign"], "weights": [0.004, -0.001, 1.5], "bias": -1.0}' \
    --overwrite
head -4 "$DEMO/scores/part-00000.csv"

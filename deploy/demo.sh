#!/usr/bin/env bash
# Laptop demo: builds wasmgrid and the example guests, then
#   1. starts `wasmgrid dev` (a control plane and a node in one process, on
#      the embedded store under .wasmgrid), deploys the logistic-regression
#      scorer, calls it over HTTP, deploys a second version and rolls back;
#   2. runs two batch jobs with `wasmgrid run` over generated data (and the
#      word count again as a job on the grid, `wasmgrid job submit`): a word
#      count (mapper plus reducer) over 8 text files and the same scorer
#      over a CSV file.
# Everything it writes goes under .wasmgrid. The dev grid is stopped at the
# end; start your own with `wasmgrid dev`.
#
# WASMGRID=path/to/wasmgrid and GUESTS=dir/with/wasm skip the builds;
# DEMO_DIR, DEV_DIR, DEV_LISTEN and DEV_GATEWAY move the data and ports.
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
DEV=${DEV_DIR:-.wasmgrid}
mkdir -p "$DEMO/text" "$DEV"

echo "== wasmgrid dev: a control plane and a node in one process"
"$WASMGRID" dev --data "$DEV" --listen "${DEV_LISTEN:-127.0.0.1:7400}" --gateway "${DEV_GATEWAY:-127.0.0.1:7401}" \
    >"$DEMO/dev.out" 2>"$DEMO/dev.log" &
DEV_PID=$!
trap 'kill $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q '^gateway:' "$DEMO/dev.out" 2>/dev/null && break
    kill -0 $DEV_PID 2>/dev/null || { cat "$DEMO/dev.log"; exit 1; }
    sleep 0.1
done
cat "$DEMO/dev.out"
WASMGRID_URL=$(sed -n 's/^control plane: *//p' "$DEMO/dev.out")
# The admin token `wasmgrid dev` made at its first start.
WASMGRID_TOKEN_FILE="$DEV/admin-token"
export WASMGRID_URL WASMGRID_TOKEN_FILE

MODEL_V1='model={"features": ["amount", "foreign"], "weights": [0.01, 2.0], "bias": -3.0}'
MODEL_V2='model={"features": ["amount", "foreign"], "weights": [0.02, 1.0], "bias": -4.0}'
"$WASMGRID" deploy fraud "$GUESTS/logreg.wasm" --config "$MODEL_V1" --timeout 200ms
ROWS='{"rows": [{"amount": 420.0, "foreign": 1}, {"amount": 12.5, "foreign": 0}]}'
# The node compiles the new function before it serves it: wait for that.
for _ in $(seq 100); do
    "$WASMGRID" invoke fraud --data "$ROWS" >"$DEMO/invoke.out" 2>/dev/null && break
    sleep 0.1
done
echo "-- invoke fraud (version 1):"
cat "$DEMO/invoke.out"
"$WASMGRID" deploy fraud "$GUESTS/logreg.wasm" --config "$MODEL_V2" --timeout 200ms
for _ in $(seq 100); do
    "$WASMGRID" invoke fraud --data "$ROWS" --json | grep -q '"version": 2' && break
    sleep 0.1
done
echo "-- invoke fraud (version 2):"
"$WASMGRID" invoke fraud --data "$ROWS"
"$WASMGRID" functions versions fraud
"$WASMGRID" functions rollback fraud 1
"$WASMGRID" nodes ls

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

echo "== the same word count as a job on the grid: 64 KiB partitions, 2 reduce partitions"
"$WASMGRID" deploy wc-map "$GUESTS/wordcount_map.wasm"
"$WASMGRID" deploy wc-sum "$GUESTS/wordcount_reduce.wasm"
"$WASMGRID" job submit wc-map --reduce wc-sum --input "$DEMO/text" --output "$DEMO/wordcount-grid" \
    --partition-size 64KiB --overwrite --wait
if cmp -s <(cat "$DEMO"/wordcount/part-r-*.jsonl | sort) <(cat "$DEMO"/wordcount-grid/part-r-*.jsonl | sort); then
    echo "the grid job counted exactly what wasmgrid run counted"
else
    echo "the grid job's counts differ from wasmgrid run's" >&2
    exit 1
fi

echo "== fraud score: $DEMO/transactions.csv -> $DEMO/scores (CSV)"
"$WASMGRID" run "$GUESTS/logreg.wasm" --input "$DEMO/transactions.csv" --output "$DEMO/scores" --format csv \
    --config 'model={"features": ["amount", "age_days", "foreign"], "weights": [0.004, -0.001, 1.5], "bias": -1.0}' \
    --overwrite
head -4 "$DEMO/scores/part-00000.csv"

#!/usr/bin/env bash
# A local grid on loopback: a 3-replica control plane and 2 nodes, each its
# own process, data and logs under $CLUSTER_DIR (default .wasmgrid/cluster).
#
#   deploy/cluster.sh start     start what is not running; wait for a leader
#   deploy/cluster.sh status    processes, then `wasmgrid cluster status`
#   deploy/cluster.sh stop      SIGTERM everything, wait for it to exit
#
# Replicas listen on 127.0.0.1:7410-7412, node gateways on 7420-7421
# (CLUSTER_PORT_BASE=7410 moves them all). WASMGRID=path/to/wasmgrid skips
# the build. Point the CLI at it with:
#   export WASMGRID_URL=http://127.0.0.1:7410,http://127.0.0.1:7411,http://127.0.0.1:7412
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${CLUSTER_DIR:-.wasmgrid/cluster}
BASE=${CLUSTER_PORT_BASE:-7410}
REPLICAS=(1 2 3)
NODES=(1 2)
replica_addr() { echo "127.0.0.1:$((BASE + $1 - 1))"; }
node_addr() { echo "127.0.0.1:$((BASE + 10 + $1 - 1))"; }
PEERS=$(for i in "${REPLICAS[@]}"; do printf '%s=%s,' "$i" "$(replica_addr "$i")"; done)
PEERS=${PEERS%,}
URLS=$(for i in "${REPLICAS[@]}"; do printf 'http://%s,' "$(replica_addr "$i")"; done)
URLS=${URLS%,}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    if [ -z "${WASMGRID:-}" ]; then
        cargo build --release --quiet
        WASMGRID=target/release/wasmgrid
    fi
    mkdir -p "$DIR"
    # One admin token for the whole cluster, made once, readable by us only.
    if [ ! -f "$DIR/admin-token" ]; then
        (umask 077 && "$WASMGRID" tokens generate >"$DIR/admin-token")
    fi
    export WASMGRID_TOKEN_FILE="$DIR/admin-token"
    for i in "${REPLICAS[@]}"; do
        pid="$DIR/replica-$i.pid"
        running "$pid" && continue
        "$WASMGRID" control-plane --id "$i" --data "$DIR/replica-$i" --listen "$(replica_addr "$i")" \
            --peers "$PEERS" --admin-token-file "$DIR/admin-token" >>"$DIR/replica-$i.log" 2>&1 &
        echo $! >"$pid"
        echo "replica $i: http://$(replica_addr "$i") (pid $!, log $DIR/replica-$i.log)"
    done
    for _ in $(seq 100); do
        WASMGRID_URL=$URLS "$WASMGRID" cluster status --json 2>/dev/null | grep -q '"leader": [0-9]' && break
        sleep 0.1
    done
    # Nodes get a node token: enough to fetch routes and modules and run tasks.
    if [ ! -s "$DIR/node-token" ]; then
        (umask 077 && WASMGRID_URL=$URLS "$WASMGRID" tokens create --node >"$DIR/node-token")
    fi
    for i in "${NODES[@]}"; do
        pid="$DIR/node-$i.pid"
        running "$pid" && continue
        "$WASMGRID" node --control-plane "$URLS" --data "$DIR/node-$i" --listen "$(node_addr "$i")" \
            --id "node-$i" --token-file "$DIR/node-token" >>"$DIR/node-$i.log" 2>&1 &
        echo $! >"$pid"
        echo "node $i:    http://$(node_addr "$i") (pid $!, log $DIR/node-$i.log)"
    done
    echo "export WASMGRID_URL=$URLS WASMGRID_TOKEN_FILE=$DIR/admin-token"
}

stop() {
    for pid in "$DIR"/node-*.pid "$DIR"/replica-*.pid; do
        [ -f "$pid" ] || continue
        if running "$pid"; then
            kill -TERM "$(cat "$pid")"
            for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
            running "$pid" && kill -KILL "$(cat "$pid")"
        fi
        rm -f "$pid"
    done
    echo "stopped"
}

status() {
    for pid in "$DIR"/replica-*.pid "$DIR"/node-*.pid; do
        [ -f "$pid" ] || continue
        name=$(basename "$pid" .pid)
        if running "$pid"; then echo "$name: running (pid $(cat "$pid"))"; else echo "$name: stopped"; fi
    done
    WASMGRID_URL=$URLS WASMGRID_TOKEN_FILE="$DIR/admin-token" "${WASMGRID:-target/release/wasmgrid}" cluster status || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Runs the benchmark suite on this machine: Switchboard (embedded broker and
# RabbitMQ), the raw baseline and Socket.IO, one scenario at a time, and
# writes JSON results plus a summary and plot.
#
#   bench/run.sh            full run, release build; results in bench/results/full/
#   bench/run.sh --smoke    every scenario with tiny numbers (debug build), so
#                           CI keeps the tool working; timings are not judged
#
# Needs: cargo; RabbitMQ on 127.0.0.1:5672 for the unicast scenarios (skipped
# with a note if absent); node and npm for Socket.IO (skipped if absent).
#
# The servers listen on four ports from BENCH_PORT_BASE (default 18080): +1
# Switchboard, +2 Switchboard on RabbitMQ, +3 raw baseline, +4 Socket.IO. A
# port that is already taken stops the run, so it never measures a stranger.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
[ "${1:-}" = "--smoke" ] && mode=smoke
out="bench/results/$mode"
mkdir -p "$out"
rm -f "$out"/*.json

if [ "$mode" = smoke ]; then
    cargo build -q -p switchboard-app -p switchboard-bench
    bin="${CARGO_TARGET_DIR:-target}/debug"
    n_idle=200; n_fan=100; rates=10,50; dur=1; uni_rates=50; n_uni=50; n_rr=10; hold=1
else
    cargo build -q --release -p switchboard-app -p switchboard-bench
    bin="${CARGO_TARGET_DIR:-target}/release"
    n_idle=10000; n_fan=2000; rates=10,50,100,200,400,600,800,1000,1200,1600; dur=5
    uni_rates=1000,2000,3000,5000,10000; n_uni=1000; n_rr=100; hold=5
fi

# A benchmark measures the gateway, not its abuse limits: per-session rates
# and the connection caps are off.
unlimited="SWITCHBOARD_LIMITS__FRAMES_PER_SEC=0 SWITCHBOARD_LIMITS__BYTES_PER_SEC=0"
unlimited="$unlimited SWITCHBOARD_LIMITS__MAX_CONNECTIONS=0 SWITCHBOARD_LIMITS__MAX_SESSIONS_PER_USER=0"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Waits (bounded) until a TCP port accepts connections.
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: nothing listens on port $1" >&2
    return 1
}

base=${BENCH_PORT_BASE:-18080}
port_sb=$((base + 1)); port_amqp=$((base + 2)); port_raw=$((base + 3)); port_sio=$((base + 4))

# Refuses a port that something already listens on.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "bench: port $1 is already in use; set BENCH_PORT_BASE" >&2
        exit 1
    fi
}
for p in $port_sb $port_amqp $port_raw $port_sio; do port_free "$p"; done

stop_last() { kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }

# The smoke run fails when a scenario delivers nothing (timings are not judged).
check=false
[ "$mode" = smoke ] && check=true
loadgen() { "$bin/loadgen" "$@" --require-deliveries $check; }

# --- Switchboard on the embedded broker -------------------------------------
env SWITCHBOARD_SERVER__BIND=127.0.0.1:$port_sb SWITCHBOARD_LOG__FILTER=warn,lapin=off \
    SWITCHBOARD_AUTH__SECRET=bench-secret-0123456789abcdef $unlimited "$bin/switchboard" &
pids+=($!); sb=$!; wait_port $port_sb
url=http://127.0.0.1:$port_sb
loadgen --target switchboard --url $url --server-pid $sb --scenario idle \
    --connections $n_idle --hold-secs $hold --json "$out/idle-switchboard.json"
loadgen --target switchboard --url $url --server-pid $sb --scenario fanout \
    --connections $n_fan --duration $dur --rates $rates --json "$out/fanout-switchboard.json"
loadgen --target switchboard --url $url --scenario reqreply --connections $n_rr \
    --duration $dur --json "$out/reqreply-switchboard.json"
stop_last

# --- Raw baseline --------------------------------------------------------------
"$bin/raw-baseline" 127.0.0.1:$port_raw & pids+=($!); raw=$!; wait_port $port_raw
loadgen --target raw --url ws://127.0.0.1:$port_raw --server-pid $raw --scenario idle \
    --connections $n_idle --hold-secs $hold --json "$out/idle-raw.json"
loadgen --target raw --url ws://127.0.0.1:$port_raw --server-pid $raw --scenario fanout \
    --connections $n_fan --duration $dur --rates $rates --json "$out/fanout-raw.json"
stop_last

# --- Socket.IO -------------------------------------------------------------------
if command -v node >/dev/null && command -v npm >/dev/null \
    && (cd bench/socketio && npm install --silent --no-audit --no-fund >/dev/null 2>&1); then
    node bench/socketio/server.js $port_sio & pids+=($!); sio=$!; wait_port $port_sio
    sio_url=ws://127.0.0.1:$port_sio
    loadgen --target socketio --url $sio_url --server-pid $sio --scenario idle \
        --connections $n_idle --hold-secs $hold --json "$out/idle-socketio.json"
    loadgen --target socketio --url $sio_url --server-pid $sio --scenario fanout \
        --connections $n_fan --duration $dur --rates $rates --json "$out/fanout-socketio.json"
    loadgen --target socketio --url $sio_url --scenario reqreply \
        --connections $n_rr --duration $dur --json "$out/reqreply-socketio.json"
    stop_last
else
    echo "bench: node/npm or the socket.io package unavailable; Socket.IO skipped"
fi

# --- Switchboard on RabbitMQ -------------------------------------------------
if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    env SWITCHBOARD_SERVER__BIND=127.0.0.1:$port_amqp SWITCHBOARD_LOG__FILTER=warn,lapin=off \
        SWITCHBOARD_AUTH__SECRET=bench-secret-0123456789abcdef $unlimited \
        SWITCHBOARD_AUTH__ALLOW_OPEN=true \
        SWITCHBOARD_BROKER__URL=amqp://guest:guest@127.0.0.1:5672/%2f "$bin/switchboard" &
    pids+=($!); sba=$!; wait_port $port_amqp
    url=http://127.0.0.1:$port_amqp
    loadgen --target switchboard --url $url --server-pid $sba --scenario unicast \
        --connections $n_uni --duration $dur --rates $uni_rates \
        --json "$out/unicast-switchboard.json"
    loadgen --target switchboard --url $url --server-pid $sba --scenario reliable \
        --connections $n_uni --duration $dur --rates $uni_rates \
        --json "$out/reliable-switchboard.json"
    stop_last
    loadgen --delete-inboxes $n_uni
else
    echo "bench: RabbitMQ not reachable on 127.0.0.1:5672; unicast scenarios skipped"
fi

"$bin/loadgen" --report "$out"

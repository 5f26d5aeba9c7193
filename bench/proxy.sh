#!/usr/bin/env bash
# The backend proxy's overhead on loopback, medians of RUNS runs:
#  1. Centrifugo connects per second without and with the connect proxy
#     (`switchboard bench conns --n 3000 --ramp max --hold 1 --protocol centrifugo`);
#  2. rpc round trips per second through the rpc proxy (bench/proxy_rpc.mjs).
# The backend is Node `http` (bench/proxy_rpc.mjs backend). Usage:
#   SWITCHBOARD_BIN=target/release/switchboard RUNS=3 bench/proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
RUNS=${RUNS:-3}
export NODE_PATH=$PWD/tests/interop/node_modules
BACKEND_PORT=${BACKEND_PORT:-19731}
PORT_PLAIN=${PORT_PLAIN:-19732}
PORT_PROXY=${PORT_PROXY:-19733}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

node bench/proxy_rpc.mjs backend "$BACKEND_PORT" >/dev/null & pids+=($!)
cfg=$(mktemp -d)
cat >"$cfg/sb.toml" <<TOML
allow_anonymous = true
[channel.default]
allow_subscribe_for_anonymous = true
TOML
"$BIN" serve --config "$cfg/sb.toml" --listen 127.0.0.1:$PORT_PLAIN --log-level error >/dev/null 2>&1 & pids+=($!)
plain_pid=$!
"$BIN" serve --config "$cfg/sb.toml" --listen 127.0.0.1:$PORT_PROXY --log-level error \
  --proxy-connect-endpoint "http://127.0.0.1:$BACKEND_PORT/proxy/connect" \
  --proxy-rpc-endpoint "http://127.0.0.1:$BACKEND_PORT/proxy/rpc" \
  --proxy-http-headers Cookie >/dev/null 2>&1 & pids+=($!)
proxy_pid=$!
sleep 1

rate() { "$BIN" bench conns --n 3000 --ramp max --hold 1 --protocol centrifugo --json \
  --url "ws://127.0.0.1:$1/bench" --server-pid "$2" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"] == 0 and d["established"] == d["n"], d; print(d["handshakes_per_sec"])'; }
median() { python3 -c 'import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:])))' "$@"; }

plain=(); proxied=(); rpcs=()
for i in $(seq "$RUNS"); do
  plain+=("$(rate $PORT_PLAIN $plain_pid)")
  proxied+=("$(rate $PORT_PROXY $proxy_pid)")
done
for i in $(seq "$RUNS"); do
  rpcs+=("$(node bench/proxy_rpc.mjs client "ws://127.0.0.1:$PORT_PROXY/connection/websocket" 8 16 5 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["errors"] == 0, d; print(d["rpc_per_sec"])')")
done
echo "connects/s without proxy: ${plain[*]} (median $(median "${plain[@]}"))"
echo "connects/s with connect proxy: ${proxied[*]} (median $(median "${proxied[@]}"))"
echo "rpc round trips/s via rpc proxy (8 conns x 16 in flight): ${rpcs[*]} (median $(median "${rpcs[@]}"))"
rm -rf "$cfg"

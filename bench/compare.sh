#!/usr/bin/env bash
# Side-by-side comparison of Switchboard with a plain Node.js `ws` server on this machine, and
# optionally with a uWebSockets (C++) server.
#
#   bench/compare.sh [--quick] [--rounds N] [--out FILE] [--keep DIR] [--uws BIN]
#
# For every scenario the servers run alternately (ws, [uws,] switchboard, ws, ...), each freshly
# started, the server pinned to CPU 0 and the load generator (`switchboard bench`) to CPU 1. The
# load average is recorded before each run. Medians, ranges and the ratios switchboard/ws (and
# switchboard/uws) are written to FILE (default docs/benchmarks.md) between the markers
# `<!-- compare:begin -->` and `<!-- compare:end -->`; the rest of the file is kept.
#
# --uws BIN (or the environment variable UWS_BIN): a uWebSockets peer server binary taking its
# port as the first argument and serving `/echo` (echo) and `/broadcast` (one room, every message
# to every member, the sender included) on 127.0.0.1, e.g. the one built by
# /work/shared/peers/uws/build.sh. Without it, or when the file is not executable, uWS is skipped.
# The uWS peer runs without compression, so it sits out the deflate scenario (conns_active).
#
# --quick: one round with short durations and fewer connections (a smoke run, ~1.5 minutes with
# two servers). A full run takes about 8 minutes with two servers, 12 with three.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=0
ROUNDS=3
OUT=docs/benchmarks.md
KEEP=""
UWS="${UWS_BIN:-}"
ORIG_ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep) KEEP="$2"; shift ;;
    --uws) UWS="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release/switchboard"
PEER_DIR="$ROOT/bench/ws-peer"

log() { echo "[compare] $*" >&2; }

# --- prerequisites -----------------------------------------------------------------------
command -v node >/dev/null || { echo "node is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
if [ ! -d "$PEER_DIR/node_modules/ws" ]; then
  log "installing the Node ws peer"
  npm install --prefix "$PEER_DIR" --no-audit --no-fund >&2
fi
SERVERS=(ws switchboard)
if [ -n "$UWS" ]; then
  if [ -x "$UWS" ]; then
    SERVERS=(ws uws switchboard)
  else
    log "uWS binary '$UWS' not found or not executable: skipping uWS"
    UWS=""
  fi
fi
log "building switchboard (release)"
cargo build --release -p switchboard --bin switchboard >&2

# Both servers (and the generator) need more than the usual 1024 descriptors for `conns`.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIN_SRV=()
PIN_GEN=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_SRV=(taskset -c 0)
  PIN_GEN=(taskset -c 1)
else
  log "taskset unavailable or fewer than 2 CPUs: running unpinned"
fi

WORK=$(mktemp -d)
trap 'stop_server; [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/; rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# --- servers -----------------------------------------------------------------------------
SRV_PID=""
SRV_PORT=""

# A free TCP port on 127.0.0.1 for servers that cannot pick their own (uWS).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server KIND MODE [DEFLATE]: KIND = ws | uws | switchboard; MODE = echo | rooms (ws only;
# uws serves both on its own paths); DEFLATE = false (default) | true: whether the server
# negotiates permessage-deflate.
start_server() {
  local kind=$1 mode=$2 deflate=${3:-false} out="$WORK/server.out" err="$WORK/server.err"
  : >"$out"
  if [ "$kind" = uws ]; then
    "${PIN_SRV[@]}" "$UWS" "$(free_port)" >"$out" 2>"$err" &
  elif [ "$kind" = ws ]; then
    "${PIN_SRV[@]}" node "$PEER_DIR/server.mjs" --port 0 --mode "$mode" --deflate "$deflate" \
      >"$out" 2>"$err" &
  else
    "${PIN_SRV[@]}" "$BIN" serve --listen 127.0.0.1:0 --deflate "$deflate" --log-level warn \
      >"$out" 2>"$err" &
  fi
  SRV_PID=$!
  local i
  for i in $(seq 1 200); do
    SRV_PORT=$(sed -n -E 's/^(listening on |uws listening on 127\.0\.0\.1:|Switchboard listening on http:\/\/127\.0\.0\.1:)([0-9]+).*/\2/p' "$out" | head -1)
    [ -n "$SRV_PORT" ] && return 0
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.05
  done
  log "server $kind did not start:"; cat "$err" >&2
  return 1
}

stop_server() {
  [ -n "$SRV_PID" ] || return 0
  kill -TERM "$SRV_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
}

# --- scenarios ---------------------------------------------------------------------------
# id | ws mode | room path | bench arguments [| server deflate, default false]
# conns_active is what browsers cause: deflate offered and agreed, one message per connection
# (sent compressed, 10 connections per room), then idle.
if [ "$QUICK" = 1 ]; then
  T="--secs 1.5 --warmup 0.5"
  SCENARIOS=(
    "echo64|echo|/bench|echo --conns 100 --size 64 $T"
    "echo16k|echo|/bench|echo --conns 50 --size 16384 $T"
    "fanout_max|rooms|/fanout|fanout --subs 500 --pubs 10 --rate max --window 8 --size 64 $T --drain 2"
    "fanout_200|rooms|/fanout|fanout --subs 1000 --pubs 1 --rate 200 --size 64 $T --drain 2"
    "conns|rooms|/idle|conns --n 2000 --ramp max --hold 2 --src-ips 127.0.0.1-127.0.0.20"
    "conns_active|rooms|/idle|conns --n 2000 --ramp max --hold 2 --src-ips 127.0.0.1-127.0.0.20 --rooms 200 --deflate --send-one|true"
  )
else
  T="--secs 5 --warmup 1"
  SCENARIOS=(
    "echo64|echo|/bench|echo --conns 100 --size 64 $T"
    "echo16k|echo|/bench|echo --conns 50 --size 16384 $T"
    "fanout_max|rooms|/fanout|fanout --subs 2000 --pubs 10 --rate max --window 8 --size 64 $T --drain 3"
    "fanout_200|rooms|/fanout|fanout --subs 1000 --pubs 1 --rate 200 --size 64 $T --drain 3"
    "conns|rooms|/idle|conns --n 10000 --ramp max --hold 4 --src-ips 127.0.0.1-127.0.0.20"
    "conns_active|rooms|/idle|conns --n 10000 --ramp max --hold 4 --src-ips 127.0.0.1-127.0.0.20 --rooms 1000 --deflate --send-one|true"
  )
fi

START_TS=$(date +%s)
for spec in "${SCENARIOS[@]}"; do
  IFS='|' read -r id mode path args deflate <<<"$spec"
  for round in $(seq 1 "$ROUNDS"); do
    for kind in "${SERVERS[@]}"; do
      # The uWS peer has no compression and one room: it sits out the deflate scenario.
      [ "$kind" = uws ] && [ "${deflate:-false}" = true ] && continue
      load=$(cut -d' ' -f1 /proc/loadavg)
      if ! start_server "$kind" "$mode" "${deflate:-false}"; then
        python3 -c 'import json,sys; print(json.dumps({"scenario":sys.argv[1],"server":sys.argv[2],"round":int(sys.argv[3]),"load1":float(sys.argv[4]),"error":"server did not start"}))' \
          "$id" "$kind" "$round" "$load" >>"$RESULTS"
        stop_server
        continue
      fi
      sleep 0.4
      url="ws://127.0.0.1:$SRV_PORT$path"
      if [ "$kind" = uws ]; then
        # uWS peer paths: /echo, and /broadcast for the one room (the query is ignored there,
        # so fan-out publishers also receive their own messages: 10 more recipients, uncounted).
        if [ "$mode" = echo ]; then url="ws://127.0.0.1:$SRV_PORT/echo"; else url="ws://127.0.0.1:$SRV_PORT/broadcast"; fi
      fi
      extra=""
      # Echo has one fixed path there, not a room per connection.
      [ "$kind" = uws ] && [ "$mode" = echo ] && extra="--one-path"

      log "$id round $round: $kind (load $load)"
      # shellcheck disable=SC2086 # $args is a list of flags
      if out=$(timeout 120 "${PIN_GEN[@]}" "$BIN" bench $args $extra --url "$url" --server-pid "$SRV_PID" --json 2>"$WORK/bench.err"); then
        status=ok
      else
        status=failed
      fi
      stop_server
      python3 - "$id" "$kind" "$round" "$load" "$status" "$out" "$WORK/bench.err" >>"$RESULTS" <<'EOF'
import json, sys
sid, kind, rnd, load, status, out, errfile = sys.argv[1:8]
rec = {"scenario": sid, "server": kind, "round": int(rnd), "load1": float(load)}
try:
    rec["result"] = json.loads(out.strip().splitlines()[-1])
except Exception:
    rec["result"] = None
if status != "ok" or rec["result"] is None:
    err = open(errfile, errors="replace").read().strip().splitlines()
    first = (rec["result"] or {}).get("first_error") if rec["result"] else None
    rec["error"] = first or (err[-1] if err else "bench failed")
print(json.dumps(rec))
EOF
      # Let TIME_WAIT sockets and the previous server's memory go before the next run.
      sleep 0.5
    done
  done
done
ELAPSED=$(( $(date +%s) - START_TS ))
log "all runs done in ${ELAPSED}s"

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
COMMIT=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
python3 "$ROOT/bench/report.py" \
  --results "$RESULTS" \
  --out "$OUT" \
  --date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --kernel "$(uname -r)" \
  --cpu "${CPU_MODEL:-unknown} ($(nproc) CPUs)" \
  --node "$(node --version)" \
  --command "bench/compare.sh${ORIG_ARGS:+ $ORIG_ARGS}" \
  --rounds "$ROUNDS" \
  --elapsed "$ELAPSED" \
  --pinned "$([ ${#PIN_SRV[@]} -gt 0 ] && echo yes || echo no)" \
  --servers "${SERVERS[*]}" \
  --uws-commits "$( [ -n "$UWS" ] && [ -f "$(dirname "$UWS")/COMMITS" ] && tr '\n' ' ' <"$(dirname "$UWS")/COMMITS" || echo '')" \
  --commit "$COMMIT"
log "wrote $OUT"

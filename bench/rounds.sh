# Sourced by bench/slow.sh and bench/flood.sh, which alternate runs of one `switchboard
# bench` scenario against a freshly started server per run: their options (`--rounds N`,
# `--out FILE`, `--keep DIR`), the release build (skipped when SWITCHBOARD_BIN names a binary
# built from this tree), CPU pinning (server on CPU 0, generator on CPU 1), a work directory with
# RESULTS (one JSON line per run), and one server at a time on a free port.
# Set BENCH_NAME (for the log) and HELP_LINES (the `sed` range of the caller's usage) first.

ROUNDS=3
OUT=""
KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    -h | --help) sed -n "${HELP_LINES}p" "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/docs/benchmarks.md}"

log() { echo "[$BENCH_NAME] $*" >&2; }

if [ -n "${SWITCHBOARD_BIN:-}" ]; then
  BIN="$SWITCHBOARD_BIN"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  BIN="$CARGO_TARGET_DIR/release/switchboard"
  log "building switchboard (release)"
  cargo build --release -p switchboard --bin switchboard >&2
fi

PIN_SRV=()
PIN_GEN=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_SRV=(taskset -c 0)
  PIN_GEN=(taskset -c 1)
fi

WORK=$(mktemp -d)
SRV_PID=""
stop_server() {
  [ -n "$SRV_PID" ] || return 0
  kill -TERM "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
}
trap 'stop_server; [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/; rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# start_server ARGS...: `switchboard serve ARGS` on a free loopback port; sets SRV_PID and
# SRV_PORT.
start_server() {
  local out="$WORK/server.out"
  : >"$out"
  "${PIN_SRV[@]}" "$BIN" serve --listen 127.0.0.1:0 "$@" >"$out" 2>"$WORK/server.err" &
  SRV_PID=$!
  local i
  for i in $(seq 1 200); do
    SRV_PORT=$(sed -n -E 's/^Switchboard listening on http:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' "$out" | head -1)
    [ -n "$SRV_PORT" ] && return 0
    sleep 0.05
  done
  log "server did not start"; cat "$WORK/server.err" >&2
  return 1
}

#!/usr/bin/env bash
# A/B comparison of server builds (and optionally the uWebSockets peer) on one scenario, for
# measuring one change at a time:
#
#   bench/ab.sh ROUNDS SCENARIO LABEL=BINARY [LABEL=BINARY ...]
#
# SCENARIO: echo64 | echo16k | fan200 | fanmax (the scenarios of bench/compare.sh, shorter).
# BINARY: a `switchboard` binary, or `uws` for the uWebSockets peer at $UWS_BIN
# (default /tmp/wsbench-uws/wsb-uws-server). The load generator is $GEN_BIN (default: the first
# binary given), the same for every run, so only the server differs. The runs alternate
# (A, B, A, B, ...), each server freshly started, the server pinned to CPU 0 and the generator to
# CPU 1. Prints one JSON line per run, then the medians (and ranges) per label of the server CPU
# per operation, latency p99, and the load average before the run.
set -u
ROUNDS=$1; shift
SCEN=$1; shift
UWS=${UWS_BIN:-/tmp/wsbench-uws/wsb-uws-server}
first=${1#*=}
GEN=${GEN_BIN:-$first}
case $SCEN in
  echo64) ARGS="echo --conns 100 --size 64 --secs 3 --warmup 1"; P=/bench; UP=/echo; X="--one-path" ;;
  echo16k) ARGS="echo --conns 50 --size 16384 --secs 3 --warmup 1"; P=/bench; UP=/echo; X="--one-path" ;;
  fan200) ARGS="fanout --subs 1000 --pubs 1 --rate 200 --size 64 --secs 4 --warmup 1 --drain 2"; P=/fanout; UP=/broadcast; X="" ;;
  fanmax) ARGS="fanout --subs 2000 --pubs 10 --rate max --window 8 --size 64 --secs 4 --warmup 1 --drain 2"; P=/fanout; UP=/broadcast; X="" ;;
  *) echo "unknown scenario: $SCEN" >&2; exit 2 ;;
esac
ulimit -n "$(ulimit -Hn)" 2>/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    if [ "$bin" = uws ]; then
      port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
      taskset -c 0 "$UWS" "$port" >"$WORK/srv.out" 2>&1 & pid=$!
      sleep 0.5; url="ws://127.0.0.1:$port$UP"; extra="$X"
    else
      taskset -c 0 "$bin" serve --listen 127.0.0.1:0 --deflate false --log-level warn >"$WORK/srv.out" 2>&1 & pid=$!
      port=""
      for _ in $(seq 50); do
        port=$(sed -n -E 's/^.*listening on http:\/\/127\.0\.0\.1:([0-9]+).*/\1/p' "$WORK/srv.out" | head -1)
        [ -n "$port" ] && break
        sleep 0.1
      done
      sleep 0.3; url="ws://127.0.0.1:$port$P"; extra=""
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    # shellcheck disable=SC2086 # $ARGS is a list of flags
    res=$(timeout 120 taskset -c 1 "$GEN" bench $ARGS $extra --url "$url" --server-pid "$pid" --json 2>/dev/null | tail -1)
    kill "$pid"; wait "$pid" 2>/dev/null
    python3 - "$SCEN" "$label" "$r" "$load" "$res" <<'PY' | tee -a "$WORK/rows"
import json, sys
s, l, r, load, res = sys.argv[1:]
try:
    d = json.loads(res)
except Exception:
    print(json.dumps({"scen": s, "label": l, "round": int(r), "error": res[:200]})); sys.exit()
keep = {k: v for k, v in d.items() if "cpu_us" in k or "p99" in k or k in ("lost", "duplicates", "reordered")}
keep.update(scen=s, label=l, round=int(r), load=float(load))
print(json.dumps(keep))
PY
    sleep 0.5
  done
done
python3 - "$WORK/rows" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    for k, v in r.items():
        if isinstance(v, (int, float)) and k != "round":
            by[r["label"]][k].append(v)
for label, d in by.items():
    print(label, " ".join(f"{k}={statistics.median(v):.4g} ({min(v):.4g}..{max(v):.4g})" for k, v in sorted(d.items())))
PY

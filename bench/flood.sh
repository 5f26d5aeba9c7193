#!/usr/bin/env bash
# A flooding client: do the listeners of its room notice?
#
#   bench/flood.sh [--rounds N] [--out FILE] [--keep DIR]
#
# Runs `switchboard bench fanout` (100 listeners, one publisher at 100 msg/s) against a server
# with a client message rate of 200/s and a burst of 50, alternately without and with
# `--flooder` (one more client in the room sending as fast as it can) for N rounds (default
# 3), each run on a freshly started server, the server pinned to CPU 0 and the generator to
# CPU 1. It writes the medians of the listeners' latency, how the flooder was closed and the
# ratio of the p99s to FILE (default docs/benchmarks.md) between `<!-- flood:begin -->` and
# `<!-- flood:end -->`; the rest of the file is kept.
set -euo pipefail

BENCH_NAME=flood
HELP_LINES=2,12
# shellcheck source=bench/rounds.sh
source "$(dirname "${BASH_SOURCE[0]}")/rounds.sh"

# The publisher stays well under the client rate; the flooder is far over it.
SERVER_ARGS=(--deflate false --log-level error --client-message-rate 200 --client-message-burst 50)
BENCH_ARGS=(--subs 100 --pubs 1 --rate 100 --size 64 --secs 5 --warmup 1 --drain 2)

START=$SECONDS
for round in $(seq 1 "$ROUNDS"); do
  for flooder in no yes; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "round $round: flooder $flooder (load $load)"
    extra=()
    [ "$flooder" = yes ] && extra=(--flooder)
    start_server "${SERVER_ARGS[@]}"
    json=$("${PIN_GEN[@]}" "$BIN" bench fanout --url "ws://127.0.0.1:$SRV_PORT/flood" \
      "${BENCH_ARGS[@]}" "${extra[@]}" --server-pid "$SRV_PID" --json)
    stop_server
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(flooder=sys.argv[2]=="yes", load=float(sys.argv[3])); print(json.dumps(d))' \
      "$json" "$flooder" "$load" >>"$RESULTS"
  done
done
TOOK=$((SECONDS - START))

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$RESULTS" "$OUT" "$ROUNDS" "$TOOK" "$COMMIT" "${SERVER_ARGS[*]}" "${BENCH_ARGS[*]}" <<'PY'
import datetime, json, os, platform, re, statistics, sys

results, out, rounds, took, commit, server_args, bench_args = sys.argv[1:8]
runs = [json.loads(l) for l in open(results) if l.strip()]
base = [r for r in runs if not r["flooder"]]
flood = [r for r in runs if r["flooder"]]

def values(rs, key):
    return [float(r[key]) for r in rs if isinstance(r.get(key), (int, float))]

def cell(vs, fmt):
    if not vs:
        return "—"
    return f"{fmt(statistics.median(vs))} ({fmt(min(vs))}..{fmt(max(vs))})"

ms = lambda us: f"{us / 1000:.2f}"
num = lambda v: f"{v:,.0f}"
mib = lambda v: f"{v:.1f}"

cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
loads = [r["load"] for r in runs]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    "",
    f"Measured {now} on Linux {platform.release()}, {cpu} ({os.cpu_count()} CPUs), commit {commit}; "
    f"{rounds} round(s), {took} s in total. Load average (1 min) before the runs: median "
    f"{statistics.median(loads):.2f}, range {min(loads):.2f}..{max(loads):.2f}.",
    "",
    f"Command: `bench/flood.sh` — `switchboard serve {server_args}` and "
    f"`switchboard bench fanout {bench_args} [--flooder]`. Runs alternate without and with the "
    "flooder, each on a fresh server.",
    "",
    "Each cell: median (min..max) over the rounds. Ratio = with / without the flooder, of the medians.",
    "",
    "| metric | without flooder | with flooder | ratio |",
    "|---|---|---|---|",
]
for key, label, fmt in (
    ("latency_p50_us", "listeners' latency p50 (ms)", ms),
    ("latency_p99_us", "listeners' latency p99 (ms)", ms),
    ("latency_p999_us", "listeners' latency p99.9 (ms)", ms),
    ("delivered_per_sec", "deliveries/s", num),
    ("lost", "deliveries lost", num),
    ("server_peak_rss_mb", "server peak RSS (MiB)", mib),
):
    a, b = values(base, key), values(flood, key)
    ratio = "—"
    if a and b and statistics.median(a) > 0:
        ratio = f"{statistics.median(b) / statistics.median(a):.2f}"
    lines.append(f"| {label} | {cell(a, fmt)} | {cell(b, fmt)} | {ratio} |")
codes = sorted({str(r.get("flood_close_codes")) for r in flood})
lines += [
    f"| flooder closed with code | — | {', '.join(codes)} | |",
    f"| flooder closed after (ms from its first message) | — | {cell(values(flood, 'flood_closed_after_ms'), lambda v: f'{v:.1f}')} | |",
    f"| flooder messages written before the close | — | {cell(values(flood, 'flood_sent_before_close'), num)} | |",
    f"| flood messages each listener received | — | {cell(values(flood, 'flood_delivered_per_sub'), num)} | |",
    "",
]
section = "\n".join(lines)
text = open(out).read()
begin, end = "<!-- flood:begin -->", "<!-- flood:end -->"
if begin in text and end in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: begin + "\n" + section + "\n" + end, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n## A flooding client\n\n" + begin + "\n" + section + "\n" + end + "\n"
open(out, "w").write(text)
print(section)
PY

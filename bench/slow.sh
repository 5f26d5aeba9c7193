#!/usr/bin/env bash
# Slow consumers: do healthy subscribers stay healthy when some subscribers read slowly?
#
#   bench/slow.sh [--rounds N] [--out FILE] [--keep DIR]
#
# For each slow-consumer policy (`close`, `drop-oldest`) the script runs `switchboard bench slow`
# with no slow subscribers and with 10% slow subscribers, alternating (0%, 10%, 0%, 10%, ...) for N
# rounds (default 3), each run against a freshly started server with a 1 MiB outgoing queue per
# connection, the server pinned to CPU 0 and the generator to CPU 1. It writes the medians and
# ranges of the healthy subscribers' latency, the server's peak RSS and the fate of the slow
# subscribers to FILE (default docs/benchmarks.md) between `<!-- slow:begin -->` and
# `<!-- slow:end -->`; the rest of the file is kept.
set -euo pipefail

BENCH_NAME=slow
HELP_LINES=2,13
# shellcheck source=bench/rounds.sh
source "$(dirname "${BASH_SOURCE[0]}")/rounds.sh"

# The scenario: 300 subscribers, one publisher at 200 msg/s of 4 KiB (800 KiB/s to every
# subscriber); a slow subscriber reads 4 KiB every 100 ms (40 KiB/s), so its queue fills within
# seconds and the policy has to act.
OUTBOX=1048576
SUBS=300
ARGS=(--subs "$SUBS" --pubs 1 --rate 200 --size 4096 --secs 8 --warmup 1
  --slow-read-bytes 4096 --slow-delay-ms 100 --drain 3)

START=$SECONDS
for policy in close drop-oldest; do
  for round in $(seq 1 "$ROUNDS"); do
    for fraction in 0 0.1; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      log "$policy round $round: slow fraction $fraction (load $load)"
      start_server --deflate false --log-level warn --outbox-max-bytes "$OUTBOX" --slow-consumer "$policy"
      json=$("${PIN_GEN[@]}" "$BIN" bench slow --url "ws://127.0.0.1:$SRV_PORT/slow" \
        --slow-fraction "$fraction" "${ARGS[@]}" --server-pid "$SRV_PID" --json)
      stop_server
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(policy=sys.argv[2], fraction=float(sys.argv[3]), load=float(sys.argv[4])); print(json.dumps(d))' \
        "$json" "$policy" "$fraction" "$load" >>"$RESULTS"
    done
  done
done
TOOK=$((SECONDS - START))

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$RESULTS" "$OUT" "$ROUNDS" "$TOOK" "$COMMIT" "$OUTBOX" "$SUBS" <<'PY'
import datetime, json, os, platform, re, statistics, sys

results, out, rounds, took, commit, outbox, subs = sys.argv[1:8]
runs = [json.loads(l) for l in open(results) if l.strip()]

def pick(policy, fraction):
    return [r for r in runs if r["policy"] == policy and r["fraction"] == fraction]

def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}..{fmt(max(values))})"

ms = lambda us: f"{us / 1000:.2f}"
mib = lambda v: f"{v:.1f}"
num = lambda v: f"{v:,.0f}"

def get(r, key):
    v = r.get(key)
    return float(v) if isinstance(v, (int, float)) else None

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
    f"Command: `bench/slow.sh` — `switchboard serve --outbox-max-bytes {outbox} --slow-consumer POLICY` "
    f"and `switchboard bench slow --subs {subs} --pubs 1 --rate 200 --size 4096 --secs 8 "
    "--slow-read-bytes 4096 --slow-delay-ms 100 --slow-fraction F`: every subscriber is offered "
    "800 KiB/s; a slow one reads 40 KiB/s. Runs alternate F = 0 and F = 0.1, each on a fresh server.",
    "",
    "Each cell: median (min..max) over the rounds. Ratio = (10% slow) / (no slow) of the medians.",
    "",
]
for policy in ("close", "drop-oldest"):
    base, slow = pick(policy, 0.0), pick(policy, 0.1)
    if not base or not slow:
        continue
    lines += [f"**Policy `{policy}`**", "", "| metric | no slow subscribers | 10% slow subscribers | ratio |", "|---|---|---|---|"]
    for key, label, fmt in (
        ("healthy_latency_p50_us", "healthy latency p50 (ms)", ms),
        ("healthy_latency_p99_us", "healthy latency p99 (ms)", ms),
        ("healthy_latency_p999_us", "healthy latency p99.9 (ms)", ms),
        ("healthy_delivered_per_sec", "healthy deliveries/s", num),
        ("healthy_lost", "healthy deliveries lost", num),
        ("server_peak_rss_mb", "server peak RSS (MiB)", mib),
    ):
        a = [get(r, key) for r in base]
        b = [get(r, key) for r in slow]
        a_ok = [v for v in a if v is not None]
        b_ok = [v for v in b if v is not None]
        ratio = "—"
        if a_ok and b_ok and statistics.median(a_ok) > 0:
            ratio = f"{statistics.median(b_ok) / statistics.median(a_ok):.2f}"
        lines.append(f"| {label} | {cell(a, fmt)} | {cell(b, fmt)} | {ratio} |")
    closed = [get(r, "slow_closed") for r in slow]
    delivered = [get(r, "slow_delivered") for r in slow]
    lost = [get(r, "slow_lost") for r in slow]
    lines.append(f"| slow subscribers closed by the server | — | {cell(closed, num)} | |")
    lines.append(f"| messages delivered to slow subscribers | — | {cell(delivered, num)} | |")
    lines.append(f"| messages dropped for slow subscribers | — | {cell(lost, num)} | |")
    lines.append("")

section = "\n".join(lines)
text = open(out).read()
begin, end = "<!-- slow:begin -->", "<!-- slow:end -->"
if begin in text and end in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: begin + "\n" + section + "\n" + end, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n## Slow consumers\n\n" + begin + "\n" + section + "\n" + end + "\n"
open(out, "w").write(text)
print(section)
PY

#!/usr/bin/env python3
"""Turn the JSON lines written by bench/compare.sh into a Markdown table.

The table goes into the output file between `<!-- compare:begin -->` and
`<!-- compare:end -->`; the rest of the file is left as it is (the file is created with a short
introduction if it does not exist).
"""
import argparse
import json
import os
import statistics

BEGIN = "<!-- compare:begin -->"
END = "<!-- compare:end -->"

INTRO = """# Benchmarks

How Switchboard compares with a plain Node.js [`ws`](https://github.com/websockets/ws) server on
the same machine, measured with the built-in load generator `switchboard bench`. Run
`bench/compare.sh` to reproduce (`--quick` for a short smoke run); it rewrites the section
between the markers below.

"""

# (scenario id, title, [(result key, label, higher is better)])
SCENARIOS = [
    ("echo64", "Echo, 64 B text, 100 connections, 1 in flight", [
        ("round_trips_per_sec", "round trips/s", True),
        ("server_cpu_us_per_round_trip", "server CPU µs per round trip", False),
        ("latency_p50_us", "latency p50 (µs)", False),
        ("latency_p99_us", "latency p99 (µs)", False),
        ("server_peak_rss_mb", "server peak RSS (MiB)", False),
    ]),
    ("echo16k", "Echo, 16 KiB text, 50 connections, 1 in flight", [
        ("round_trips_per_sec", "round trips/s", True),
        ("server_cpu_us_per_round_trip", "server CPU µs per round trip", False),
        ("latency_p99_us", "latency p99 (µs)", False),
        ("server_peak_rss_mb", "server peak RSS (MiB)", False),
    ]),
    ("fanout_max", "Fan-out, 10 publishers → N subscribers, 64 B, max rate (each publisher at most 8 messages ahead of the slowest subscriber)", [
        ("delivered_per_sec", "deliveries/s", True),
        ("server_cpu_us_per_delivery", "server CPU µs per delivery", False),
        ("latency_p50_us", "latency p50 (µs)", False),
        ("latency_p99_us", "latency p99 (µs)", False),
        ("sent_per_sec", "messages published/s (all publishers)", True),
        ("lost", "deliveries missing after the drain", False),
        ("server_peak_rss_mb", "server peak RSS (MiB)", False),
        ("server_rss_growth_mb", "server RSS growth under load: all connected → end of the measured window (MiB)", False),
    ]),
    ("fanout_200", "Fan-out, 1 publisher → 1,000 subscribers, 64 B, 200 msg/s", [
        ("latency_p50_us", "latency p50 (µs)", False),
        ("latency_p99_us", "latency p99 (µs)", False),
        ("latency_p999_us", "latency p99.9 (µs)", False),
        ("server_cpu_us_per_delivery", "server CPU µs per delivery", False),
        ("delivered_per_sec", "deliveries/s", True),
        ("sent_per_sec", "messages published/s", True),
        ("lost", "deliveries missing after the drain", False),
        ("server_rss_growth_mb", "server RSS growth under load: all connected → end of the measured window (MiB)", False),
    ]),
    ("conns", "Idle connections (opened as fast as possible, 64 handshakes in flight)", [
        ("established", "connections established", True),
        ("server_rss_per_conn_kb", "server RSS per connection (KiB)", False),
        ("server_peak_rss_mb", "server peak RSS (MiB)", False),
        ("handshakes_per_sec", "handshakes/s during the ramp", True),
        ("server_cpu_us_per_handshake", "server CPU µs per handshake", False),
    ]),
    ("conns_active", "Connections active once (both servers with permessage-deflate on, offered by the client; each connection sends one 106-byte message, compressed, into a room of 10, then idles)", [
        ("established", "connections established", True),
        ("server_rss_per_conn_kb", "server RSS per connection (KiB)", False),
        ("server_peak_rss_mb", "server peak RSS (MiB)", False),
        ("handshakes_per_sec", "handshakes/s during the ramp", True),
    ]),
]


def fmt(v):
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 100000:
        return f"{v/1000:,.0f}k"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(values):
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}..{fmt(max(values))})"


def ratio(num, den):
    """The ratio of two medians, `n/a` when one side has no value."""
    if not num or not den:
        return "n/a"
    d = statistics.median(den)
    if d == 0:
        return "—"
    return f"{statistics.median(num) / d:.2f}"


def main():
    ap = argparse.ArgumentParser()
    for k in ("results", "out", "date", "kernel", "cpu", "node", "command", "rounds",
              "elapsed", "pinned", "commit"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--servers", default="ws switchboard")
    ap.add_argument("--uws-commits", default="")
    a = ap.parse_args()

    recs = [json.loads(l) for l in open(a.results) if l.strip()]
    servers = a.servers.split()
    uws = "uws" in servers
    by = {}
    errors = []
    loads = []
    subs = {}
    for r in recs:
        loads.append(r["load1"])
        res = r.get("result")
        if r.get("error"):
            errors.append(f"{r['scenario']} / {r['server']} / round {r['round']}: {r['error']}")
        if not res:
            continue
        if "subs" in res:
            subs[r["scenario"]] = res["subs"]
        if "n" in res and r["scenario"] in ("conns", "conns_active"):
            subs[r["scenario"]] = res["n"]
        for key, v in res.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                by.setdefault((r["scenario"], r["server"], key), []).append(float(v))

    lines = [BEGIN, ""]
    lines.append(f"Measured {a.date} on Linux {a.kernel}, {a.cpu}, Node.js {a.node}, "
                 f"`ws` 8.23.0 with `perMessageDeflate: false`, Switchboard with `--deflate false` "
                 f"(commit {a.commit})"
                 + (f"; uWebSockets peer (`/work/shared/peers/uws`, C++ -O3, one thread, compression off; "
                    f"{a.uws_commits.strip()})" if uws else "") + ".")
    lines.append("")
    lines.append(f"Command: `{a.command}` ({a.rounds} round(s), runs alternating {' / '.join(servers)}, "
                 f"{'server pinned to CPU 0, load generator to CPU 1' if a.pinned == 'yes' else 'unpinned'}; "
                 f"{a.elapsed} s in total).")
    if loads:
        lines.append(f"Load average (1 min) before the runs: median {statistics.median(loads):.2f}, "
                     f"range {min(loads):.2f}..{max(loads):.2f}. The machine is shared: raw rates vary "
                     f"with the CPU time the server actually got, so the server CPU per operation is the "
                     f"steadier figure.")
    lines.append("")
    lines.append("Each cell: median (min..max) over the rounds. Ratio = switchboard / ws of the medians"
                 + (" (and switchboard / uws)" if uws else "")
                 + "; ↑ = higher is better, ↓ = lower is better."
                 + (" The uWS peer has one room (`/broadcast`, sender included, so fan-out publishers "
                    "also receive their own messages) and no compression (it sits out the deflate "
                    "scenario)." if uws else ""))
    lines.append("")
    for sid, title, metrics in SCENARIOS:
        if not any(k[0] == sid for k in by):
            continue
        t = title.replace("N subscribers", f"{subs.get(sid, 'N'):,} subscribers"
                          if isinstance(subs.get(sid), int) else "N subscribers")
        if sid in ("conns", "conns_active") and isinstance(subs.get(sid), int):
            t = f"{subs[sid]:,} " + t[0].lower() + t[1:]
        lines.append(f"**{t}**")
        lines.append("")
        if uws:
            lines.append("| metric | ws | uws | switchboard | ratio to ws | ratio to uws |")
            lines.append("|---|---|---|---|---|---|")
        else:
            lines.append("| metric | ws | switchboard | ratio |")
            lines.append("|---|---|---|---|")
        for key, label, higher in metrics:
            w = by.get((sid, "ws", key), [])
            u = by.get((sid, "uws", key), [])
            s = by.get((sid, "switchboard", key), [])
            if not w and not s and not u:
                continue
            arrow = "↑" if higher else "↓"
            if uws:
                lines.append(f"| {label} {arrow} | {cell(w)} | {cell(u)} | {cell(s)} | "
                             f"{ratio(s, w)} | {ratio(s, u)} |")
            else:
                lines.append(f"| {label} {arrow} | {cell(w)} | {cell(s)} | {ratio(s, w)} |")
        lines.append("")
    if errors:
        lines.append("Failed runs:")
        lines.append("")
        for e in errors:
            lines.append(f"* {e}")
        lines.append("")
    lines.append(END)
    section = "\n".join(lines)

    if os.path.exists(a.out):
        text = open(a.out).read()
    else:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        text = INTRO
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

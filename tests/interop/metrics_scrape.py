#!/usr/bin/env python3
"""`GET /metrics` of the real switchboard binary, after a scripted load (N raw clients in
one room, M messages from one of them), parsed by the reference Prometheus parser
(`prometheus_client.parser.text_string_to_metric_families`): the names, types and the
counted values must be what the load implies, the publish→socket-write latency histogram
included.

Run: SWITCHBOARD_BIN=/abs/path/to/switchboard .venv/bin/python metrics_scrape.py
"""

import asyncio
import sys
import traceback
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from python_client import Server, ready, recv

N = 5  # clients in the room
M = 20  # messages sent by the first client
BODY = "x" * 10


def scrape(server: Server) -> dict:
    """Every sample as {(name, frozenset(labels)): value}, and the families by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        assert r.status == 200, r.status
        ctype = r.headers.get("Content-Type", "")
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k[0] for k in samples)[:80]}"
    return samples[key]


async def test_counts_after_a_scripted_load(server: Server):
    clients = [await connect(server.url("/metrics_room"), compression=None) for _ in range(N)]
    try:
        for ws in clients:
            await ready(ws)
        # The later clients' probes reach the earlier ones: let them all be written.
        await asyncio.sleep(0.3)
        _, before = scrape(server)
        for i in range(M):
            await clients[0].send(f"{BODY}{i:02}")
        # Every member receives all M (echo is on for the sender too).
        for ws in clients:
            for i in range(M):
                assert await recv(ws) == f"{BODY}{i:02}"
        families, after = scrape(server)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        assert families["switchboard_connections"].type == "gauge"
        assert families["switchboard_messages_received"].type == "counter"
        assert value(after, "switchboard_connections", protocol="raw") == N
        assert delta("switchboard_messages_received_total", protocol="raw") == M
        assert delta("switchboard_received_bytes_total", protocol="raw") == M * (len(BODY) + 2)
        # Each message went out to every member.
        assert delta("switchboard_messages_sent_total", protocol="raw") == N * M
        assert delta("switchboard_sent_bytes_total", protocol="raw") == N * M * (len(BODY) + 2)
        assert delta("switchboard_publications_total") == M
        assert delta("switchboard_deliveries_total") == N * M
        assert value(after, "switchboard_connections_opened_total", protocol="raw") >= N
        # One latency observation per publication per member, each at its socket write.
        assert families["switchboard_delivery_latency_seconds"].type == "histogram"
        latency = "switchboard_delivery_latency_seconds"
        assert delta(f"{latency}_count", protocol="raw") == N * M
        assert delta(f"{latency}_bucket", protocol="raw", le="+Inf") == N * M
        # On loopback every one of them took well under five seconds, and some time.
        le5 = next(
            dict(k[1])["le"]
            for k in after
            if k[0] == f"{latency}_bucket" and dict(k[1]).get("le") not in (None, "+Inf")
            and float(dict(k[1])["le"]) == 5.0
        )
        assert delta(f"{latency}_bucket", protocol="raw", le=le5) == N * M
        assert 0 < delta(f"{latency}_sum", protocol="raw") < 5 * N * M
        assert value(after, "switchboard_broker_connected", kind="memory") == 1
        assert value(after, "switchboard_process_resident_memory_bytes") > 0
        assert value(after, "switchboard_process_open_fds") >= N
        assert value(after, "switchboard_process_cpu_seconds_total") >= 0
        for name in ("switchboard_handshake_refusals_total",):
            assert value(after, name, reason="origin") == 0
    finally:
        for ws in clients:
            await ws.close()
    # The closes are counted by reason once the server has seen them.
    for _ in range(100):
        _, end = scrape(server)
        closed = value(end, "switchboard_connections_closed_total", protocol="raw", reason="peer_closed")
        if closed >= N and value(end, "switchboard_connections", protocol="raw") == 0:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"closes not counted: {closed}")


TESTS = [test_counts_after_a_scripted_load]


async def main() -> int:
    passed = failed = 0
    server = await Server().start()
    try:
        for test in TESTS:
            try:
                await asyncio.wait_for(test(server), 60)
                print(f"ok   {test.__name__}", flush=True)
                passed += 1
            except Exception:
                failed += 1
                print(f"FAIL {test.__name__}", flush=True)
                traceback.print_exc()
    finally:
        server.stop()
    print(f"metrics_scrape.py: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

#!/usr/bin/env python3
"""The unmodified `cent` library (Centrifugo's Python HTTP API client) against the real
switchboard binary's `/api`: publish, broadcast, history, history_remove, presence_stats,
info, a wrong key, and an API publication reaching a raw-room `websockets` client.

Run: SWITCHBOARD_BIN=/abs/path/to/switchboard .venv/bin/python cent_api.py
"""

import asyncio
import json
import sys
import tempfile
import traceback
from pathlib import Path

from cent import (
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    Client,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceStatsRequest,
    PublishRequest,
)
from websockets.asyncio.client import connect

from python_client import Server, ready, recv

KEY = "cent-test-key"
CONFIG = """
[channel.default]
presence = true
history_size = 10
history_ttl = 300
"""


def client(server: Server, key: str = KEY) -> Client:
    return Client(f"http://127.0.0.1:{server.port}/api", key, timeout=10)


async def test_publish_reaches_a_raw_client(server: Server):
    async with connect(server.url("/cent-room")) as ws:
        await ready(ws)
        result = await asyncio.to_thread(
            client(server).publish, PublishRequest(channel="cent-room", data={"from": "cent"})
        )
        assert result.offset >= 1 and result.epoch, result
        # The JSON text arrives exactly as the API client sent it (cent puts a space after ':').
        got = await recv(ws)
        assert isinstance(got, str) and json.loads(got) == {"from": "cent"}, got


async def test_broadcast_history_and_remove(server: Server):
    c = client(server)
    r = await asyncio.to_thread(c.broadcast, BroadcastRequest(channels=["h1", "h2"], data=[1, 2]))
    assert [x.result.offset for x in r.responses] == [1, 1], r
    await asyncio.to_thread(c.publish, PublishRequest(channel="h1", data={"n": 2}))
    h = await asyncio.to_thread(c.history, HistoryRequest(channel="h1", limit=10))
    assert [p.data for p in h.publications] == [[1, 2], {"n": 2}], h
    assert [p.offset for p in h.publications] == [1, 2]
    await asyncio.to_thread(c.history_remove, HistoryRemoveRequest(channel="h1"))
    h2 = await asyncio.to_thread(c.history, HistoryRequest(channel="h1", limit=10))
    assert h2.publications == [] and h2.epoch != h.epoch, h2


async def test_presence_stats_and_info(server: Server):
    async with connect(server.url("/ps")) as ws:
        await ready(ws)
        c = client(server)
        s = await asyncio.to_thread(c.presence_stats, PresenceStatsRequest(channel="ps"))
        assert s.num_clients == 1, s
        info = await asyncio.to_thread(c.info, InfoRequest())
        assert info.nodes[0].num_clients >= 1, info


async def test_errors(server: Server):
    try:
        await asyncio.to_thread(client(server, "wrong").info, InfoRequest())
        raise AssertionError("a wrong key was accepted")
    except CentUnauthorizedError:
        pass
    try:
        await asyncio.to_thread(client(server).publish, PublishRequest(channel="no-such-ns:x", data={}))
        raise AssertionError("an unknown namespace was accepted")
    except CentApiResponseError as e:
        assert e.code == 102, e


TESTS = [
    test_publish_reaches_a_raw_client,
    test_broadcast_history_and_remove,
    test_presence_stats_and_info,
    test_errors,
]


async def main() -> int:
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "switchboard.toml"
        config.write_text(CONFIG)
        server = await Server("--api-key", KEY, "--config", str(config)).start()
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
            code = server.stop()
    if code != 0:
        print(f"FAIL server exited with {code} on SIGTERM")
        failed += 1
    print(f"cent_api.py: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

#!/usr/bin/env python3
"""The unmodified `centrifuge-python` SDK (PyPI `centrifuge-python`) with
`use_protobuf=True` against the real switchboard binary: connect (the SDK offers the
`centrifuge-protobuf` subprotocol), subscribe, publish binary payloads and receive them
byte for byte, history in order, presence stats, and a raw `websockets` client in the
same channel receiving the SDK's bytes as a binary message.

Run: SWITCHBOARD_BIN=/abs/path/to/switchboard tests/interop/.venv/bin/python tests/interop/centrifuge_python_protobuf.py
"""

import asyncio
import sys
import traceback
from pathlib import Path

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_client import PROBE, WAIT, Server  # noqa: E402

CONFIG = """
allow_anonymous = true

[channel.default]
presence = true
history_size = 100
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
"""


class Connected(ClientEventHandler):
    def __init__(self):
        self.connected = asyncio.Event()
        self.client_id = None

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.client_id = ctx.client
        self.connected.set()


class Inbox(SubscriptionEventHandler):
    """Records a subscription's publications in order."""

    def __init__(self):
        self.subscribed = asyncio.Event()
        self.publications = []
        self.changed = asyncio.Event()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.set()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.append(ctx.pub)
        self.changed.set()

    async def until(self, n: int):
        async def wait():
            while len(self.publications) < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), WAIT)
        return self.publications


async def sdk_client(server: Server):
    events = Connected()
    client = Client(server.url("/connection/websocket"), events=events, use_protobuf=True, proxy=None)
    await client.connect()
    await asyncio.wait_for(events.connected.wait(), WAIT)
    assert events.client_id, "the connect result names the client"
    return client


async def subscribed(client: Client, channel: str):
    inbox = Inbox()
    sub = client.new_subscription(channel, events=inbox)
    await sub.subscribe()
    await asyncio.wait_for(inbox.subscribed.wait(), WAIT)
    return sub, inbox


async def test_pub_sub_history_with_protobuf(server: Server) -> None:
    a = await sdk_client(server)
    b = await sdk_client(server)
    try:
        sub_a, inbox = await subscribed(a, "pychan")
        sub_b, _ = await subscribed(b, "pychan")
        payloads = [bytes(range(256)), b"\x00", "héllo".encode()]
        for p in payloads:
            await sub_b.publish(p)
        got = await inbox.until(len(payloads))
        assert [bytes(p.data) for p in got] == payloads, got
        offsets = [p.offset for p in got]
        assert offsets == list(range(offsets[0], offsets[0] + len(payloads))), offsets

        history = await sub_a.history(limit=10)
        assert [bytes(p.data) for p in history.publications] == payloads
        assert history.offset == offsets[-1]
        assert history.epoch

        stats = await sub_a.presence_stats()
        assert stats.num_clients == 2, stats
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_raw_client_receives_sdk_bytes(server: Server) -> None:
    client = await sdk_client(server)
    try:
        async with connect(server.url("/pyroom"), open_timeout=WAIT) as raw:
            # Wait until the raw client is in its room: its own probe comes back.
            await raw.send(PROBE + "py")
            assert await asyncio.wait_for(raw.recv(), WAIT) == PROBE + "py"
            sub, inbox = await subscribed(client, "pyroom")
            await sub.publish(b"\xde\xad\x00\xbe\xef")
            got = await asyncio.wait_for(raw.recv(), WAIT)
            assert got == b"\xde\xad\x00\xbe\xef", got
            await raw.send(b"\x01\x02\xff")
            assert await asyncio.wait_for(raw.recv(), WAIT) == b"\x01\x02\xff"
            pubs = await inbox.until(2)
            assert bytes(pubs[-1].data) == b"\x01\x02\xff", pubs
    finally:
        await client.disconnect()


async def main() -> int:
    import tempfile

    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "switchboard.toml"
        config.write_text(CONFIG)
        server = await Server("--config", str(config)).start()
        try:
            for test in (test_pub_sub_history_with_protobuf, test_raw_client_receives_sdk_bytes):
                try:
                    await asyncio.wait_for(test(server), 60)
                    print(f"ok   {test.__name__}")
                except Exception:
                    failed += 1
                    print(f"FAIL {test.__name__}")
                    traceback.print_exc()
        finally:
            code = server.stop()
            if code != 0:
                print(f"FAIL server exit code {code}")
                failed += 1
    print(f"{2 - min(failed, 2)} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

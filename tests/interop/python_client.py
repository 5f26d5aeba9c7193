#!/usr/bin/env python3
"""Python `websockets` clients against the real switchboard binary.

Chat through rooms with permessage-deflate on (the library default) and off,
message types, ?echo=false, the 1 MiB limit, and a Node `ws` client and a
Python client in the same room seeing each other's messages.

Run: SWITCHBOARD_BIN=/abs/path/to/switchboard tests/interop/.venv/bin/python tests/interop/python_client.py
"""

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import traceback
import uuid
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
WAIT = 15.0  # upper bound for any single wait, so a broken server fails instead of hanging
PROBE = "__switchboard_test_probe__"
MIB = 1024 * 1024


def binary_path() -> str:
    path = os.environ.get("SWITCHBOARD_BIN") or str(REPO_ROOT / "target" / "release" / "switchboard")
    if not os.access(path, os.X_OK):
        raise SystemExit(f"switchboard binary not found at {path}; build it or set SWITCHBOARD_BIN")
    return path


class Server:
    """`switchboard serve --listen 127.0.0.1:0` as a child process."""

    def __init__(self, *extra: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env["SWITCHBOARD_LOG_LEVEL"] = "warn"
        self.args = [binary_path(), "serve", "--listen", "127.0.0.1:0", *extra]
        self.stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"switchboard-py-{uuid.uuid4().hex}.log"
        self.stderr = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True)
        self.port = None

    async def start(self) -> "Server":
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), WAIT)
        m = re.fullmatch(r"Switchboard listening on http://127\.0\.0\.1:(\d+)\s*", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"unexpected first stdout line {line!r}; stderr:\n{self.stderr_tail()}")
        self.port = int(m.group(1))
        return self

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stderr_tail(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        self.stderr_path.unlink(missing_ok=True)
        return self.proc.returncode


async def recv(ws):
    """Next message that is not a readiness probe (ours or another member's)."""
    while True:
        msg = await asyncio.wait_for(ws.recv(), WAIT)
        if isinstance(msg, str) and msg.startswith(PROBE):
            continue
        return msg


async def ready(ws):
    """Send a unique probe and wait for its echo: from then on we are in the room."""
    probe = f"{PROBE}{uuid.uuid4()}"
    await ws.send(probe)
    while True:
        msg = await asyncio.wait_for(ws.recv(), WAIT)
        if msg == probe:
            return
        if not (isinstance(msg, str) and msg.startswith(PROBE)):
            raise AssertionError(f"unexpected message {msg!r} while joining")


async def expect(ws, want, who: str):
    """Assert that the next non-probe message at `ws` is `want`, type included."""
    got = await recv(ws)
    assert type(got) is type(want), f"{who}: expected a {type(want).__name__} message, got {type(got).__name__} {got!r:.80}"
    assert got == want, f"{who}: expected {want!r:.80}, got {got!r:.80}"


def extensions(ws) -> str:
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


# --------------------------------------------------------------------------
# Tests: each gets a running server.
# --------------------------------------------------------------------------


async def test_chat_with_deflate(server):
    async with connect(server.url("/py-deflate")) as a, connect(server.url("/py-deflate")) as b:
        assert "permessage-deflate" in extensions(a), f"no permessage-deflate negotiated: {extensions(a)!r}"
        await ready(a)
        await ready(b)
        await a.send("hello from python ✓")
        await expect(b, "hello from python ✓", "b")
        await expect(a, "hello from python ✓", "a (sender is included by default)")
        await b.send(b"\x00\x01\xfe\xff")
        await expect(a, b"\x00\x01\xfe\xff", "a")
        await expect(b, b"\x00\x01\xfe\xff", "b (own echo)")
        big = "compress me " * 30_000
        await a.send(big)
        await expect(b, big, "b")
        await expect(a, big, "a (own echo)")


async def test_chat_without_compression(server):
    async with connect(server.url("/py-plain"), compression=None) as a, connect(
        server.url("/py-plain"), compression=None
    ) as b:
        assert extensions(a) == "", f"extension negotiated without an offer: {extensions(a)!r}"
        await ready(a)
        await ready(b)
        await b.send("plain text")
        await expect(a, "plain text", "a")
        await expect(b, "plain text", "b (own echo)")
        await a.send(bytes(range(256)))
        await expect(b, bytes(range(256)), "b")


async def test_deflate_and_plain_clients_share_a_room(server):
    async with connect(server.url("/py-mixed")) as z, connect(server.url("/py-mixed"), compression=None) as p:
        await ready(z)
        await ready(p)
        await z.send("x" * 50_000)
        assert await recv(p) == "x" * 50_000
        await p.send("y" * 50_000)
        assert await recv(z) == "x" * 50_000  # its own echo first
        assert await recv(z) == "y" * 50_000


async def test_echo_false(server):
    async with connect(server.url("/py-quiet")) as receiver, connect(server.url("/py-quiet?echo=false")) as sender:
        await ready(receiver)
        await sender.send("from the quiet sender")
        assert await recv(receiver) == "from the quiet sender"
        await receiver.send("marker")
        first = await recv(sender)
        assert first == "marker", f"sender with ?echo=false got {first!r} before the marker"


async def test_message_too_big_closes_1009(server):
    for compression in ("deflate", None):
        async with connect(server.url("/py-limit"), compression=compression, max_size=None) as ws:
            await ready(ws)
            try:
                # The server may close while the message is still being sent.
                await ws.send(b"\x00" * (MIB + 1))
                msg = await asyncio.wait_for(ws.recv(), WAIT)
                raise AssertionError(f"expected a close after an oversized message, got {msg!r:.60}")
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                assert code == 1009, (
                    f"compression={compression}: expected close 1009, got "
                    + (str(code) if code is not None else f"no close frame ({e!r})")
                )


class NodePeer:
    """A Node `ws` client (lib/ws_peer.mjs) in a room, driven over stdin/stdout."""

    def __init__(self, url: str, *flags: str):
        self.proc = subprocess.Popen(
            ["node", str(HERE / "lib" / "ws_peer.mjs"), url, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def event(self) -> dict:
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), WAIT)
        if not line:
            raise AssertionError(f"node peer exited (code {self.proc.poll()})")
        return json.loads(line)

    async def message(self):
        ev = await self.event()
        assert ev["event"] == "message", f"expected a message at the node peer, got {ev}"
        return base64.b64decode(ev["data"]) if ev["binary"] else ev["data"]

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(WAIT)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.proc.kill()
            self.proc.wait()


async def test_node_and_python_in_one_room(server):
    for py_compression, node_flags in (("deflate", ()), (None, ("--no-deflate",))):
        async with connect(server.url("/polyglot"), compression=py_compression) as py:
            await ready(py)
            node = NodePeer(server.url("/polyglot"), *node_flags)
            try:
                ev = await node.event()
                assert ev["event"] == "ready", f"node peer: {ev}"
                if node_flags:
                    assert ev["extensions"] == ""
                else:
                    assert "permessage-deflate" in ev["extensions"]

                await py.send("hello node, from python")
                assert await node.message() == "hello node, from python"
                assert await recv(py) == "hello node, from python"

                node.send(text="hello python, from node")
                assert await recv(py) == "hello python, from node"
                assert await node.message() == "hello python, from node"

                node.send(binary=base64.b64encode(b"\x10\x20\x30").decode())
                got = await recv(py)
                assert isinstance(got, bytes) and got == b"\x10\x20\x30", f"binary from node arrived as {got!r}"
                assert await node.message() == b"\x10\x20\x30"
                await py.send(b"\xff\x00")
                assert await node.message() == b"\xff\x00"
            finally:
                node.close()


TESTS = [
    test_chat_with_deflate,
    test_chat_without_compression,
    test_deflate_and_plain_clients_share_a_room,
    test_echo_false,
    test_message_too_big_closes_1009,
    test_node_and_python_in_one_room,
]


async def main() -> int:
    passed = failed = 0
    server = await Server().start()
    try:
        for test in TESTS:
            try:
                await asyncio.wait_for(test(server), 120)
                print(f"ok   {test.__name__}", flush=True)
                passed += 1
            except Exception:
                failed += 1
                print(f"FAIL {test.__name__}", flush=True)
                traceback.print_exc()
                if server.proc.poll() is not None:
                    print(f"server exited with {server.proc.returncode}; stderr:\n{server.stderr_tail()}")
                    server = await Server().start()
    finally:
        code = server.stop()
    if code != 0:
        print(f"FAIL server exited with {code} on SIGTERM")
        failed += 1
    print(f"python_client.py: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

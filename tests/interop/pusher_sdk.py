#!/usr/bin/env python3
"""The unmodified Python `pusher` server SDK (PyPI) against the real switchboard binary's
Pusher HTTP API, with an unmodified `pusher-js` client (driven by lib/pusher_listen.mjs)
receiving: trigger, trigger_batch, socket_id exclusion, a private channel authorized with
the SDK's signature, channel queries, send_to_user after a sign-in signed by the SDK, and
terminate_user_connections (which this SDK, 3.3, posts to `/users/{id}/terminate_connections`,
without the `/apps/{id}` prefix; the server takes the app from the request's `auth_key`).

Run: SWITCHBOARD_BIN=/abs/path/to/switchboard .venv/bin/python pusher_sdk.py
"""

import asyncio
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import pusher

from python_client import WAIT, Server

# The Python SDK only takes numeric app ids.
APP_ID, KEY, SECRET = "4321", "py-key", "py-secret"
CONFIG = f"""
[[pusher.apps]]
id = "{APP_ID}"
key = "{KEY}"
secret = "{SECRET}"
"""
HERE = Path(__file__).resolve().parent


def sdk(server: Server, secret: str = SECRET) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=KEY, secret=secret, host="127.0.0.1", port=server.port, ssl=False)


class Listener:
    """A pusher-js client in a Node process, one JSON line per thing it sees."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, server: Server) -> "Listener":
        node = shutil.which("node")
        assert node, "node is not installed"
        proc = await asyncio.create_subprocess_exec(
            node, str(HERE / "lib" / "pusher_listen.mjs"), str(server.port), KEY,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=str(HERE),
        )
        return cls(proc)

    async def send(self, obj) -> None:
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def until(self, key: str, pred=lambda m: True) -> dict:
        """The next line with `key` that `pred` accepts; lines before it are skipped."""
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
            assert line, "pusher-js exited"
            m = json.loads(line)
            if key in m and pred(m):
                return m

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_trigger_batch_and_exclusion(server: Server, js: Listener, socket_id: str):
    await js.send({"subscribe": "py-news"})
    await js.until("subscribed")
    p = sdk(server)
    await asyncio.to_thread(p.trigger, "py-news", "greeting", {"text": "hello from python"})
    m = await js.until("event")
    assert m == {"event": "greeting", "channel": "py-news", "data": {"text": "hello from python"}}, m
    # Excluded by socket_id: the next event the client sees is the one after it.
    await asyncio.to_thread(p.trigger, "py-news", "skipped", {"n": 0}, socket_id)
    await asyncio.to_thread(
        p.trigger_batch,
        [
            {"channel": "py-news", "name": "batched", "data": {"n": 1}},
            {"channel": "py-news", "name": "batched", "data": "plain text"},
        ],
    )
    first = await js.until("event")
    second = await js.until("event")
    assert first["event"] == "batched" and first["data"] == {"n": 1}, first
    assert second["data"] == "plain text", second


async def test_private_channel_signed_by_the_sdk(server: Server, js: Listener, socket_id: str):
    p = sdk(server)
    await js.send({"subscribe": "private-py"})
    req = (await js.until("auth_request"))["auth_request"]
    assert req == {"socket_id": socket_id, "channel": "private-py"}, req
    await js.send({"auth": p.authenticate(channel="private-py", socket_id=socket_id)})
    await js.until("subscribed", lambda m: m["subscribed"] == "private-py")
    await asyncio.to_thread(p.trigger, "private-py", "secret", {"ok": True})
    m = await js.until("event", lambda m: m["channel"] == "private-py")
    assert m["data"] == {"ok": True}, m
    # A signature with another secret is refused.
    await js.send({"subscribe": "private-py-2"})
    req = (await js.until("auth_request"))["auth_request"]
    await js.send({"auth": sdk(server, "wrong").authenticate(channel="private-py-2", socket_id=socket_id)})
    m = await js.until("subscription_error")
    assert m["error"]["status"] == 401, m


async def test_channel_queries(server: Server, js: Listener, socket_id: str):
    p = sdk(server)
    listed = await asyncio.to_thread(p.channels_info, None, ["subscription_count"])
    assert listed["channels"]["py-news"]["subscription_count"] == 1, listed
    one = await asyncio.to_thread(p.channel_info, "py-news", ["subscription_count"])
    assert one["occupied"] is True and one["subscription_count"] == 1, one
    empty = await asyncio.to_thread(p.channel_info, "nobody-here", [])
    assert empty["occupied"] is False, empty


async def test_send_to_user(server: Server, js: Listener, socket_id: str):
    p = sdk(server)
    await js.send({"signin": True})
    req = (await js.until("user_auth_request"))["user_auth_request"]
    await js.send({"user_auth": p.authenticate_user(req["socket_id"], {"id": "py-user", "name": "Py"})})
    signed = await js.until("signed_in")
    assert signed["signed_in"]["id"] == "py-user", signed
    # Signed in: the connection is on its user channel already, pusher-js listens to it.
    await asyncio.to_thread(p.send_to_user, "py-user", "notice", {"text": "for you"})
    m = await js.until("user_event")
    assert m == {"user_event": "notice", "data": {"text": "for you"}}, m


async def test_terminate_user_connections(server: Server, js: Listener, socket_id: str):
    # Signed with another secret: refused, the user's connection stays.
    try:
        await asyncio.to_thread(sdk(server, "wrong").terminate_user_connections, "py-user")
        raise AssertionError("a request signed with a wrong secret was accepted")
    except pusher.errors.PusherBadAuth:
        pass
    await asyncio.to_thread(sdk(server).terminate_user_connections, "py-user")
    # pusher-js leaves the connected state: its connection was closed by the server.
    m = await js.until("state", lambda m: m["state"] != "connected")
    assert m["state"] in ("disconnected", "connecting", "unavailable", "failed"), m


TESTS = [
    test_trigger_batch_and_exclusion,
    test_private_channel_signed_by_the_sdk,
    test_channel_queries,
    test_send_to_user,
    # Last: it ends the listener's connection.
    test_terminate_user_connections,
]


async def main() -> int:
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "switchboard.toml"
        config.write_text(CONFIG)
        server = await Server("--config", str(config)).start()
        js = await Listener.start(server)
        try:
            socket_id = (await js.until("connected"))["connected"]
            for test in TESTS:
                try:
                    await asyncio.wait_for(test(server, js, socket_id), 60)
                    print(f"ok   {test.__name__}", flush=True)
                    passed += 1
                except Exception:
                    failed += 1
                    print(f"FAIL {test.__name__}", flush=True)
                    traceback.print_exc()
        finally:
            await js.stop()
            code = server.stop()
    if code != 0:
        print(f"FAIL server exited with {code} on SIGTERM")
        failed += 1
    print(f"pusher_sdk.py: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

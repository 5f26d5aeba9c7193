"""The Python `websockets` client against a switchboard-websocket echo server.

Usage: python py_client.py ws://127.0.0.1:PORT/ on|off
Prints one line per check and `SUMMARY passed=N failed=M`; exits 1 on any failure.
"""
import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

URL, MODE = sys.argv[1], sys.argv[2]
COMPRESSION = "deflate" if MODE == "on" else None


def big_payload() -> bytes:
    """16 MiB: half pseudo-random (incompressible), half repetitive text."""
    size = 16 * 1024 * 1024
    x = 0x2545F491
    rnd = bytearray(size // 2)
    for i in range(0, size // 2, 4):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        rnd[i : i + 4] = x.to_bytes(4, "little")
    text = b"switchboard interop line "
    tail = (text * (size // 2 // len(text) + 1))[: size // 2]
    return bytes(rnd) + tail


def client():
    return connect(URL, compression=COMPRESSION, max_size=64 * 1024 * 1024, open_timeout=20)


async def echo(message):
    async with client() as ws:
        await ws.send(message)
        return await ws.recv()


async def check_negotiation():
    async with client() as ws:
        header = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ("permessage-deflate" in header) == (MODE == "on"), header


async def check_text():
    text = "hello switchboard żółć € 𝄞 日本語"
    got = await echo(text)
    assert isinstance(got, str) and got == text, got


async def check_binary():
    data = bytes(range(256)) * 8
    got = await echo(data)
    assert isinstance(got, bytes) and got == data


async def check_big():
    data = big_payload()
    got = await echo(data)
    assert isinstance(got, bytes) and got == data, len(got)


async def check_fragmented():
    async with client() as ws:
        await ws.send(iter(["frag-", "ment-", "ed"]))
        got = await ws.recv()
        assert got == "frag-ment-ed", got


async def check_close_code():
    async with client() as ws:
        await ws.close(4000, "bye")
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4000, ws.protocol.close_rcvd


async def check_ping():
    async with client() as ws:
        waiter = await ws.ping(b"are you there")
        await asyncio.wait_for(waiter, 20)


CHECKS = [
    ("negotiated extension matches the mode", check_negotiation),
    ("text echo", check_text),
    ("binary echo", check_binary),
    ("16 MiB binary echo", check_big),
    ("fragmented message is reassembled", check_fragmented),
    ("ping is answered", check_ping),
    ("close 4000 is echoed", check_close_code),
]


async def main():
    passed = failed = 0
    for name, fn in CHECKS:
        try:
            await asyncio.wait_for(fn(), 120)
            print(f"ok   {name}", flush=True)
            passed += 1
        except (Exception, ConnectionClosed) as e:  # noqa: BLE001 - report every failure
            print(f"FAIL {name}: {e!r}", flush=True)
            failed += 1
    print(f"SUMMARY passed={passed} failed={failed}", flush=True)
    sys.exit(0 if failed == 0 else 1)


asyncio.run(main())

"""A Python `websockets` echo server for testing the switchboard-websocket client.

Usage: python py_server.py on|off
Prints `LISTENING <port>`, then `CLOSE <code> <reason>` for each closed connection.
Text `cmd:fragmented` is answered with "frag-ment-ed" in three fragments; everything else is
echoed with its type.
"""
import asyncio
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

COMPRESSION = "deflate" if sys.argv[1] == "on" else None


async def handler(ws):
    try:
        async for message in ws:
            if message == "cmd:fragmented":
                await ws.send(iter(["frag-", "ment-", "ed"]))
            else:
                await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None:
            print(f"CLOSE {rcvd.code} {rcvd.reason}", flush=True)
        else:
            print("CLOSE none", flush=True)


async def main():
    async with serve(
        handler, "127.0.0.1", 0, compression=COMPRESSION, max_size=64 * 1024 * 1024
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await asyncio.Future()


asyncio.run(main())

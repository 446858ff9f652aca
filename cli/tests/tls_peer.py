#!/usr/bin/env python3
"""A wss:// peer for wsloop's client tests: Python `websockets` serving the
seed protocol over TLS with the test's certificate, an implementation
independent of ours.

    tls_peer.py CERT KEY

Listens on a free port of 127.0.0.1 and prints `listening on 127.0.0.1:PORT`;
then, per connection, `path PATH` and `header NAME: VALUE` for each request
header starting with `X-` (so a test can check what our client sent), and
answers every request the way the Go server does. Runs until killed.
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.server import serve


def reply(request):
    """The Go server's answer to one request."""
    return {
        "requestID": request.get("requestID", 0),
        "command": "",
        "someOtherThing": f"Command '{request.get('command', '')}' processed successfully.",
        "success": True,
    }


async def answer(ws):
    print(f"path {ws.request.path}", flush=True)
    for name, value in ws.request.headers.raw_items():
        if name.lower().startswith("x-"):
            print(f"header {name}: {value}", flush=True)
    async for text in ws:
        await ws.send(json.dumps(reply(json.loads(text))))


async def main(cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    async with serve(answer, "127.0.0.1", 0, ssl=context) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

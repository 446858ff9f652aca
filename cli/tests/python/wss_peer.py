#!/usr/bin/env python3
"""A real TLS peer for tests/tls_server.rs: Python's ssl module and the
`websockets` package, trusting only the test CA.

    wss_peer.py roundtrip URL CA        one seed request over wss://; prints
                                        the certificate's CN and the reply
    wss_peer.py hold URL CA             connects, prints the CN, then does a
                                        round trip per stdin line until EOF
    wss_peer.py get URL CA              HTTPS GET; prints the status and body
    wss_peer.py bulk URL CA             a 200 KB request (many TLS records),
                                        then 100 small ones written at once;
                                        prints the reply sizes and order

Its WebSocket side is the asyncio client: the threaded sync client
(`websockets.sync`) reads and writes one `ssl.SSLSocket` from two threads,
and about one wss:// connection in a hundred (8 at a time, against wsloop
with either TLS stack) never had its upgrade request arrive; the asyncio
client, one thread, did not show it in 1,200.
"""
import asyncio
import json
import ssl
import sys
import urllib.request

from websockets.asyncio.client import connect


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def common_name(ws):
    cert = ws.transport.get_extra_info("peercert")
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def round_trip(ws, request_id):
    request = {"requestID": request_id, "command": f"Eject the hot dog {request_id}."}
    await ws.send(json.dumps(request))
    reply = await recv(ws)
    print("reply " + json.dumps(reply, sort_keys=True), flush=True)


async def bulk(ws):
    command = "x" * 200_000
    await ws.send(json.dumps({"requestID": 1, "command": command}))
    reply = await recv(ws)
    print(f"big {reply['requestID']} {len(reply['someOtherThing'])}", flush=True)
    for n in range(2, 102):
        await ws.send(json.dumps({"requestID": n, "command": f"c{n}"}))
    ids = [(await recv(ws))["requestID"] for _ in range(100)]
    print("in order" if ids == list(range(2, 102)) else f"out of order {ids}", flush=True)


async def websocket(mode, url, ca):
    async with connect(url, ssl=context(ca), open_timeout=10, close_timeout=5) as ws:
        print("cn " + common_name(ws), flush=True)
        if mode == "roundtrip":
            await round_trip(ws, 1)
            return
        if mode == "bulk":
            await bulk(ws)
            return
        # hold: one round trip per stdin line, read off the event loop.
        loop = asyncio.get_running_loop()
        n = 0
        while await loop.run_in_executor(None, sys.stdin.readline):
            n += 1
            await round_trip(ws, n)


def main():
    mode, url, ca = sys.argv[1:4]
    if mode == "get":
        with urllib.request.urlopen(url, context=context(ca), timeout=10) as answer:
            print(f"status {answer.status}", flush=True)
            print(answer.read().decode(), flush=True)
        return
    asyncio.run(websocket(mode, url, ca))


if __name__ == "__main__":
    main()

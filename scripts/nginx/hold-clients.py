#!/usr/bin/env python3
"""Many WebSocket clients held open at once through nginx, for
scripts/nginx-proxy-test. Each opens its TCP connection from a loopback
source address of its own (127.0.x.y: the whole 127/8 is loopback on
Linux), so nginx forwards a distinct client address for each
($proxy_add_x_forwarded_for). Prints one JSON line per phase:

    distinct N   N clients from N addresses: {"101": N} when all are served
    same N       N clients from one address, then one more from it and one
                 more that also forges X-Forwarded-For: their statuses
"""
import asyncio
import json
import sys
from collections import Counter

HANDSHAKE = (
    "GET /server HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n{extra}\r\n"
)
# Connections opened at once; nginx's backlog and ours stay well clear.
BATCH = 100


def source(i):
    """The i-th distinct loopback source address, avoiding .0 and .255."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


async def open_one(port, src, extra=""):
    """Upgrades through nginx from `src`; returns (status, body, writer)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), 10)
    host = f"127.0.0.1:{port}"
    writer.write(HANDSHAKE.format(host=host, extra=extra).encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split()[1])
    body = b""
    if status != 101:
        try:
            body = await asyncio.wait_for(reader.read(4096), 5)
        except asyncio.TimeoutError:
            pass
    return status, body.decode(errors="replace").strip(), writer


async def open_many(port, sources):
    held, statuses = [], Counter()
    for start in range(0, len(sources), BATCH):
        batch = sources[start:start + BATCH]
        results = await asyncio.gather(
            *(open_one(port, src) for src in batch), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                statuses[type(result).__name__] += 1
            else:
                statuses[str(result[0])] += 1
                held.append(result[2])
    return held, statuses


async def main():
    port, phase, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if phase == "distinct":
        held, statuses = await open_many(port, [source(i) for i in range(count)])
        print(json.dumps(dict(statuses)), flush=True)
    else:
        one = "127.0.250.1"
        held, statuses = await open_many(port, [one] * count)
        status, body, writer = await open_one(port, one)
        held.append(writer)
        forged, forged_body, writer = await open_one(
            port, one, "X-Forwarded-For: 10.99.99.99\r\n")
        held.append(writer)
        print(json.dumps({"held": dict(statuses), "next": [status, body],
                          "forged": [forged, forged_body]}), flush=True)
    for writer in held:
        writer.close()


asyncio.run(main())

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
"""
import json
import ssl
import sys
import urllib.request

from websockets.sync.client import connect


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def common_name(sock):
    cert = sock.getpeercert()
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


def round_trip(ws, request_id):
    request = {"requestID": request_id, "command": f"Eject the hot dog {request_id}."}
    ws.send(json.dumps(request))
    reply = json.loads(ws.recv(timeout=10))
    print("reply " + json.dumps(reply, sort_keys=True), flush=True)


def bulk(ws):
    command = "x" * 200_000
    ws.send(json.dumps({"requestID": 1, "command": command}))
    reply = json.loads(ws.recv(timeout=10))
    print(f"big {reply['requestID']} {len(reply['someOtherThing'])}", flush=True)
    for n in range(2, 102):
        ws.send(json.dumps({"requestID": n, "command": f"c{n}"}))
    ids = [json.loads(ws.recv(timeout=10))["requestID"] for _ in range(100)]
    print("in order" if ids == list(range(2, 102)) else f"out of order {ids}", flush=True)


def main():
    mode, url, ca = sys.argv[1:4]
    if mode == "get":
        with urllib.request.urlopen(url, context=context(ca), timeout=10) as answer:
            print(f"status {answer.status}", flush=True)
            print(answer.read().decode(), flush=True)
        return
    with connect(url, ssl=context(ca), open_timeout=10, close_timeout=5) as ws:
        print("cn " + common_name(ws.socket), flush=True)
        if mode == "roundtrip":
            round_trip(ws, 1)
            return
        if mode == "bulk":
            bulk(ws)
            return
        for n, _line in enumerate(sys.stdin, start=1):
            round_trip(ws, n)


if __name__ == "__main__":
    main()

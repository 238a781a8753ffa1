#!/usr/bin/env python3
"""A small HTTP/3 load generator on aioquic, for bench/gateway.py's h3 row: h2load on Debian is
built without QUIC, and no packaged tool loads HTTP/3. ``connections`` QUIC connections, each
keeping ``streams`` GET requests in flight for ``seconds``; prints one JSON line in the shape
_common's runners return (p99_ms is the mean, as for h2load).

    python bench/_h3load.py URL SECONDS CONNECTIONS [--host H] [--streams M]

It is Python, so on a 2-core machine it takes CPU the server would otherwise have: compare the
server's CPU per request, not requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from urllib.parse import urlsplit

import uvloop
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.h3 = H3Connection(self._quic)
        self.waiting: dict[int, tuple[asyncio.Future, list[int]]] = {}

    def quic_event_received(self, event) -> None:
        for ev in self.h3.handle_event(event):
            w = self.waiting.get(ev.stream_id)
            if w is None:
                continue
            if isinstance(ev, HeadersReceived) and not w[1]:
                w[1].append(int(dict(ev.headers)[b":status"]))
            if isinstance(ev, (HeadersReceived, DataReceived)) and ev.stream_ended:
                del self.waiting[ev.stream_id]
                if not w[0].done():
                    w[0].set_result(w[1][0] if w[1] else 0)

    async def get(self, authority: str, path: str) -> int:
        sid = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.waiting[sid] = (fut, [])
        self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()), (b":path", path.encode())], end_stream=True)
        self.transmit()
        return await asyncio.wait_for(fut, 10)


async def run(url: str, seconds: float, connections: int, streams: int, host: str | None) -> dict:
    u = urlsplit(url)
    authority = host or u.hostname or ""
    path = u.path or "/"
    stats = {"done": 0, "non2xx": 0, "errors": 0, "latency": 0.0}
    end = time.monotonic() + seconds

    async def worker(client: Client) -> None:
        while time.monotonic() < end:
            t = time.monotonic()
            try:
                status = await client.get(authority, path)
            except (asyncio.TimeoutError, ConnectionError):
                stats["errors"] += 1
                continue
            stats["latency"] += time.monotonic() - t
            stats["done"] += 1
            if not 200 <= status < 300:
                stats["non2xx"] += 1

    async def connection() -> None:
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=authority, verify_mode=ssl.CERT_NONE)
        async with connect(u.hostname or "127.0.0.1", u.port or 443, configuration=cfg, create_protocol=Client) as client:
            await asyncio.gather(*(worker(client) for _ in range(streams)))

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    took = time.monotonic() - started
    done = stats["done"]
    return {
        "rps": done / took, "requests": done, "p99_ms": stats["latency"] / done * 1000 if done else float("nan"),
        "non2xx": stats["non2xx"], "socket_errors": stats["errors"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("seconds", type=float)
    ap.add_argument("connections", type=int)
    ap.add_argument("--host")
    ap.add_argument("--streams", type=int, default=10)
    a = ap.parse_args()
    uvloop.install()
    print(json.dumps(asyncio.run(run(a.url, a.seconds, a.connections, a.streams, a.host))))


if __name__ == "__main__":
    main()

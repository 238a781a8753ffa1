#!/usr/bin/env python3
"""The floor for a Python proxy: the least a uvloop + httptools HTTP/1.1 keep-alive proxy can
do per request (parse, re-serialise, forward; one upstream connection per client connection,
no routing, no headers added but X-Forwarded-For, no error handling worth the name).

bench/gateway.py runs it beside homeplane and nginx, so the report shows how much of
homeplane's cost is the language and libraries and how much is homeplane.

    python bench/_floor_proxy.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client, backend: int):
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        out = [b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()]
        for n, v in self.headers:
            out += [n, b": ", v, b"\r\n"]
        out.append(b"\r\n")
        self.headers = []
        self.out = out

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        if not self.client.transport.is_closing():
            self.client.transport.write(b"".join(self.out))


class Client(asyncio.Protocol):
    def __init__(self, backend: int):
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.upstream: Upstream | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.transport.close()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        out = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n"]
        for n, v in self.headers:
            out += [n, b": ", v, b"\r\n"]
        out.append(b"x-forwarded-for: 127.0.0.1\r\n\r\n")
        self.headers = []
        if self.upstream is None:
            asyncio.ensure_future(self.connect(b"".join(out)))
        else:
            self.upstream.transport.write(b"".join(out))

    async def connect(self, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self, self.backend), "127.0.0.1", self.backend)
        self.upstream.transport.write(head)


async def main(port: int, backend: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Client(backend), "127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))

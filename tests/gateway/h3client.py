"""An HTTP/3 client for the tests: aioquic's asyncio client and its H3 state machine."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamReset
from aioquic.tls import SessionTicket

from homeplane.gateway.frontends.quic import socket_buffers


@dataclass
class H3Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # the stream's reset code, when the server reset it


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.answers: dict[int, H3Answer] = {}
        self.done: dict[int, asyncio.Future[H3Answer]] = {}

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        socket_buffers(transport.get_extra_info("socket"))

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.done:
            self.answers[event.stream_id].reset = event.error_code
            self._finish(event.stream_id)
            return
        for ev in self.h3.handle_event(event):
            a = self.answers.get(ev.stream_id)  # type: ignore[attr-defined]
            if a is None:
                continue
            if isinstance(ev, HeadersReceived):
                fields = {k.decode(): v.decode() for k, v in ev.headers}
                if a.status:
                    a.trailers = fields
                else:
                    a.status = int(fields.pop(":status"))
                    a.headers = fields
            elif isinstance(ev, DataReceived):
                a.received += ev.data  # (bytes += bytes would copy the whole body each time)
            if getattr(ev, "stream_ended", False):
                self._finish(ev.stream_id)  # type: ignore[attr-defined]

    def _finish(self, stream_id: int) -> None:
        fut = self.done.get(stream_id)
        if fut is not None and not fut.done():
            self.answers[stream_id].body = bytes(self.answers[stream_id].received)
            fut.set_result(self.answers[stream_id])

    async def request(self, method: str, authority: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                      chunk: int = 65536) -> H3Answer:
        sid = self._quic.get_next_available_stream_id()
        self.answers[sid] = H3Answer()
        self.done[sid] = asyncio.get_running_loop().create_future()
        hdrs = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()), (b":path", path.encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.h3.send_headers(sid, hdrs, end_stream=not body)
        for i in range(0, len(body), chunk):
            self.h3.send_data(sid, body[i : i + chunk], end_stream=i + chunk >= len(body))
            self.transmit()
            await asyncio.sleep(0)
        self.transmit()
        return await asyncio.wait_for(self.done[sid], 60)


def config(server_name: str | None = None, ca: str | None = None, ticket: SessionTicket | None = None,
           tickets: list[SessionTicket] | None = None) -> QuicConfiguration:
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name, max_data=16 << 20,
                          max_stream_data=8 << 20)
    if ca:
        c.load_verify_locations(ca)
    else:
        c.verify_mode = ssl.CERT_NONE
    c.session_ticket = ticket
    return c


async def session(port: int, server_name: str | None = None, ca: str | None = None, ticket: SessionTicket | None = None,
                  tickets: list[SessionTicket] | None = None, wait_connected: bool = True) -> Any:
    """``async with session(port) as client: await client.request(...)``"""
    return connect("127.0.0.1", port, configuration=config(server_name, ca, ticket), create_protocol=_Client,
                   session_ticket_handler=tickets.append if tickets is not None else None, wait_connected=wait_connected)


def get(port: int, authority: str, path: str = "/echo", method: str = "GET", headers: dict[str, str] | None = None,
        body: bytes = b"", server_name: str | None = None, ca: str | None = None) -> H3Answer:
    """One request on a new connection (the test's own event loop)."""
    async def run() -> H3Answer:
        async with await session(port, server_name or authority.split(":")[0], ca) as client:
            return await client.request(method, authority, path, headers, body)
    return asyncio.run(asyncio.wait_for(run(), 60))

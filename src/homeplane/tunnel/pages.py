"""The edge's own answers (no connector, origin unreachable, a rule's ``http_status``), in the
client's protocol: HTTP/1.1, or HTTP/2 when TLS the edge terminated chose ``h2``."""

from __future__ import annotations

import asyncio
import html
from http import HTTPStatus

import h2.config
import h2.connection
import h2.events
import h2.exceptions

MAX_HEAD = 64 * 1024
ANSWER_TIMEOUT = 10.0

MESSAGES = {
    502: "The tunnel is up, but the home side could not reach the service for this hostname.",
    503: "No tunnel connector is connected to this edge, so the home network cannot be reached right now.",
    404: "This hostname is not served through the tunnel.",
    400: "The request's Host is not a host name.",
    431: "The request's header is too large.",
    504: "The home side did not answer in time.",
}


def page(status: int, hostname: str) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    msg = MESSAGES.get(status, phrase)
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {phrase}</title></head>"
        f"<body><h1>{status} {phrase}</h1><p>{html.escape(msg)}</p><p><small>{html.escape(hostname or '')} · homeplane edge"
        f"</small></p></body></html>\n"
    ).encode()


class StatusAnswer(asyncio.Protocol):
    """Takes over a client connection and answers its request(s) with one status, then closes."""

    def __init__(self, status: int, hostname: str, alpn: str, early: bytes = b""):
        self.status = status
        self.hostname = hostname
        self.h2 = alpn == "h2"
        self.buf = bytearray(early)
        self.transport: asyncio.Transport | None = None
        self.conn: h2.connection.H2Connection | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # a client that never sends its request does not keep the socket
        asyncio.get_event_loop().call_later(ANSWER_TIMEOUT, transport.close)
        if self.h2:
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
            self.conn.initiate_connection()
            transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]
        early, self.buf = bytes(self.buf), bytearray()
        self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self.done or self.transport is None:
            return
        body = page(self.status, self.hostname)
        if self.conn is not None:
            try:
                events = self.conn.receive_data(data) if data else []
            except h2.exceptions.ProtocolError:
                self.transport.close()
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    self.conn.send_headers(ev.stream_id, [(":status", str(self.status)), ("content-type", "text/html; charset=utf-8"),
                                                          ("content-length", str(len(body)))])
                    self.conn.send_data(ev.stream_id, body, end_stream=True)
                    self.conn.close_connection(last_stream_id=ev.stream_id)
                    self.done = True
                    break
            self.transport.write(self.conn.data_to_send())
            if self.done:
                self.transport.close()
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf and len(self.buf) < MAX_HEAD:
            return
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        self.done = True
        self.transport.write(
            f"HTTP/1.1 {self.status} {phrase}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n".encode() + body
        )
        self.transport.close()

    def eof_received(self) -> bool:
        return False

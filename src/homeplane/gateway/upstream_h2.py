"""HTTP/2 over cleartext (h2c, prior knowledge) to backends whose port says so.

Envoy Gateway speaks h2c to a Service port with ``appProtocol: kubernetes.io/h2c`` (and to a
``Backend`` with ``gateway.envoyproxy.io/h2c``). This connection keeps the interface of the
HTTP/1.1 one, so the exchange does not change: the request it writes, in HTTP/1.1 form, is read
back with httptools and sent as HEADERS and DATA frames on a new stream; the response frames
come back as the same ``upstream_*`` callbacks. One request at a time per connection; the
connection is kept and reused like an HTTP/1.1 keep-alive one. Upgrades (WebSocket) are not
carried over h2c.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httptools

from homeplane.gateway.headers import HOP_BY_HOP
from homeplane.gateway.upstream import PooledConnection, set_nodelay

if TYPE_CHECKING:
    from homeplane.gateway.cluster import EndpointState
    from homeplane.gateway.exchange import Exchange

H2C_PROTOCOLS = frozenset({"kubernetes.io/h2c", "h2c", "gateway.envoyproxy.io/h2c"})
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"transfer-encoding", b"upgrade", b"http2-settings"}


class H2UpstreamConnection(PooledConnection):
    def __init__(self, endpoint: EndpointState):
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.request = httptools.HttpRequestParser(self)  # reads back what the exchange writes
        self.exchange: Exchange | None = None
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self.upgraded = False
        self.head_only = False
        self.stream_id: int | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: deque[bytes] = deque()  # request body waiting for flow-control window
        self._body_done = False

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        self.h2.initiate_connection()
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail(f"invalid HTTP/2 from backend: {e}")
            return
        for ev in events:
            ex = self.exchange
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == self.stream_id and ex is not None:
                status = 0
                headers = []
                for n, v in ev.headers:
                    if n == b":status":
                        status = int(v)
                    elif not n.startswith(b":"):
                        headers.append((n, v))
                ex.upstream_head(status, headers, True)
            elif isinstance(ev, h2.events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_id == self.stream_id and ex is not None and ev.data:
                    ex.upstream_data(ev.data)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == self.stream_id:
                self.stream_id = None
                self.exchange = None
                if ex is not None:
                    ex.upstream_end(reusable=not self.closed)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == self.stream_id:
                self._fail(f"backend reset the stream (error code {ev.error_code})")
                return
            elif isinstance(ev, h2.events.WindowUpdated):
                self._flush_body()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True  # GOAWAY: finish what is in flight, take no more
        self._send()
        ex = self.exchange
        if ex is not None:
            ex.sink.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            self.endpoint.idle.remove(self)  # type: ignore[arg-type]
        except ValueError:
            pass
        ex = self.exchange
        self.exchange = None
        if ex is not None:
            ex.upstream_lost(self)  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    # --- the request, read back from its HTTP/1.1 form ---------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body.clear()
        self._body_done = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        authority = next((v for n, v in self._headers if n == b"host"), b"")
        te = [v for n, v in self._headers if n == b"te" and v.strip().lower() == b"trailers"]
        headers = [
            (b":method", self.request.get_method()),
            (b":scheme", b"http"),
            (b":authority", authority),
            (b":path", self._url),
        ] + [(n, v) for n, v in self._headers if n not in _NOT_FORWARDED] + [(b"te", v) for v in te[:1]]
        self.stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(self.stream_id, headers)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._flush_body()

    def on_message_complete(self) -> None:
        self._body_done = True
        self._flush_body()

    def _flush_body(self) -> None:
        sid = self.stream_id
        if sid is None:
            return
        try:
            while self._body:
                window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                if window <= 0:
                    return  # a WINDOW_UPDATE will bring us back
                chunk = self._body.popleft()
                if len(chunk) > window:
                    self._body.appendleft(chunk[window:])
                    chunk = chunk[:window]
                self.h2.send_data(sid, chunk)
            if self._body_done:
                self._body_done = False
                self.h2.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            self._body.clear()

    # --- used by the exchange ------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.request.feed_data(data)
        except httptools.HttpParserError as e:  # cannot happen with requests we built; fail loudly
            self._fail(f"request could not be carried over h2c: {e}")
            return
        self._send()

    def _send(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _fail(self, message: str) -> None:
        ex = self.exchange
        self.close()
        if ex is not None:
            ex.upstream_failed("protocol", message)

    def release(self) -> None:
        self.exchange = None
        self.reused = True
        self.head_only = False
        self.idle_since = time.monotonic()
        self.request = httptools.HttpRequestParser(self)
        if not self.closed:
            self.endpoint.idle.append(self)  # type: ignore[arg-type]

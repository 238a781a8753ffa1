"""The client-facing HTTP/2 protocol, on the h2 state machine.

Each stream becomes one :class:`Exchange`, exactly as an HTTP/1.1 request does;
the stream object is its sink. Response data respects HTTP/2 flow control:
what the client's window does not allow yet is buffered per stream, and the
upstream connection is paused while that buffer is large.
"""

from __future__ import annotations

import asyncio
import time

import homeplane.h2speed  # noqa: F401 (h2's per-frame repr, made cheap)
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from homeplane.gateway.base import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_WINDOW,
    ConnInfo,
    ExchangeState,
    NoUpgrade,
    PortHooks,
)
from homeplane.gateway.exchange import Exchange


_HIGH_WATER = 256 * 1024
_FORBIDDEN = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}


class ClientStream(NoUpgrade):
    """Sink for one stream's exchange."""

    __slots__ = (
        "conn", "stream_id", "exchange", "pending", "pending_bytes", "end_pending", "closed", "paused", "opened",
        "body_paused", "unacked", "trailers",
    )

    def __init__(self, conn: H2Connection, stream_id: int, opened: float = 0.0):
        self.opened = opened
        self.body_paused = False  # the upstream cannot take more of the request body now
        self.unacked = 0  # request body bytes received but not yet acknowledged (window held back)
        self.conn = conn
        self.stream_id = stream_id
        self.exchange: Exchange | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.end_pending = False
        self.closed = False
        self.paused = False
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent with the end of the body

    def respond_head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None, has_body: bool) -> None:
        if self.closed:
            return
        hdrs = [(b":status", str(status).encode())]
        hdrs += [(n, v) for n, v in headers if n not in _FORBIDDEN]
        if length is not None:
            hdrs.append((b"content-length", str(length).encode()))
        end = not has_body or length == 0  # (a HEAD answer: has_body is False, its length kept)
        try:
            self.conn.h2.send_headers(self.stream_id, hdrs, end_stream=end)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        if end:
            self.closed = True

    def respond_data(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.push()
        if self.pending_bytes > _HIGH_WATER and not self.paused and self.exchange is not None:
            self.paused = True
            self.exchange.downstream_paused()

    def push(self) -> None:
        """Send as much pending data as the flow-control windows allow."""
        h2c = self.conn.h2
        while self.pending:
            try:
                window = h2c.local_flow_control_window(self.stream_id)
            except h2.exceptions.StreamClosedError:
                self.pending = []
                self.closed = True
                return
            if window <= 0:
                return
            chunk = self.pending[0]
            size = min(window, len(chunk), h2c.max_outbound_frame_size)
            h2c.send_data(self.stream_id, chunk[:size])
            self.pending_bytes -= size
            if size == len(chunk):
                self.pending.pop(0)
            else:
                self.pending[0] = chunk[size:]
        if self.paused and self.pending_bytes < _HIGH_WATER // 2 and self.exchange is not None:
            self.paused = False
            self.exchange.downstream_resumed()
        if self.end_pending and not self.pending:
            self.end_pending = False
            self._end()

    def respond_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = [(n, v) for n, v in trailers if n not in _FORBIDDEN]

    def respond_end(self) -> None:
        if self.closed:  # the headers ended the stream (an empty answer): it still has to go out
            self.conn.stream_done(self)
            self.conn.flush()
            return
        if self.pending:
            self.end_pending = True
        else:
            self._end()
        self.conn.flush()

    def _end(self) -> None:
        try:
            if self.trailers:
                self.conn.h2.send_headers(self.stream_id, self.trailers, end_stream=True)
            else:
                self.conn.h2.end_stream(self.stream_id)
        except h2.exceptions.ProtocolError:
            pass
        self.closed = True
        self.conn.stream_done(self)

    def respond_abort(self) -> None:
        if not self.closed:
            try:
                self.conn.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except h2.exceptions.ProtocolError:
                pass
        self.closed = True
        self.conn.stream_done(self)
        self.conn.flush()

    def flush(self) -> None:
        self.conn.flush()

    def pause_request_body(self) -> None:
        # HTTP/2 flow control: the stream's data stops being acknowledged, so the client can send
        # no more than its window until the upstream takes what it has
        self.body_paused = True

    def resume_request_body(self) -> None:
        self.body_paused = False
        if self.unacked and not self.closed:
            n, self.unacked = self.unacked, 0
            try:
                self.conn.h2.acknowledge_received_data(n, self.stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            self.conn.flush()


# Rapid reset (CVE-2023-44487), counted as Envoy counts it: a stream the client resets within
# a second of opening it, before any response, is premature. Once 500 streams have ended, half
# of them premature ends the connection; before that, 250 premature resets do.
PREMATURE_LIFETIME = 1.0
PREMATURE_MIN_STREAMS = 500
PREMATURE_ABSOLUTE = PREMATURE_MIN_STREAMS // 2


class H2Connection(asyncio.Protocol):
    def __init__(self, server: PortHooks, info: ConnInfo | None = None, fresh: bool = True):
        self.server = server
        self.fresh = fresh
        self.dp = server.dp
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        )
        self.streams: dict[int, ClientStream] = {}
        self.info = info
        self.listener = None
        self.deadline = 0.0
        self.current = None  # the sweep checks exchanges through exchanges()
        self.closed = False
        self.streams_ended = 0
        self.premature_resets = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.info is None:
            peer = transport.get_extra_info("peername") or ("", 0)
            local = transport.get_extra_info("sockname") or ("", 0)
            tls = transport.get_extra_info("ssl_object")
            sni = self.server.sni_of(tls) if tls is not None else None
            self.info = ConnInfo(str(peer[0]), int(peer[1]), str(local[0]), int(local[1]),
                                 b"https" if tls is not None else b"http", sni, "HTTP/2")
        else:
            self.info.protocol = "HTTP/2"
        if self.info.sni:
            self.listener = self.server.table.listener_for(self.info.sni.encode())
        # ClientTrafficPolicy http2 settings of the listener (by SNI, else the port's first)
        lt = self.listener or (self.server.table.listeners[0] if self.server.table.listeners else None)
        conf = lt.conf if lt is not None else None
        streams, stream_window, conn_window = (
            (conf.h2_max_streams, conf.h2_stream_window, conf.h2_connection_window)
            if conf is not None else (DEFAULT_MAX_STREAMS, DEFAULT_STREAM_WINDOW, DEFAULT_CONNECTION_WINDOW)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 60 * 1024,
            },
        )
        self.h2.initiate_connection()
        if conn_window > 65535:  # the protocol's initial connection window
            self.h2.increment_flow_control_window(conn_window - 65535)
        self.dp.connection_opened(self, self.fresh, (self.info.client_ip, self.info.client_port))
        self.deadline = time.monotonic() + self.dp.settings.idle_timeout
        self.flush()

    def exchanges(self) -> list[Exchange]:
        return [s.exchange for s in self.streams.values() if s.exchange is not None]

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                s = self.streams.get(ev.stream_id)
                if s is not None and s.exchange is not None and s.exchange.state != ExchangeState.DONE:
                    s.exchange.feed_body(ev.data)
                    if s.body_paused:  # acknowledged when the upstream takes more
                        s.unacked += ev.flow_controlled_length
                        continue
                try:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
            elif isinstance(ev, h2.events.StreamEnded):
                s = self.streams.get(ev.stream_id)
                if s is not None and s.exchange is not None:
                    s.exchange.end_body()
            elif isinstance(ev, h2.events.StreamReset):
                s = self.streams.pop(ev.stream_id, None)
                if s is not None:
                    s.closed = True
                    self.streams_ended += 1
                    self.deadline = time.monotonic() + self.dp.settings.idle_timeout
                    if s.unacked:  # held-back body bytes still count against the connection's window
                        self.h2.increment_flow_control_window(s.unacked)
                        s.unacked = 0
                    if s.exchange is not None:
                        if not s.exchange.status and time.monotonic() - s.opened <= PREMATURE_LIFETIME:
                            self.premature_resets += 1
                        s.exchange.client_gone()
                    if self._too_many_resets():
                        return
            elif isinstance(ev, h2.events.WindowUpdated):
                targets = self.streams.values() if ev.stream_id == 0 else [self.streams.get(ev.stream_id)]
                for s in list(targets):
                    if s is not None:
                        s.push()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.flush()
                if self.transport is not None:
                    self.transport.close()
                return
        self.flush()

    def _request(self, ev: h2.events.RequestReceived) -> None:
        method = path = authority = b""
        headers: list[tuple[bytes, bytes]] = []
        for n, v in ev.headers:
            if n.startswith(b":"):
                if n == b":method":
                    method = v
                elif n == b":path":
                    path = v
                elif n == b":authority":
                    authority = v
            elif n == b"cookie" and headers and any(h[0] == b"cookie" for h in headers):
                # RFC 9113 §8.2.3: split cookie fields are joined for HTTP/1.1
                headers = [(h[0], h[1] + b"; " + v) if h[0] == b"cookie" else h for h in headers]
            else:
                headers.append((n, v))
        if authority and not any(h[0] == b"host" for h in headers):
            headers.insert(0, (b"host", authority))
        stream = ClientStream(self, ev.stream_id, time.monotonic())
        self.streams[ev.stream_id] = stream
        ended = ev.stream_ended is not None
        has_body = not ended
        assert self.info is not None
        ex = Exchange(self.dp, stream, self.info, self.server.table, method, path or b"/", headers, b"2", has_body, self.listener)
        stream.exchange = ex
        if has_body:
            # the upstream request needs framing: an HTTP/2 body has no length of its own
            pass
        ex.start()
        if ended and ex.state != ExchangeState.DONE:
            ex.end_body()

    def _too_many_resets(self) -> bool:
        """Rapid reset: GOAWAY with ENHANCE_YOUR_CALM and close (as nghttp2 and Go do)."""
        n, bad = self.streams_ended, self.premature_resets
        if bad < PREMATURE_ABSOLUTE and not (n >= PREMATURE_MIN_STREAMS and bad * 2 >= n):
            return False
        self.dp.log.warning("HTTP/2 client %s reset %d of %d streams prematurely: connection closed",
                            self.info.client_ip if self.info else "?", bad, n)
        self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"too_many_premature_resets")
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.client_gone()
        self.streams.clear()
        self.flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        return True

    def stream_done(self, stream: ClientStream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self.streams_ended += 1
        self.deadline = time.monotonic() + self.dp.settings.idle_timeout  # idle counts from the last stream

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.dp.connection_closed(self)
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.client_gone()
        self.streams.clear()

    def pause_writing(self) -> None:
        # a client that does not read: stop reading it too, or frames it makes us answer
        # (PING, SETTINGS, WINDOW_UPDATE acknowledgements) would pile up without bound
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
        for s in self.streams.values():
            if s.exchange is not None:
                s.exchange.downstream_paused()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        for s in self.streams.values():
            if s.exchange is not None and not s.paused:
                s.exchange.downstream_resumed()

    def idle(self) -> bool:
        return not self.streams

    def goaway(self) -> None:
        """The listener is drained: an idle connection says GOAWAY and closes (one with open
        streams ends by its idle timeout after them; the h2 state machine takes no frames once
        it has sent GOAWAY)."""
        if self.idle() and not self.closed and self.transport is not None:
            self.h2.close_connection()
            self.flush()
            self.transport.close()

    def check_deadline(self, now: float) -> None:
        if self.streams:
            self.deadline = now + self.dp.settings.idle_timeout
        elif self.deadline and now >= self.deadline and self.transport is not None:
            self.h2.close_connection()
            self.flush()
            self.transport.close()

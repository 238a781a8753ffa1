"""The client-facing HTTP/3 protocol, on aioquic's H3 state machine.

Each request stream becomes one :class:`Exchange`, exactly as an HTTP/2 stream does, with the
stream object as its sink; everything after the request head (routing, filters, policies,
retries, timeouts, the access log) is shared with the other protocols.

What differs from HTTP/2:

- Response data waits in aioquic's per-stream send buffer until congestion and flow control
  let it go; above ``_HIGH_WATER`` unsent the upstream is paused, and it resumes as
  acknowledgements open the windows and drain it.
- Requests that arrive in 0-RTT (before the handshake completes) are replayable by anyone who
  captured them: as Envoy's default early-data policy, only safe methods are served then and
  the others get ``425 Too Early`` (RFC 8470), which browsers retry after the handshake.
- The request body is not flow-controlled by the upstream's pace: aioquic grants credit as
  data arrives, so a body is bounded by what the exchange buffers (as for HTTP/1.1 bodies
  read ahead).
- Upgrades do not exist (RFC 9114 §4.4); Extended CONNECT (RFC 9220) is not offered, so
  WebSockets stay on HTTP/1.1 and HTTP/2.
"""

from __future__ import annotations

from typing import Any

from aioquic.h3.connection import H3Connection, ErrorCode
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic import events as qe

from homeplane.gateway.base import ConnInfo, ExchangeState, NoUpgrade, PortHooks
from homeplane.gateway.exchange import Exchange
from homeplane.gateway.frontends.quic import QuicDriver, QuicEndpoint, ServerConnection

_HIGH_WATER = 256 * 1024
_FORBIDDEN = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
_SAFE = {b"GET", b"HEAD", b"OPTIONS", b"TRACE"}  # RFC 9110 §9.2.1: what may be served from 0-RTT
MAX_HEADER_BYTES = 60 * 1024  # as the HTTP/2 side's MAX_HEADER_LIST_SIZE


def _buffered(quic: ServerConnection, stream_id: int) -> int:
    """Response bytes of a stream not sent yet: what congestion and flow control hold back
    (aioquic keeps them as the stream sender's pending ranges; it has no public accessor).
    Bytes in flight are not counted: they leave as acknowledgements come."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return sum(r.stop - r.start for r in stream.sender._pending)


class H3Stream(NoUpgrade):
    """Sink for one request stream's exchange."""

    __slots__ = ("session", "stream_id", "exchange", "closed", "paused", "trailers", "headers_sent")

    def __init__(self, session: H3Session, stream_id: int):
        self.session = session
        self.stream_id = stream_id
        self.exchange: Exchange | None = None
        self.closed = False
        self.paused = False
        self.headers_sent = False
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def respond_head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None, has_body: bool) -> None:
        if self.closed or self.session.h3 is None:
            return
        hdrs = [(b":status", str(status).encode())]
        hdrs += [(n, v) for n, v in headers if n not in _FORBIDDEN]
        if length is not None:
            hdrs.append((b"content-length", str(length).encode()))
        end = not has_body or length == 0
        try:
            self.session.h3.send_headers(self.stream_id, hdrs, end_stream=end)
        except (H3Error, AssertionError, ValueError):
            self.closed = True
            return
        self.headers_sent = True
        if end:
            self.closed = True
        self.session.schedule()

    def respond_data(self, data: bytes) -> None:
        if self.closed or not data or self.session.h3 is None:
            return
        try:
            self.session.h3.send_data(self.stream_id, data, end_stream=False)
        except (H3Error, AssertionError, ValueError):
            self.respond_abort()
            return
        self.session.schedule()
        if not self.paused and self.exchange is not None and _buffered(self.session.quic, self.stream_id) > _HIGH_WATER:
            self.paused = True
            self.session.paused.add(self)
            self.exchange.downstream_paused()

    def respond_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = [(n, v) for n, v in trailers if n not in _FORBIDDEN]

    def respond_end(self) -> None:
        if not self.closed and self.session.h3 is not None:
            try:
                if self.trailers:
                    self.session.h3.send_headers(self.stream_id, self.trailers, end_stream=True)
                else:
                    self.session.h3.send_data(self.stream_id, b"", end_stream=True)
            except (H3Error, AssertionError, ValueError):
                pass
        self.closed = True
        self.session.stream_done(self)

    def respond_abort(self) -> None:
        if not self.closed:
            try:
                self.session.quic.reset_stream(self.stream_id, ErrorCode.H3_INTERNAL_ERROR)
            except (AssertionError, ValueError):
                pass
        self.closed = True
        self.session.stream_done(self)

    def flush(self) -> None:
        self.session.schedule()

    def pause_request_body(self) -> None:
        pass  # see the module's note: aioquic grants credit as data arrives

    def resume_request_body(self) -> None:
        pass


    def drained(self) -> bool:
        return _buffered(self.session.quic, self.stream_id) < _HIGH_WATER // 2


class H3Session:
    """One QUIC connection of an HTTPS port's QUIC endpoint, speaking HTTP/3."""

    def __init__(self, server: PortHooks, endpoint: QuicEndpoint, conn: ServerConnection, addr: Any):
        self.server = server
        self.dp = server.dp
        self.endpoint = endpoint
        self.quic = conn
        self.addr = addr
        self.driver = QuicDriver(endpoint, conn, addr, self.quic_event)
        self.h3: H3Connection | None = None
        self.streams: dict[int, H3Stream] = {}
        self.paused: set[H3Stream] = set()
        self.handshake_done = False
        self.ended_ = False
        local = endpoint.address
        self.info = ConnInfo(str(addr[0]), int(addr[1]), str(local[0]), int(local[1]), b"https", None, "HTTP/3")
        self.listener: Any = None
        self.current = None  # the sweep reads exchanges()
        self.dp.connection_opened(self, fresh=False)  # counted; the limits were checked by new_session

    # --- what the data plane asks of a connection ------------------------------------------

    @property
    def transport(self) -> H3Session:
        return self  # the data plane closes connections through .transport.close()

    def close(self) -> None:
        if not self.ended_:
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR)
            self.schedule()  # after the last answer's packets

    def idle(self) -> bool:
        return not self.streams

    def exchanges(self) -> list[Exchange]:
        return [s.exchange for s in self.streams.values() if s.exchange is not None]

    def check_deadline(self, now: float) -> None:
        pass  # QUIC's own idle timeout (the listener's, at most quic.MAX_IDLE) closes idle connections

    def goaway(self) -> None:
        """The listener is drained: an idle connection closes now; one with requests in flight
        when they end (aioquic has no GOAWAY of its own to send first)."""
        if self.idle():
            self.close()

    # --- I/O ------------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: Any) -> None:
        self.driver.datagram(data, addr)
        self._resume_drained()

    def schedule(self) -> None:
        """Send what the exchanges wrote, once per loop turn (many writes, one pass of packets)."""
        self.driver.schedule()

    def _resume_drained(self) -> None:
        for s in [s for s in self.paused if s.closed or s.drained()]:
            self.paused.discard(s)
            s.paused = False
            if not s.closed and s.exchange is not None:
                s.exchange.downstream_resumed()

    # --- QUIC and HTTP/3 events -----------------------------------------------------------

    def quic_event(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.ProtocolNegotiated):
            if event.alpn_protocol == "h3" and self.h3 is None:
                self.h3 = H3Connection(self.quic)
        elif isinstance(event, qe.HandshakeCompleted):
            self.handshake_done = True
            self.endpoint.handshake_done(self.addr)
        elif isinstance(event, qe.ConnectionIdIssued):
            self.endpoint.cid_issued(event.connection_id, self)
        elif isinstance(event, qe.ConnectionIdRetired):
            self.endpoint.cid_retired(event.connection_id)
        elif isinstance(event, qe.ConnectionTerminated):
            self._ended()
            return
        elif isinstance(event, qe.StreamReset):
            s = self.streams.pop(event.stream_id, None)
            if s is not None:
                s.closed = True
                if s.exchange is not None:
                    s.exchange.client_gone()
            return
        if self.h3 is not None:
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    s = self.streams.get(ev.stream_id)
                    if s is None:
                        self._request(ev)
                    elif s.exchange is not None and ev.stream_ended:
                        s.exchange.end_body()  # request trailers: the body ends here (they are not forwarded)
                elif isinstance(ev, DataReceived):
                    s = self.streams.get(ev.stream_id)
                    if s is not None and s.exchange is not None and s.exchange.state != ExchangeState.DONE:
                        if ev.data:
                            s.exchange.feed_body(ev.data)
                        if ev.stream_ended:
                            s.exchange.end_body()

    def _request(self, ev: HeadersReceived) -> None:
        if self.info.sni is None and self.quic.sni:
            self.info.sni = self.quic.sni
            self.listener = self.server.table.listener_for(self.quic.sni.encode())
        method = path = authority = b""
        headers: list[tuple[bytes, bytes]] = []
        size = 0
        for n, v in ev.headers:
            size += len(n) + len(v) + 32  # RFC 9114 §4.2.2 counts 32 bytes per field
            if n.startswith(b":"):
                if n == b":method":
                    method = v
                elif n == b":path":
                    path = v
                elif n == b":authority":
                    authority = v
            elif n == b"cookie" and any(h[0] == b"cookie" for h in headers):
                headers = [(h[0], h[1] + b"; " + v) if h[0] == b"cookie" else h for h in headers]  # RFC 9114 §4.2.1
            else:
                headers.append((n, v))
        if authority and not any(h[0] == b"host" for h in headers):
            headers.insert(0, (b"host", authority))
        stream = H3Stream(self, ev.stream_id)
        self.streams[ev.stream_id] = stream
        has_body = not ev.stream_ended
        ex = Exchange(self.dp, stream, self.info, self.server.table, method, path or b"/", headers, b"3", has_body, self.listener)
        stream.exchange = ex
        if size > MAX_HEADER_BYTES:
            ex.respond_simple(431, b"request header fields too large\n")
        elif not self.handshake_done and method not in _SAFE:
            ex.error = "early data: unsafe method"
            ex.respond_simple(425, b"too early\n")  # RFC 8470: the client sends it again after the handshake
        else:
            ex.start()
            if not has_body and ex.state != ExchangeState.DONE:
                ex.end_body()
        if has_body and ex.state == ExchangeState.DONE:
            try:  # answered before the body: the client may stop sending it (RFC 9114 §4.1)
                self.quic.stop_stream(ev.stream_id, ErrorCode.H3_NO_ERROR)
            except (AssertionError, ValueError):
                pass

    def stream_done(self, stream: H3Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        self.paused.discard(stream)
        self.schedule()
        if not self.streams:
            self.endpoint.session_idle(self)

    def _ended(self) -> None:
        if self.ended_:
            return
        self.ended_ = True
        self.driver.stop()
        self.endpoint.ended(self, self.handshake_done, self.addr)
        self.dp.connection_closed(self)
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.client_gone()
        self.streams.clear()


def new_session(server: Any) -> Any:
    """The QuicEndpoint's session factory for one HTTPS port server; None refuses the
    connection (overload, the port's connectionLimit, the process's connection cap), as the
    TCP side closes such connections at once."""
    dp = server.dp

    def make(endpoint: QuicEndpoint, conn: ServerConnection, addr: Any) -> H3Session | None:
        if dp.overload.refuse_connections or len(dp.connections) >= dp.settings.max_connections or (
            server.connection_limit is not None and len(server.conns) >= server.connection_limit
        ):
            return None
        return H3Session(server, endpoint, conn, addr)
    return make


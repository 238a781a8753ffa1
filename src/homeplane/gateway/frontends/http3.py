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
- Request bodies follow the upstream's pace: what arrives while an upstream cannot take more
  (``pause_request_body``) is not consumed, so no credit is given for it
  (``quic.ServerConnection``), as HTTP/2's windows are held back; other streams go on.
- Upgrades do not exist (RFC 9114 §4.4); Extended CONNECT (RFC 9220) is not offered, so
  WebSockets stay on HTTP/1.1 and HTTP/2.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, StreamType, encode_frame
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic import events as qe

from homeplane.gateway.base import ConnInfo, ExchangeState, NoUpgrade, PortHooks, request_fields
from homeplane.gateway.exchange import Exchange
from homeplane.gateway.frontends.http2 import PREMATURE_ABSOLUTE, PREMATURE_LIFETIME, PREMATURE_MIN_STREAMS
from homeplane.gateway.routing.router import normalize_host
from homeplane.gateway.frontends.quic import QuicDriver, QuicEndpoint, ServerConnection

_HIGH_WATER = 256 * 1024
_FORBIDDEN = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
_SAFE = {b"GET", b"HEAD", b"OPTIONS", b"TRACE"}  # RFC 9110 §9.2.1: what may be served from 0-RTT
MAX_HEADER_BYTES = 60 * 1024  # as the HTTP/2 side's MAX_HEADER_LIST_SIZE
CLOSE_GRACE = 2.0  # seconds a closing connection waits for its last answers to be acknowledged


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
        # what arrives from now on is not consumed: no credit for it until the upstream takes it
        self.session.quic.hold(self.stream_id)

    def resume_request_body(self) -> None:
        if self.stream_id in self.session.quic.held:
            self.session.quic.release(self.stream_id)
            self.session.schedule()  # the MAX_STREAM_DATA / MAX_DATA that let the client go on


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
        self.refused: set[int] = set()  # request streams reset for an oversized frame: their data is dropped
        self.handshake_done = False
        self.ended_ = False
        self.closing = False  # GOAWAY sent: closing once the answers in flight are acknowledged
        self.streams_ended = 0
        self.premature_resets = 0
        self.last_request = -4  # the highest request stream seen
        # set by the endpoint: the handshake limit's source, connection IDs, handshake deadline
        self.source = ""
        self.cids: set[bytes] = set()
        self.handshake_timer: Any = None
        local = endpoint.address
        self.info = ConnInfo(str(addr[0]), int(addr[1]), str(local[0]), int(local[1]), b"https", None, "HTTP/3")
        self.current = None  # the sweep reads exchanges()
        self.dp.connection_opened(self, fresh=False)  # counted; the limits were checked by new_session

    # --- what the data plane asks of a connection ------------------------------------------

    @property
    def transport(self) -> H3Session:
        return self  # the data plane closes connections through .transport.close()

    def close(self) -> None:
        """Close gracefully: GOAWAY (no new requests), and CONNECTION_CLOSE once what was sent
        is acknowledged - a close sent at once would discard answers still queued."""
        if self.ended_ or self.closing:
            return
        self.closing = True
        if self.h3 is not None and self.h3._local_control_stream_id is not None:
            # the first request stream not processed: those from there on may be sent again
            frame = encode_frame(FrameType.GOAWAY, encode_uint_var(self.last_request + 4))
            self.quic.send_stream_data(self.h3._local_control_stream_id, frame)
        self.schedule()
        if not self.streams:
            self._close_when_acknowledged(self.dp.loop.time() + CLOSE_GRACE)
        # else stream_done starts it after the last request

    def _close_when_acknowledged(self, deadline: float) -> None:
        if self.ended_:
            return
        if not _all_acknowledged(self.quic) and self.dp.loop.time() < deadline:
            self.dp.loop.call_later(0.05, self._close_when_acknowledged, deadline)
            return
        self.quic.close(error_code=ErrorCode.H3_NO_ERROR)
        self.schedule()

    def abort(self) -> None:
        """End now (a failed or expired connection): CONNECTION_CLOSE if it can be sent, and
        everything released without waiting for the peer."""
        if self.ended_:
            return
        try:
            self.quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR)
            self.driver.transmit()
        except Exception:  # the connection's state is what failed: nothing more to send
            pass
        self._ended()

    def handshake_expired(self) -> None:
        if not self.handshake_done:
            self.abort()

    def idle(self) -> bool:
        return not self.streams

    def exchanges(self) -> list[Exchange]:
        return [s.exchange for s in self.streams.values() if s.exchange is not None]

    def check_deadline(self, now: float) -> None:
        pass  # QUIC's own idle timeout (the listener's, at most quic.MAX_IDLE) closes idle connections

    def goaway(self) -> None:
        """The listener is drained: GOAWAY now, the close when the requests in flight end."""
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
        if isinstance(event, qe.StreamDataReceived):
            if event.stream_id in self.refused:
                return
        elif isinstance(event, qe.ProtocolNegotiated):
            if event.alpn_protocol == "h3" and self.h3 is None:
                self.h3 = H3Connection(self.quic)
        elif isinstance(event, qe.HandshakeCompleted):
            self.handshake_done = True
            self.endpoint.handshake_done(self)
        elif isinstance(event, qe.ConnectionIdIssued):
            self.endpoint.cid_issued(event.connection_id, self)
        elif isinstance(event, qe.ConnectionIdRetired):
            self.endpoint.cid_retired(event.connection_id, self)
        elif isinstance(event, qe.ConnectionTerminated):
            self._ended()
            return
        elif isinstance(event, (qe.StreamReset, qe.StopSendingReceived)):
            self._client_cancelled(event.stream_id)
            return
        if self.h3 is None:
            return
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                if ev.stream_id in self.refused:
                    continue
                s = self.streams.get(ev.stream_id)
                if s is None:
                    if self.closing and ev.stream_id > self.last_request:
                        self._refuse(ev.stream_id, ErrorCode.H3_REQUEST_REJECTED)  # after GOAWAY (RFC 9114 §5.2)
                    else:
                        self._request(ev)
                elif s.exchange is not None and ev.stream_ended:
                    s.exchange.end_body()  # request trailers: the body ends here (they are not forwarded)
            elif isinstance(ev, DataReceived):
                s = self.streams.get(ev.stream_id)
                if s is not None and s.exchange is not None and s.exchange.state != ExchangeState.DONE:
                    if ev.data:
                        self.quic.received(ev.stream_id, len(ev.data))
                        s.exchange.feed_body(ev.data)
                    if ev.stream_ended:
                        s.exchange.end_body()
        if isinstance(event, qe.StreamDataReceived):
            self._bound_frame(event.stream_id)

    def _bound_frame(self, stream_id: int) -> None:
        """aioquic keeps a frame's bytes until the whole frame is in (a HEADERS frame, a control
        frame): one that announces more than the header limit would grow without bound. Such
        a request stream is refused; on a control or QPACK stream it ends the connection.
        (DATA frames are passed on as they come, and bounded by flow control.)"""
        assert self.h3 is not None
        st = self.h3._stream.get(stream_id)
        if st is None or len(st.buffer) < 2:
            return
        framed = stream_id % 4 == 0 or st.stream_type == StreamType.CONTROL
        if (_held_frame_size(st) if framed else len(st.buffer)) <= MAX_HEADER_BYTES + 16384:
            return
        st.buffer = b""
        if stream_id % 4 == 0:  # a request stream
            self._refuse(stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
        else:
            self.quic.close(error_code=ErrorCode.H3_EXCESSIVE_LOAD, reason_phrase="frame too large")
        self.schedule()

    def _refuse(self, stream_id: int, code: int) -> None:
        """Reset a request stream both ways; its data and headers are dropped from here on."""
        self.refused.add(stream_id)
        for call in (self.quic.reset_stream, self.quic.stop_stream):
            try:
                call(stream_id, code)
            except (AssertionError, ValueError):
                pass
        s = self.streams.pop(stream_id, None)
        if s is not None and s.exchange is not None:
            s.closed = True
            s.exchange.client_gone()
        self.schedule()

    def _client_cancelled(self, stream_id: int) -> None:
        """RESET_STREAM, or STOP_SENDING (the client wants no more of the answer)."""
        s = self.streams.pop(stream_id, None)
        self.quic.release(stream_id)
        if stream_id % 4 == 0 and (s is None or not s.closed):
            # no answer is wanted any more: ours ends too, so that the stream is done both ways
            # and makes room for another (MAX_STREAMS)
            try:
                self.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            except (AssertionError, ValueError):
                pass
            self.schedule()
        if s is None:
            if stream_id % 4 == 0 and stream_id > self.last_request:
                # reset before its request was read: premature too (as rapid reset sends them)
                self.last_request = stream_id
                self.streams_ended += 1
                self.premature_resets += 1
                self._too_many_resets()
            return
        s.closed = True
        self.paused.discard(s)
        self.streams_ended += 1
        if s.exchange is not None:
            if not s.exchange.status and time.monotonic() - s.exchange.started <= PREMATURE_LIFETIME:
                self.premature_resets += 1
            s.exchange.client_gone()
        self._too_many_resets()

    def _too_many_resets(self) -> None:
        """Rapid reset, counted as for HTTP/2 (frontends/http2.py): the connection is closed."""
        n, bad = self.streams_ended, self.premature_resets
        if bad < PREMATURE_ABSOLUTE and not (n >= PREMATURE_MIN_STREAMS and bad * 2 >= n):
            return
        self.dp.log.warning("HTTP/3 client %s reset %d of %d streams prematurely: connection closed", self.info.client_ip, bad, n)
        self.quic.close(error_code=ErrorCode.H3_EXCESSIVE_LOAD, reason_phrase="too many premature resets")
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.client_gone()
        self.streams.clear()
        self.schedule()

    def _request(self, ev: HeadersReceived) -> None:
        path_addr = self.quic._network_paths[0].addr if self.quic._network_paths else self.addr
        if (path_addr[0], path_addr[1]) != (self.info.client_ip, self.info.client_port):
            # the client moved (connection migration): its requests from now on come from there
            self.info = dataclasses.replace(self.info, client_ip=str(path_addr[0]), client_port=int(path_addr[1]))
        if self.info.sni is None and self.quic.sni:
            self.info.sni = self.quic.sni
        table = self.server.table
        method, path, authority, headers = request_fields(ev.headers)
        size = sum(len(n) + len(v) + 32 for n, v in ev.headers)  # as RFC 9114 §4.2.2 counts a field section
        stream = H3Stream(self, ev.stream_id)
        self.streams[ev.stream_id] = stream
        self.last_request = max(self.last_request, ev.stream_id)
        has_body = not ev.stream_ended
        # the listener by SNI in the table of now (a new Snapshot may have replaced it)
        listener = table.listener_for(self.info.sni.encode()) if self.info.sni else None
        ex = Exchange(self.dp, stream, self.info, table, method, path or b"/", headers, b"3", has_body, listener)
        stream.exchange = ex
        owner = listener or table.listener_for(normalize_host(authority or _host_of(headers)))
        if size > MAX_HEADER_BYTES:
            ex.respond_simple(431, b"request header fields too large\n")
        elif not self.handshake_done and method not in _SAFE:
            ex.error = "early data: unsafe method"
            ex.respond_simple(425, b"too early\n")  # RFC 8470: the client sends it again after the handshake
        elif owner is not None and not (owner.conf is not None and owner.conf.http3):
            ex.error = "listener without HTTP/3"
            ex.respond_simple(421, b"misdirected request\n")  # its ClientTrafficPolicy did not ask for HTTP/3
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
        if self.streams.pop(stream.stream_id, None) is not None:
            self.streams_ended += 1
        self.quic.release(stream.stream_id)
        self.paused.discard(stream)
        self.schedule()
        if not self.streams:
            if self.closing:
                self._close_when_acknowledged(self.dp.loop.time() + CLOSE_GRACE)
            else:
                self.endpoint.session_idle(self)

    def _ended(self) -> None:
        if self.ended_:
            return
        self.ended_ = True
        self.driver.stop()
        self.endpoint.ended(self, self.handshake_done)
        self.dp.connection_closed(self)
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.client_gone()
        self.streams.clear()


def _all_acknowledged(quic: ServerConnection) -> bool:
    """Whether every byte sent on the connection's streams reached the client (aioquic keeps
    unacknowledged bytes in each stream's sender)."""
    return all(not st.sender._buffer for st in quic._streams.values())


def _held_frame_size(st: Any) -> int:
    """The declared length of the frame aioquic is collecting on a stream (0 for DATA, whose
    bytes are passed on as they come, and while the stream waits for QPACK, when what follows
    is bounded by flow control; -1 when the next frame header is not all in)."""
    if st.blocked:
        return 0
    if st.frame_size is not None:  # (aioquic's frame in progress: its header already read)
        return 0 if st.frame_type == FrameType.DATA else st.frame_size
    b = Buffer(data=st.buffer)
    try:
        kind = b.pull_uint_var()
        size = b.pull_uint_var()
    except BufferReadError:
        return -1
    return 0 if kind == FrameType.DATA else size


def _host_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    return next((v for n, v in headers if n == b"host"), b"")


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
        if server.source_allowed is not None and server.source_allowed(str(addr[0])) is not None:
            return None  # the Gateway's ingress policies refuse this client
        return H3Session(server, endpoint, conn, addr)
    return make


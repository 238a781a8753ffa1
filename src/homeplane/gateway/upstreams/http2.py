"""HTTP/2 over cleartext (h2c, prior knowledge) to backends whose port says so, multiplexed.

Envoy Gateway speaks h2c to a Service port with ``appProtocol: kubernetes.io/h2c`` (and to a
``Backend`` with ``gateway.envoyproxy.io/h2c``), and carries many requests at once on one
connection, up to the backend's SETTINGS_MAX_CONCURRENT_STREAMS.

An :class:`H2Session` is the connection; each request gets an :class:`UpstreamStream`, a handle with
the interface of an HTTP/1.1 upstream connection, so the exchange does not change: the request
it writes, in HTTP/1.1 form, is read back with httptools and sent as HEADERS and DATA frames on
the stream; the response frames come back as the same ``upstream_*`` callbacks. While a session
has room for another stream it keeps one unclaimed handle in its endpoint's idle pool, so the
next request finds it where it finds a keep-alive connection. Closing a handle resets only its
stream; a slow client holds back its stream's WINDOW_UPDATEs, not the connection. Upgrades
(WebSocket) are not carried over h2c.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Awaitable, Callable

import homeplane.h2speed  # noqa: F401 (h2's per-frame repr, made cheap)
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httptools

from homeplane.gateway.routing.headers import HOP_BY_HOP
from homeplane.gateway.upstreams.pool import H2C_PROTOCOLS, PooledConnection, ResponseHandler, set_nodelay

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.cluster import EndpointState

__all__ = ["H2C_PROTOCOLS", "H2Session", "UpstreamStream", "open_stream"]
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"transfer-encoding", b"upgrade", b"http2-settings"}
MAX_STREAMS = 1000  # our own cap, whatever the backend allows
STREAM_WINDOW = 1 << 20  # what a backend may send on one stream before we read it
CONNECTION_WINDOW = 16 << 20


class H2Session(asyncio.Protocol):
    """One h2c connection to an endpoint and the streams on it."""

    def __init__(self, endpoint: EndpointState):
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW, h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
        self.streams: dict[int, UpstreamStream] = {}
        self.waiting: deque[UpstreamStream] = deque()  # requests written while no stream was free
        self.spare: UpstreamStream | None = None  # the unclaimed handle in endpoint.idle
        self.ready: asyncio.Future[None] = asyncio.get_event_loop().create_future()  # the backend's SETTINGS came
        self.closed = False
        self.draining = False  # GOAWAY received, or the pool let it go: no new streams
        self.served = 0

    # --- the pool ----------------------------------------------------------------------

    def limit(self) -> int:
        return min(self.h2.remote_settings.max_concurrent_streams, MAX_STREAMS)

    def has_room(self) -> bool:
        """Room for another request (open streams and queued ones count)."""
        if self.closed or self.draining:
            return False
        return len(self.streams) + len(self.waiting) < self.limit()

    def can_open(self) -> bool:
        return len(self.streams) < self.limit() and self.h2.open_outbound_streams < self.limit()

    def new_stream(self) -> UpstreamStream:
        return UpstreamStream(self, reused=self.served > 0 or bool(self.streams))

    def offer(self) -> None:
        """Keep one unclaimed handle in the endpoint's idle pool while there is room."""
        if self.spare is None and self.has_room():
            self.spare = self.new_stream()
            self.spare.idle_since = time.monotonic()
            self.endpoint.idle.append(self.spare)  # type: ignore[arg-type]

    def _withdraw_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.closed = True
            try:
                self.endpoint.idle.remove(spare)  # type: ignore[arg-type]
            except ValueError:
                pass

    def retire(self) -> None:
        """No new streams; the connection closes when the last one finishes."""
        self.draining = True
        self._withdraw_spare()
        if not self.streams:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._withdraw_spare()
            if self.transport is not None:
                self.transport.close()

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        self.h2.initiate_connection()
        # room for many streams' data while one client reads slowly (its stream holds its window)
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.send()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail_all(f"invalid HTTP/2 from backend: {e}")
            return
        touched: list[ResponseHandler] = []
        streams = self.streams
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            s = streams.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived):
                if s is not None:
                    s.response(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                if s is not None and s.paused:
                    s.unacked += ev.flow_controlled_length  # acknowledged when the client catches up
                else:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if s is not None and ev.data and s.exchange is not None:
                    s.exchange.upstream_data(ev.data)
            elif isinstance(ev, h2.events.TrailersReceived):
                if s is not None and s.exchange is not None:
                    s.exchange.upstream_trailers([(n, v) for n, v in ev.headers if not n.startswith(b":")])
            elif isinstance(ev, h2.events.StreamEnded):
                if s is not None:
                    if s.exchange is not None:
                        touched.append(s.exchange)
                    s.ended()
                    continue
            elif isinstance(ev, h2.events.StreamReset):
                if s is not None:
                    if s.exchange is not None:
                        touched.append(s.exchange)
                    s.reset_by_backend(ev.error_code)
                    continue
            elif isinstance(ev, h2.events.WindowUpdated):
                for t in ([s] if s is not None else list(streams.values()) if not sid else []):
                    t.flush_body()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                if not self.ready.done():
                    self.ready.set_result(None)
                self.open_waiting()
                self.offer()  # the backend may allow more streams now
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._goaway(ev.last_stream_id)
            if s is not None and s.exchange is not None:
                touched.append(s.exchange)
        self.send()
        for ex in dict.fromkeys(touched):
            ex.upstream_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._withdraw_spare()
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("h2c backend closed the connection before its SETTINGS"))
            self.ready.exception()  # retrieved: whoever waits gets it
        streams, self.streams = self.streams, {}
        for s in self.waiting:
            s.reused = True  # never sent: safe to send elsewhere
        streams.update((-i - 1, s) for i, s in enumerate(self.waiting))
        self.waiting.clear()
        for s in streams.values():
            s.lost()

    def pause_writing(self) -> None:
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.upstream_write_resumed()

    # --- helpers ------------------------------------------------------------------

    def send(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _goaway(self, last_stream_id: int | None) -> None:
        self.retire()
        # streams the backend never processed are safe to send again elsewhere (Envoy retries them)
        unsent = [s for sid, s in self.streams.items() if last_stream_id is not None and sid > last_stream_id] + list(self.waiting)
        self.waiting.clear()
        for s in unsent:
            s.reused = True
            self.streams.pop(s.stream_id, None)  # type: ignore[arg-type]
            s.lost()
        if not self.streams:
            self.close()

    def _fail_all(self, message: str) -> None:
        streams = list(self.streams.values()) + list(self.waiting)
        self.streams = {}
        self.waiting.clear()
        self.close()
        for s in streams:
            ex, s.exchange = s.exchange, None
            s.closed = True
            if ex is not None:
                ex.upstream_failed("protocol", message)

    def forget(self, s: UpstreamStream) -> None:
        """A stream is over: room for another."""
        if s.stream_id is not None and self.streams.get(s.stream_id) is s:
            del self.streams[s.stream_id]
        elif s in self.waiting:
            self.waiting.remove(s)
        if self.draining and not self.streams:
            self.close()
            return
        self.open_waiting()
        self.offer()

    def open_waiting(self) -> None:
        while self.waiting and self.can_open() and not self.closed:
            self.waiting.popleft().open()
        self.send()


class UpstreamStream(PooledConnection):
    """One request on an :class:`H2Session`, used by the exchange like an upstream connection."""

    def __init__(self, session: H2Session, reused: bool):
        self.session = session
        self.endpoint = session.endpoint
        self.transport = session.transport
        self.exchange: ResponseHandler | None = None
        self.reused = reused
        self.closed = False
        self.idle_since = 0.0
        self.upgraded = False
        self.head_only = False
        self.paused = False
        self.unacked = 0
        self.stream_id: int | None = None
        self.request = httptools.HttpRequestParser(self)  # reads back what the exchange writes
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: deque[bytes] = deque()  # request body waiting for flow-control window
        self._body_done = False
        self._request_headers: list[tuple[bytes, bytes]] = []

    # --- the request, read back from its HTTP/1.1 form ---------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        session = self.session
        authority = next((v for n, v in self._headers if n == b"host"), b"")
        te = [v for n, v in self._headers if n == b"te" and v.strip().lower() == b"trailers"]
        headers = [
            (b":method", self.request.get_method()),
            (b":scheme", b"http"),
            (b":authority", authority),
            (b":path", self._url),
        ] + [(n, v) for n, v in self._headers if n not in _NOT_FORWARDED] + [(b"te", v) for v in te[:1]]
        self._request_headers = headers
        if session.spare is self:
            session.spare = None
        if session.can_open() and not session.waiting:
            self.open()
        else:
            session.waiting.append(self)  # opened when a stream finishes (Envoy queues them too)
        session.offer()

    def open(self) -> None:
        session = self.session
        self.stream_id = session.h2.get_next_available_stream_id()
        session.h2.send_headers(self.stream_id, self._request_headers)
        session.streams[self.stream_id] = self
        self.flush_body()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self.flush_body()

    def on_message_complete(self) -> None:
        self._body_done = True
        self.flush_body()

    def flush_body(self) -> None:
        sid = self.stream_id
        if sid is None:
            return
        conn = self.session.h2
        try:
            while self._body:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    return  # a WINDOW_UPDATE will bring us back
                chunk = self._body.popleft()
                if len(chunk) > window:
                    self._body.appendleft(chunk[window:])
                    chunk = chunk[:window]
                conn.send_data(sid, chunk)
            if self._body_done:
                self._body_done = False
                conn.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            self._body.clear()

    # --- from the session ------------------------------------------------------------

    def response(self, raw: list[tuple[bytes, bytes]]) -> None:
        status = 0
        headers = []
        for n, v in raw:
            if n == b":status":
                status = int(v)
            elif not n.startswith(b":"):
                headers.append((n, v))
        if status >= 200 and self.exchange is not None:
            self.exchange.upstream_head(status, headers, True)

    def ended(self) -> None:
        ex, self.exchange = self.exchange, None
        self.session.served += 1
        if ex is not None:
            ex.upstream_end(reusable=not self.session.closed)
        else:
            self.release()

    def reset_by_backend(self, code: int) -> None:
        self.closed = True
        self.session.forget(self)
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            self.reused = True  # not processed: sent again on a fresh attempt (Envoy does)
            ex.upstream_lost(self)  # type: ignore[arg-type]
        else:
            ex.upstream_failed("reset", f"backend reset the stream (error code {code})")

    def lost(self) -> None:
        self.closed = True
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.upstream_lost(self)  # type: ignore[arg-type]

    # --- used by the exchange ------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.session.closed:
            return
        try:
            self.request.feed_data(data)
        except httptools.HttpParserError as e:  # cannot happen with requests we built; fail loudly
            ex, self.exchange = self.exchange, None
            self.close()
            if ex is not None:
                ex.upstream_failed("protocol", f"request could not be carried over h2c: {e}")
            return
        self.session.send()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.unacked and self.stream_id is not None and not self.session.closed:
            n, self.unacked = self.unacked, 0
            try:
                self.session.h2.acknowledge_received_data(n, self.stream_id)
            except h2.exceptions.StreamClosedError:
                return
            self.session.send()

    def release(self) -> None:
        """The exchange is done with this stream (or never used it)."""
        self.exchange = None
        session = self.session
        if self.stream_id is None and not self.closed and self not in session.waiting:
            # never opened: back to the pool as the session's spare, if it has none
            if session.spare is None and session.has_room():
                session.spare = self
                self.idle_since = time.monotonic()
                self.endpoint.idle.append(self)  # type: ignore[arg-type]
            return
        self.closed = True
        session.forget(self)

    def abort(self) -> None:
        """A stream is given up by resetting it: the session and its other streams go on."""
        self.close()

    def close(self) -> None:
        """Reset this stream (CANCEL); an unclaimed handle lets its session go when idle."""
        if self.closed:
            return
        self.closed = True
        self.exchange = None
        session = self.session
        if self.stream_id is None:
            if self in session.waiting:
                session.forget(self)
                return
            if session.spare is self:
                session.spare = None
            if not session.streams:
                session.retire()  # the pool let it go (idle too long, endpoint gone)
            return
        try:
            session.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        session.send()
        session.forget(self)


async def open_stream(endpoint: EndpointState, timeout: float, opener: Callable[[H2Session], Awaitable[object]]) -> UpstreamStream:
    """A stream to the endpoint: on the connection being opened, when it has room (Envoy does not
    open a connection per request while one is on its way), else on a new connection.

    ``opener`` connects a session's transport. The backend's SETTINGS are awaited, so the first
    requests know how many streams it allows."""
    deadline = time.monotonic() + timeout
    while True:
        pending = endpoint.h2_pending
        if pending is None:
            break
        session = await asyncio.wait_for(asyncio.shield(pending), max(deadline - time.monotonic(), 0.001))
        if session is not None and session.has_room():
            return session.new_stream()
        if endpoint.h2_pending is pending:
            break  # nothing newer to wait for: a connection of our own
    session = H2Session(endpoint)
    mine: asyncio.Future[H2Session | None] = asyncio.get_event_loop().create_future()
    endpoint.h2_pending = mine
    try:
        await asyncio.wait_for(opener(session), max(deadline - time.monotonic(), 0.001))
        await asyncio.wait_for(asyncio.shield(session.ready), max(deadline - time.monotonic(), 0.001))
    except BaseException:
        session.close()
        mine.set_result(None)
        raise
    else:
        mine.set_result(session)
    finally:
        if endpoint.h2_pending is mine:
            endpoint.h2_pending = None
    return session.new_stream()

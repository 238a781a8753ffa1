"""HTTP/2 streams the C session (frontends/http2.c, on nghttp2) leaves to Python.

The session serves plain streams itself; any other stream becomes an :class:`Exchange`, as in
frontends/http2.py, whose sink is a :class:`NativeH2Stream`: the sink's calls become the
session's primitives (respond, data, end, reset, consume), and the session calls back
``body``, ``end_body``, ``gone`` and ``drained``. Flow control is the session's (nghttp2):
request body bytes are acknowledged as the upstream takes them, response bytes wait for the
client's windows and the exchange is paused while many do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeplane.gateway.base import ConnInfo, ExchangeState, NoUpgrade, PortHooks, request_fields
from homeplane.gateway.exchange import Exchange

if TYPE_CHECKING:
    from homeplane.gateway.routing.router import ListenerTable


class NativeH2Stream(NoUpgrade):
    """Sink for one stream's exchange, on the C session's primitives."""

    __slots__ = ("session", "stream_id", "exchange", "paused", "body_paused", "unacked")

    def __init__(self, session: Any, stream_id: int):
        self.session = session
        self.stream_id = stream_id
        self.exchange: Exchange | None = None
        self.paused = False  # the exchange was told the client does not keep up
        self.body_paused = False  # the upstream cannot take more of the request body now
        self.unacked = 0  # request body bytes received but not acknowledged yet (window held back)

    # --- the Exchange's sink interface (as frontends/http2.ClientStream) -----------------

    def respond_head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None, has_body: bool) -> None:
        self.session.respond(self.stream_id, status, headers, length, has_body)

    def respond_data(self, data: bytes) -> None:
        if not data:
            return
        full = self.session.data(self.stream_id, data)  # the stream's or the connection's buffer is full
        if full and not self.paused and self.exchange is not None:
            self.paused = True
            self.exchange.downstream_paused()

    def respond_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.session.trailers(self.stream_id, trailers)

    def respond_end(self) -> None:
        self.session.end(self.stream_id)

    def respond_abort(self) -> None:
        self.session.reset(self.stream_id)

    def flush(self) -> None:
        self.session.flush()

    def pause_request_body(self) -> None:
        self.body_paused = True

    def resume_request_body(self) -> None:
        self.body_paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            self.session.consume(self.stream_id, n)


    # --- called by the session ---------------------------------------------------------

    def body(self, data: bytes) -> bool:
        """Request body bytes; True when they may be acknowledged now."""
        ex = self.exchange
        if ex is None or ex.state == ExchangeState.DONE:
            return True  # answered already: the rest is dropped, and the client's window given back
        ex.feed_body(data)
        if self.body_paused:
            self.unacked += len(data)
            return False
        return True

    def end_body(self) -> None:
        if self.exchange is not None and self.exchange.state != ExchangeState.DONE:
            self.exchange.end_body()

    def drained(self) -> None:
        if self.paused and self.exchange is not None:
            self.paused = False
            self.exchange.downstream_resumed()

    def gone(self) -> None:
        """The client reset the stream, or the connection ended."""
        if self.unacked:
            # body bytes held back while the upstream was slow count against the connection's
            # window too: given back, or the connection would starve
            n, self.unacked = self.unacked, 0
            self.session.consume(self.stream_id, n)
        ex = self.exchange
        if ex is not None and ex.state != ExchangeState.DONE:
            ex.client_gone()


def start_stream(server: PortHooks, session: Any, stream_id: int, fields: list[tuple[bytes, bytes]], ended: bool) -> NativeH2Stream:
    """A request the session did not serve itself: an Exchange, as frontends/http2.py makes it."""
    method, path, _, headers = request_fields(fields)  # (cookies after the others, as the h2 library hands them)
    sink = NativeH2Stream(session, stream_id)
    info: ConnInfo = session.info
    listener: ListenerTable | None = session.listener
    ex = Exchange(server.dp, sink, info, server.table, method, path or b"/", headers, b"2", not ended, listener)
    sink.exchange = ex
    ex.start()
    if ended and ex.state != ExchangeState.DONE:
        ex.end_body()
    return sink

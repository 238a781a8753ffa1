"""The client-facing HTTP/1.1 protocol (asyncio Protocol + httptools/llhttp parser).

llhttp is strict by default, which is what a proxy wants: conflicting
Content-Length/Transfer-Encoding, obs-fold, bad header names and bad chunk
sizes are parse errors and get a 400 with the connection closed. On top of it
this module enforces sizes (414 for a long URL, 431 for large or too many
headers), one exchange at a time with pipelined requests queued in order, and
flow control in both directions.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import httptools

from homeplane.gateway.base import ConnInfo, ExchangeState, PortHooks
from homeplane.gateway.exchange import Exchange, reason


MAX_URL = 16 * 1024
MAX_HEADER_BYTES = 60 * 1024  # Envoy's default max_request_headers_kb
MAX_HEADERS = 100  # Envoy's default max_headers_count
MAX_QUEUED_BODY = 1024 * 1024  # pipelined requests waiting their turn
MAX_PIPELINED = 32  # requests parsed ahead of the one being answered, before reading stops
# Bytes the parser may take in without handing anything over (a header line, a chunk-size line,
# trailers still being read): llhttp keeps no limit of its own and httptools buffers a partial
# header in full, so an endless line is cut off here, as the bytes arrive.
MAX_UNPARSED = MAX_HEADER_BYTES + 8 * 1024


class _TooLarge(Exception):
    def __init__(self, status: int):
        self.status = status


class _Pending:
    """A request parsed while another one is still being answered (pipelining)."""

    __slots__ = (
        "method", "url", "headers", "version", "keep_alive", "has_body", "body", "complete", "upgrade", "exchange", "ready",
    )

    def __init__(self) -> None:
        self.exchange: Exchange | None = None
        self.ready = False  # headers complete
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.has_body = False
        self.upgrade = False


class Http1Connection(asyncio.Protocol):
    def __init__(self, server: PortHooks, client_override: tuple[str, int] | None = None, fresh: bool = True):
        self.server = server
        self.fresh = fresh  # a new connection (False: handed over by the fast lane, already admitted)
        self.client_override = client_override  # the client's address from a PROXY protocol header
        self.dp = server.dp
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.info: ConnInfo | None = None
        self.queue: deque[_Pending] = deque()
        self.current: Exchange | None = None
        self.cur_keep_alive = True
        self.peer_eof = False
        self.cur_chunked = False
        self.cur_close = False
        self.header_bytes = 0
        self.write_paused = False
        self.read_paused_for: set[str] = set()
        self.tunnel: Exchange | None = None
        self.tunnel_buffer: list[bytes] = []
        self.upgraded = False
        self.closed = False
        self.deadline = 0.0
        self.queued_body = 0
        self.listener = None
        self.parsing = _Pending()  # the request the parser is in
        self.out: list[bytes] = []  # response bytes not yet written (coalesced into one write)
        self.out_bytes = 0
        self.failed: bytes | None = None  # a malformed pipelined request: answered 400 in its turn
        self.progress = False  # the parser handed something over during the current feed
        self.unparsed = 0  # bytes fed since it last did

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = self.client_override or transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        tls = transport.get_extra_info("ssl_object")
        sni = self.server.sni_of(tls) if tls is not None else None
        self.info = ConnInfo(
            str(peer[0]), int(peer[1]), str(local[0]), int(local[1]),
            b"https" if tls is not None else b"http", sni, "HTTP/1.1",
        )
        if sni is not None:
            self.listener = self.server.table.listener_for(sni.encode())
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            self._switch_to_h2(b"")
            return
        self.dp.connection_opened(self, self.fresh, (self.info.client_ip, self.info.client_port))
        self.fresh = False
        self.deadline = time.monotonic() + self.dp.settings.request_headers_timeout

    def _switch_to_h2(self, data: bytes) -> None:
        """ALPN chose h2, or a cleartext client opened with the HTTP/2 preface (prior knowledge)."""
        from homeplane.gateway.frontends.http2 import H2Connection

        self.upgraded = True
        self.closed = True
        self.dp.connection_closed(self)
        h2c = H2Connection(self.server, self.info, fresh=self.fresh)
        t = self.transport
        assert t is not None
        t.set_protocol(h2c)
        h2c.connection_made(t)
        if data:
            h2c.data_received(data)

    def data_received(self, data: bytes) -> None:
        if not self.queue and self.current is None and data.startswith(b"PRI * HTTP/2.0\r\n"):
            self._switch_to_h2(data)
            return
        if self.failed is not None:
            return  # nothing after a malformed request can be trusted
        if self.upgraded:
            if self.tunnel is not None and self.tunnel.state == ExchangeState.TUNNEL:
                self.tunnel.feed_body(data)
            else:
                self.tunnel_buffer.append(data)
            return
        self.progress = False
        try:
            self.parser.feed_data(data)
            if self.progress:
                self.unparsed = 0
            else:
                self.unparsed += len(data)
                if self.unparsed > MAX_UNPARSED:
                    self._fail(431 if not self.parsing.ready else 400)
                    return
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
            self.upgraded = True
            if offset < len(data):
                self.tunnel_buffer.append(data[offset:])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status)
            else:
                self.dp.log.exception("request handling failed", exc_info=cause)
                self._fail(500)
        except httptools.HttpParserError as e:
            self._bad_request(f"bad request: {e}\n".encode())
        if self.queued_body > MAX_QUEUED_BODY or len(self.queue) > MAX_PIPELINED:
            self._pause_reading("queue")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.dp.connection_closed(self)
        cur = self.current
        self.current = None
        if cur is not None:
            cur.client_gone()
        if self.tunnel is not None:
            self.tunnel.client_tunnel_closed()
            self.tunnel = None

    def eof_received(self) -> bool | None:
        # A half-closed client may still wait for its answer (then the connection closes).
        if self.current is not None:
            self.peer_eof = True
            return True
        return None

    def pause_writing(self) -> None:
        # a client that does not read its answers gets no more requests read either
        self.write_paused = True
        self._pause_reading("write")
        if self.current is not None:
            self.current.downstream_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume_reading("write")
        if self.current is not None:
            self.current.downstream_resumed()

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = _Pending()
        self.queue.append(self.parsing)
        self.header_bytes = 0
        self.deadline = time.monotonic() + self.dp.settings.request_headers_timeout

    def on_url(self, url: bytes) -> None:
        p = self.parsing
        self.progress = True
        p.url += url
        if len(p.url) > MAX_URL:
            raise _TooLarge(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        p = self.parsing
        self.progress = True
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES or len(p.headers) >= MAX_HEADERS:
            raise _TooLarge(431)
        p.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self.parsing
        self.progress = True
        p.ready = True
        parser = self.parser
        p.method = parser.get_method()
        p.version = parser.get_http_version()
        p.keep_alive = parser.should_keep_alive()
        p.upgrade = parser.should_upgrade()
        for n, v in p.headers:
            if n == b"content-length":
                p.has_body = v.strip() != b"0"
            elif n == b"transfer-encoding":
                p.has_body = True
        self.deadline = 0.0
        if self.current is None and self.queue and self.queue[0] is p:
            self._start(p)

    def on_body(self, body: bytes) -> None:
        p = self.parsing
        self.progress = True
        ex = p.exchange
        if ex is not None:
            if ex is self.current or ex is self.tunnel:
                ex.feed_body(body)
            # else: answered already (e.g. 404 to a POST); the rest of the body is dropped
        else:
            p.body.append(body)
            self.queued_body += len(body)

    def on_message_complete(self) -> None:
        p = self.parsing
        self.progress = True
        p.complete = True
        ex = p.exchange
        if ex is not None and ex is self.current:
            ex.end_body()

    # --- running exchanges --------------------------------------------------------------

    def _start(self, p: _Pending) -> None:
        info = self.info
        assert info is not None
        expect = None
        for n, v in p.headers:
            if n == b"expect":
                expect = v.lower()
        if expect is not None and expect != b"100-continue":
            self.queue.popleft()
            self._fail(417)
            return
        ex = Exchange(
            self.dp, self, info, self.server.table, p.method, p.url, p.headers,
            p.version.encode(), p.has_body, self.listener,
        )
        p.exchange = ex
        self.current = ex
        self.cur_keep_alive = p.keep_alive and not p.upgrade
        self.cur_close = not self.cur_keep_alive
        self.cur_chunked = False
        if expect == b"100-continue" and p.has_body and not p.body:
            # Answer the client ourselves, as Envoy does; the backend never sees Expect.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        ex.start()
        if self.current is ex and ex.state != ExchangeState.DONE:
            for chunk in p.body:
                self.queued_body -= len(chunk)
                ex.feed_body(chunk)
            p.body = []
            if p.complete:
                ex.end_body()

    def respond_head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None, has_body: bool) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
        for n, v in headers:
            parts += [n, b": ", v, b"\r\n"]
        if status == 101:
            pass
        elif length is not None:
            parts += [b"content-length: ", b"%d" % length, b"\r\n"]
        elif has_body:
            if self.current is not None and self.current.http_version == b"1.1":
                self.cur_chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.cur_close = True  # HTTP/1.0: the body ends with the connection
        if self.cur_close and status != 101:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.out.append(head)
        self.out_bytes += len(head)
        if status == 101:
            self.flush()

    def respond_data(self, data: bytes) -> None:
        if self.transport is None or self.closed or not data:
            return
        if self.cur_chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes >= 65536:
            self.flush()

    def flush(self) -> None:
        """Write what the current exchange produced since the last flush, in one system call."""
        if self.out:
            out = self.out
            self.out = []
            self.out_bytes = 0
            if self.transport is not None and not self.closed:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def respond_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        pass  # not relayed to HTTP/1.1 clients (the fast lane drops them too)

    def respond_end(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        if self.cur_chunked:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        p = self.queue.popleft() if self.queue else None
        self.current = None
        if self.cur_close or (p is not None and not p.complete and p.has_body) or (self.peer_eof and not self.queue):
            # The request body was not read to its end (the connection cannot be reused), or
            # the client half-closed and has its answers.
            t.close()
            return
        self.deadline = time.monotonic() + self.dp.settings.idle_timeout
        if len(self.queue) <= MAX_PIPELINED and self.queued_body <= MAX_QUEUED_BODY:
            self._resume_reading("queue")
        if self.queue and self.queue[0].ready:
            self._start(self.queue[0])
        elif self.failed is not None:
            self._fail(400, self.failed)

    def respond_abort(self) -> None:
        self.flush()
        self.current = None
        if self.transport is not None:
            self.transport.abort()

    def pause_request_body(self) -> None:
        self._pause_reading("upstream")

    def resume_request_body(self) -> None:
        self._resume_reading("upstream")

    def _pause_reading(self, why: str) -> None:
        if not self.read_paused_for and self.transport is not None:
            self.transport.pause_reading()
        self.read_paused_for.add(why)

    def _resume_reading(self, why: str) -> None:
        if why in self.read_paused_for:
            self.read_paused_for.discard(why)
            if not self.read_paused_for and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # --- tunnels --------------------------------------------------------------------------

    def start_tunnel(self, exchange: Exchange) -> None:
        self.tunnel = exchange
        self.current = None
        if self.queue:
            self.queue.popleft()
        buffered, self.tunnel_buffer = self.tunnel_buffer, []
        self._resume_reading("queue")
        for chunk in buffered:
            exchange.feed_body(chunk)

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def tunnel_close(self) -> None:
        self.tunnel = None
        if self.transport is not None:
            self.transport.close()

    # --- errors and timers ----------------------------------------------------------------

    def _bad_request(self, body: bytes) -> None:
        """The parser rejected bytes. A pipelined request after the one being answered is
        answered in its turn (requests are served one at a time, as Envoy does); a fault in the
        request being answered ends the connection now."""
        cur = self.current
        p = self.parsing
        if p.complete and p.ready and not p.keep_alive:
            # bytes after a "Connection: close" request are not requests: dropped unanswered
            self._pause_reading("closing")
            if cur is None and not self.queue and self.transport is not None:
                self.transport.close()
            return
        if cur is not None and (p.exchange is not cur or p.complete):
            self.failed = body
            self._pause_reading("failed")
            return
        self._fail(400, body)

    def _fail(self, status: int, body: bytes = b"") -> None:
        """Answer a request the parser rejected, then close: the byte stream cannot be trusted."""
        t = self.transport
        if t is None or self.closed:
            return
        if self.current is not None:
            cur = self.current
            self.current = None
            if cur.status:  # the response has started: nothing sensible can follow
                cur.client_gone()
                t.abort()
                return
            cur.client_gone()
        body = body or f"{status} {reason(status).decode()}\n".encode()
        t.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason(status), len(body), body)
        )
        self.dp.count_protocol_error(status)
        t.close()
        self.closed = True

    def idle(self) -> bool:
        """Between requests on a keep-alive connection (what overload sheds first)."""
        return self.current is None and self.tunnel is None and not self.queue and not self.upgraded

    def check_deadline(self, now: float) -> None:
        if self.deadline and now >= self.deadline and self.current is None and self.tunnel is None:
            if self.queue:
                self._fail(408)  # headers did not arrive in time (slow client)
            elif self.transport is not None:
                self.transport.close()  # idle keep-alive connection

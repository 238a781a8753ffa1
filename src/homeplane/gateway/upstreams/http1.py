"""HTTP/1.1 connections to backends (asyncio protocol + httptools response parser).

One connection carries one exchange at a time; when the response is complete and
both sides allow keep-alive, the connection goes back to its endpoint's idle
list. The exchange receives ``upstream_*`` callbacks; it never touches sockets.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

import httptools

from homeplane.gateway.upstreams.pool import PooledConnection, ResponseHandler, set_nodelay

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.cluster import EndpointState


class UpstreamConnection(PooledConnection):
    __slots__ = (
        "endpoint",
        "transport",
        "parser",
        "exchange",
        "headers",
        "reused",
        "closed",
        "idle_since",
        "_status_reason",
        "upgraded",
        "head_only",
        "connected",
        "until_close",
    )

    def __init__(self, endpoint: EndpointState):
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: ResponseHandler | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self.upgraded = False
        self.head_only = False
        self.connected: asyncio.Future[None] | None = None
        self.until_close = False  # the response being read has neither length nor chunks

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            ex = self.exchange
            if ex is not None:
                ex.upstream_tunnel_data(data)
            return
        if self.exchange is None:
            # A response we did not ask for: the connection is unusable.
            self.close()
            return
        ex = self.exchange
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # 101 Switching Protocols: what follows the head belongs to the tunnel.
            offset = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
            self.upgraded = True
            rest = data[offset:]
            ex = self.exchange
            if ex is not None and rest:
                ex.upstream_tunnel_data(rest)
        except httptools.HttpParserError as e:
            ex = self.exchange
            self.close()
            if ex is not None:
                ex.upstream_failed("protocol", f"invalid response from backend: {e}")
            return
        # one client write per upstream read
        ex.upstream_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            self.endpoint.idle.remove(self)
        except ValueError:
            pass
        ex = self.exchange
        self.exchange = None
        if ex is not None:
            if self.upgraded:
                ex.upstream_tunnel_closed()
                return
            if self.until_close and ex.status:
                # a close-delimited body ends with the connection (httptools has no way to be told)
                ex.upstream_end(reusable=False)
                return
            ex.upstream_lost(self)

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_write_paused()

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_write_resumed()

    # --- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        # llhttp reports a chunked response's trailer fields through on_header too: they must
        # not become the next response's fields on this connection (trailers are dropped)
        self.headers = []

    def on_status(self, status: bytes) -> None:
        self._status_reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps trailing whitespace; it is not part of a field value (RFC 9110 §5.5)
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self.headers
        self.headers = []
        ex = self.exchange
        if status < 200 and status != 101:
            return  # 1xx interim responses (100 Continue) are not forwarded
        self.until_close = not self.head_only and status not in (204, 304) and not any(
            n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in v.lower()) for n, v in headers
        )
        if ex is not None:
            ex.upstream_head(status, headers, self.parser.should_keep_alive())
            if self.head_only and self.exchange is not None:
                # A response to HEAD has no body, whatever Content-Length says;
                # httptools cannot be told, so this connection is not reused.
                self.exchange = None
                ex.upstream_end(reusable=False)
                self.close()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_data(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        ex = self.exchange
        self.exchange = None
        if ex is not None:
            ex.upstream_end(reusable=self.parser.should_keep_alive() and not self.closed)

    # --- used by the exchange -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def release(self) -> None:
        """Back to the endpoint's idle list (the exchange has finished with it)."""
        self.exchange = None
        self.reused = True
        self.head_only = False
        self.idle_since = time.monotonic()
        if self.transport is not None:
            # a slow client may have paused our reading just as the response ended: the next
            # request on this connection must be able to read its answer
            self.transport.resume_reading()
        self.endpoint.idle.append(self)


def check_subject_alt_names(conn: UpstreamConnection, wanted: tuple[str, ...]) -> None:
    """BackendTLSPolicy subjectAltNames: the certificate must carry one of them (DNS or URI)."""
    tls = conn.transport.get_extra_info("ssl_object") if conn.transport is not None else None
    cert = tls.getpeercert() if tls is not None else None
    names = {v for k, v in (cert or {}).get("subjectAltName", ()) if k in ("DNS", "URI")}
    if not names & set(wanted):
        conn.close()
        raise ssl.SSLCertVerificationError(f"certificate names {sorted(names)} match none of {list(wanted)}")

"""The Python side of the fast lane (``_fastlane.c``; its TLS in ``tls.c``, its HTTP/2 in ``http2.c``).

The C protocol serves requests (without a body or with a Content-Length one) to rules without
filters or policies other than compression and connection retries, start to finish; everything
else it hands to :class:`~homeplane.gateway.frontends.http1.Http1Connection` on the same
connection. This module decides which rules qualify (once per Snapshot, in
:func:`compile_table`), and does the few things the C side asks of Python: open upstream
connections, hand a connection over, write access log lines.

What C does and the Python it mirrors (the differential tests send the same bytes to both):

==========================  ==================================================================
``_fastlane.c``             Python twin
==========================  ==================================================================
``conn_start`` (head)       llhttp in ``frontends/http1.py`` with ``http1.MAX_*`` limits
``path_is_canonical``       ``routing.paths.is_canonical`` (other paths: Python normalises)
``lookup``                  ``routing.router.PortTable.route`` (tables from ``compile_table``)
``HOP[]``, ``is_hop``       ``routing.headers.HOP_BY_HOP`` (``Exchange._build_request_head``)
``add_request_id``          ``routing.headers.request_id``
``choose_endpoint``         ``Exchange.proceed`` (circuit breaker) and ``Cluster.pick``
``up_head``, ``up_feed``    httptools in ``upstreams/http1.py``, ``Exchange.upstream_*``
``conn_failed_attempt``     ``Exchange._failed_attempt`` / ``_retry_later`` (``MAX_REPLAY``:
                            ``exchange._RETRY_BODY_LIMIT``)
``Conn_check_deadline``     ``Exchange.check_deadline``
``fast_idle`` pool          ``EndpointState.idle``
``http2.c`` (nghttp2)       the h2 library in ``frontends/http2.py`` (``Settings.native_h2``)
``h2_fast_start``           ``frontends/http2.py`` ``H2Connection._request`` + ``Exchange``
``tls.c``                   Python's ``ssl`` (``gateway/tls.py``; ``HOMEPLANE_NATIVE_TLS=0``)
==========================  ==================================================================

Shared rather than twinned: ``Hooks.compression`` (the decision and the encoders are Python's),
``DataPlane.access_line``, ``Cluster.pick`` and ``Cluster.result``. The boundary is explicit:
a rule reaches C as a :class:`FastRoute` record read by position (``_fastlane.ROUTE_FIELDS``),
match kinds are ``_fastlane.MATCH_*``, and the Python attributes C reads are listed in
``_fastlane.PYTHON_ATTRIBUTES``; ``tests/gateway/test_fastlane_boundary.py`` holds them equal.

The fast lane is optional: without a C compiler at install time the extension is not built
and every request takes the Python path (``HOMEPLANE_FASTLANE=0`` turns it off too).
"""

from __future__ import annotations

import asyncio
import functools
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from homeplane.observe.accesslog import request_headers
from homeplane.gateway.base import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_WINDOW,
    ConnInfo,
    DataPlaneHooks,
    ListenerConf,
    PortHooks,
)
from homeplane.gateway.policies.compression import Encoder, accepted, compressible
from homeplane.gateway.exchange import RouteAction
from homeplane.gateway.routing.headers import detect_client_ip
from homeplane.gateway.routing.router import EXACT, PREFIX, PortTable, VHostTable
from homeplane.gateway.upstreams.pool import H2C_PROTOCOLS, set_nodelay

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.cluster import Cluster, EndpointState
    from homeplane.translate import snapshot as ir

try:
    from homeplane.gateway.frontends import _fastlane
except ImportError:  # built without a C compiler
    _fastlane = None  # type: ignore[assignment]
else:
    _fastlane.set_reasons(tuple(
        (HTTPStatus(code).phrase.encode() if code in HTTPStatus._value2member_map_ else b"Unknown") for code in range(600)
    ))

HANDSHAKE_TIMEOUT = 10.0  # seconds, as the Python lane's ssl_handshake_timeout
OPAQUE = 2  # a rule the C side cannot evaluate (regex path, method/header/query matches): Python decides
_CONNECTION_TRIGGERS = frozenset({"reset", "connect-failure", "refused-stream"})  # retries the C side makes


def enabled() -> bool:
    return _fastlane is not None and os.environ.get("HOMEPLANE_FASTLANE", "1") != "0"


class FastRoute(NamedTuple):
    """A rule the C lane serves, as it reads it: by position (``_fastlane.c`` ROUTE_* indexes;
    ``_fastlane.ROUTE_FIELDS`` is checked against this record by the tests)."""

    route_id: str  # for the access log
    cluster: Any  # upstreams.cluster.Cluster: endpoints, balancer, passive health, in-flight counts
    timeout: float  # the request's timeout in seconds (0: none)
    backend_timeout: float  # per attempt (0: none)
    connect_timeout: float
    max_requests: int  # circuit breaker: requests in flight on the cluster
    passive: bool  # report results to the cluster's outlier detection
    conf: Any  # the listener's settings (client IP detection, for the log)
    compression: tuple[bytes, ...]  # content-codings offered, in the policy's order (the encoder is Python's)
    retries: int  # after connect failures and resets
    backoff_base: float
    gateway: str  # the Gateway of the rule's listener (merged gateways share a port), for the log
    alt_svc: bytes | None  # the listener's Alt-Svc (ClientTrafficPolicy http3), added to answers without one


def fast_eligible(a: RouteAction | None) -> str | None:
    """The cluster of a rule the C lane may serve as far as the rule goes (no filter,
    SecurityPolicy, Lua, mirror, retries on statuses, hashing, several backends); None when the
    rule needs the Python lane. Compression and retries after connect failures and resets are
    served in C."""
    if a is None or a.direct_status is not None or a.redirect is not None:
        return None
    if a.rewrite_host is not None or a.rewrite_path_type is not None or a.req_ops is not None or a.resp_ops is not None:
        return None
    if a.security is not None or a.mirrors or a.hash_on is not None or a.lua or a.cors is not None:
        return None
    if a.retry.num_retries and (not a.retry.triggers <= _CONNECTION_TRIGGERS or a.retry.status_codes):
        return None  # retries on response statuses: the Python lane
    if len(a.backends) != 1:
        return None
    wc = a.backends[0]
    if wc.cluster is None or wc.req_ops is not None or wc.resp_ops is not None or wc.weight <= 0:
        return None
    return wc.cluster


def fast_pool(pool: Any) -> bool:
    """A backend pool the C lane can reach: plain HTTP/1.1 over TCP (not h2c, TLS or a socket)."""
    return (
        (pool.app_protocol or "") not in H2C_PROTOCOLS and pool.tls is None
        and not any(e.address.startswith("unix:") for e in pool.endpoints)
        # network policy: L7 rules to check, or every endpoint refused (the Python path says why)
        and pool.policy_http is None and not (pool.policy_denied and not pool.endpoints)
    )


def fast_route(action: RouteAction | None, clusters: dict[str, Cluster], conf: Any = None, gateway: str = "") -> FastRoute | None:
    """The C side's view of a rule it may serve, or None when the rule needs the Python path."""
    name = fast_eligible(action)
    if name is None or action is None:
        return None
    cluster = clusters.get(name)
    if cluster is None or cluster.h2c or not fast_pool(cluster.pool):
        return None
    a = action
    return FastRoute(
        a.route_id, cluster, float(a.timeout or 0.0), float(a.backend_timeout or 0.0), float(a.connect_timeout),
        int(cluster.config.max_requests), cluster.config.passive is not None, conf, a.compression,
        a.retry.num_retries, float(a.retry.backoff_base), gateway, conf.alt_svc if conf is not None else None,
    )


def _vhost(vh: VHostTable | None, clusters: dict[str, Cluster], conf: Any, gateway: str) -> tuple[tuple[Any, ...], ...] | None:
    if vh is None:
        return None
    out = []
    for m in vh.matches:
        simple = m.path_kind in (EXACT, PREFIX) and m.method is None and not m.headers and not m.query
        kind = m.path_kind if simple else OPAQUE
        out.append((kind, m.path, m.path_slash, fast_route(m.action, clusters, conf, gateway) if simple else None))
    return tuple(out)


def compile_table(table: PortTable, clusters: dict[str, Cluster]) -> tuple[Any, ...] | None:
    """Listeners of one port in the shape the C lookup walks:
    ``((hostname|None, {host: vhost}, ((suffix, vhost), ...), vhost|None), ...)`` with a vhost a
    tuple of ``(kind, path, path + "/", route|None)`` in precedence order."""
    if not enabled():
        return None
    out = []
    for lt in table.listeners:
        gw = str(lt.listener.gateway)
        out.append((
            lt.hostname,
            {h: _vhost(vh, clusters, lt.conf, gw) for h, vh in lt.exact.items()},
            tuple((suffix, _vhost(vh, clusters, lt.conf, gw)) for suffix, vh in lt.wildcards),
            _vhost(lt.any_host, clusters, lt.conf, gw),
        ))
    return tuple(out)


_VERSION_CODES = {"1.0": 1, "1.1": 2, "1.2": 3, "1.3": 4}


def native_tls_available() -> bool:
    """The fast lane was built with OpenSSL (and its TLS is not turned off)."""
    return enabled() and bool(getattr(_fastlane, "HAVE_TLS", 0)) and os.environ.get("HOMEPLANE_NATIVE_TLS", "1") != "0"


def native_h2_available() -> bool:
    """The fast lane was built with nghttp2 (and its HTTP/2 is not turned off)."""
    return enabled() and bool(getattr(_fastlane, "HAVE_HTTP2", 0)) and os.environ.get("HOMEPLANE_NATIVE_H2", "1") != "0"


H2_PREFACE = b"PRI * HTTP/2.0\r\n"


def make_native_context(cert: ir.TLSCert, conf: ListenerConf, h2: bool, selector: Callable[[str | None], Any] | None = None) -> Any:
    """The fast lane's context for one certificate (the same settings as ``tls.make_context``);
    ``selector`` makes it a port's default context, asking for the context of each server name."""
    alpn = [p.encode() for p in conf.alpn if p != "h2" or h2] or [b"http/1.1"]
    return _fastlane.TlsContext(
        cert.cert_pem, bytes(cert.key_pem), _VERSION_CODES.get(conf.min_tls, 3), _VERSION_CODES.get(conf.max_tls or "", 0),
        alpn, selector,
    )


def tls_connection(default_context: Any, app_factory: Callable[[], Any], loop: asyncio.AbstractEventLoop, preread: bytes = b"") -> Any:
    """A client connection's TLS layer (tls.c): the TCP transport's protocol, and the transport
    of the protocol ``app_factory`` makes once the handshake is done."""
    return _fastlane.TlsConnection(default_context, app_factory, loop, HANDSHAKE_TIMEOUT, preread)


def set_ticket_secret(secret: bytes) -> None:
    """Session ticket keys for this process, derived from a secret all workers share (tls.c)."""
    if _fastlane is not None and getattr(_fastlane, "HAVE_TLS", 0):
        _fastlane.set_ticket_keys(secret)


class Hooks:
    """What the C protocol asks of Python; one per PortHooks."""

    def __init__(self, server: PortHooks):
        self.server = server
        self.dp: DataPlaneHooks = server.dp
        settings = self.dp.settings
        self.access_log = self.dp.per_request  # the C lane reports each request (access log, metrics, flows)
        self.headers_timeout = settings.request_headers_timeout
        self.idle_timeout = settings.idle_timeout
        # a new connection's protocol, called with no Python frame in between (per connection)
        self.new_connection: Callable[[], Any] = functools.partial(_fastlane.Http1Fast, server, self, None)

    def protocol(self, client_override: tuple[str, int] | None = None) -> Any:
        return _fastlane.Http1Fast(self.server, self, client_override)

    def opened(self, conn: Any, transport: asyncio.Transport) -> tuple[bytes, bytes | None, bytes] | None:
        """A new client connection: (client ip, SNI, scheme), or None when ALPN chose h2."""
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            return None
        peer = conn.override or transport.get_extra_info("peername") or ("", 0)
        sni = self.server.sni_of(tls) if tls is not None else None
        self.dp.connection_opened(conn, True, (str(peer[0]), int(peer[1])))
        return str(peer[0]).encode(), sni.encode() if sni else None, b"https" if tls is not None else b"http"

    def closed(self, conn: Any) -> None:
        self.dp.connection_closed(conn)

    def handoff(self, conn: Any, transport: asyncio.Transport | None, data: bytes, paused: bool) -> None:
        """The connection continues in Python from the first byte the fast lane did not answer
        (HTTP/2 -- ALPN h2 or the h2c preface -- in the C session when it is built)."""
        from homeplane.gateway.frontends.http1 import Http1Connection

        if transport is None or transport.is_closing():
            return
        self.dp.connection_closed(conn)
        tls = transport.get_extra_info("ssl_object")
        alpn_h2 = tls is not None and tls.selected_alpn_protocol() == "h2"
        proto: Any
        if (alpn_h2 or data.startswith(H2_PREFACE)) and self.dp.settings.native_h2 and native_h2_available():
            # ALPN h2 is decided before opened() admits the connection: admitted by h2_opened
            proto = _fastlane.Http2Fast(self.server, self, conn.override, alpn_h2)
        else:
            proto = Http1Connection(self.server, client_override=conn.override, fresh=False)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if paused:
            transport.resume_reading()
        if data and not proto.closed:
            proto.data_received(data)

    def h2_opened(self, session: Any, transport: asyncio.Transport, fresh: bool) -> tuple[bytes, bytes | None, bytes, int, int, int, float, bool]:
        """An HTTP/2 connection in the C session: what it needs to know, and its ConnInfo and
        listener for the streams Python serves. The listener's ClientTrafficPolicy http2
        settings apply (by SNI, else the port's first listener), as in frontends/http2.py."""
        peer = session.override or transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        tls = transport.get_extra_info("ssl_object")
        sni = self.server.sni_of(tls) if tls is not None else None
        scheme = b"https" if tls is not None else b"http"
        session.info = ConnInfo(str(peer[0]), int(peer[1]), str(local[0]), int(local[1]), scheme, sni, "HTTP/2")
        table = self.server.table
        session.listener = table.listener_for(sni.encode()) if sni else None
        lt = session.listener or (table.listeners[0] if table.listeners else None)
        conf = lt.conf if lt is not None else None
        self.dp.connection_opened(session, fresh, (str(peer[0]), int(peer[1])))
        return (
            str(peer[0]).encode(), sni.encode() if sni else None, scheme,
            conf.h2_max_streams if conf else DEFAULT_MAX_STREAMS,
            conf.h2_stream_window if conf else DEFAULT_STREAM_WINDOW,
            conf.h2_connection_window if conf else DEFAULT_CONNECTION_WINDOW,
            self.idle_timeout, self.access_log,
        )

    def h2_request(self, session: Any, stream_id: int, fields: list[tuple[bytes, bytes]], ended: bool) -> Any:
        """A stream the C session does not serve: a Python Exchange (frontends/http2_native.py)."""
        from homeplane.gateway.frontends.http2_native import start_stream

        return start_stream(self.server, session, stream_id, fields, ended)

    def h2_rapid_reset(self, session: Any, premature: int, ended: int) -> None:
        self.dp.log.warning("HTTP/2 client %s reset %d of %d streams prematurely: connection closed",
                            session.client_ip.decode() if session.client_ip else "?", premature, ended)

    def connect(self, conn: Any, ep: EndpointState, timeout: float) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._connect(conn, ep, timeout))

    async def _connect(self, conn: Any, ep: EndpointState, timeout: float) -> None:
        loop = self.dp.loop
        try:
            transport, up = await asyncio.wait_for(
                loop.create_connection(lambda: _fastlane.Upstream(ep), ep.address, ep.port), timeout
            )
        except asyncio.CancelledError:
            return
        except (OSError, asyncio.TimeoutError) as e:
            conn.connect_failed(str(e) or type(e).__name__)
            return
        set_nodelay(transport)
        conn.connected(up)

    def compression(
        self, tokens: tuple[bytes, ...], accept: bytes, status: int, headers: list[tuple[bytes, bytes]], length: int | None,
    ) -> tuple[Encoder, list[tuple[bytes, bytes]]] | None:
        """Whether a response gets compressed, decided as the Python lane decides it: an encoder
        and the response's new header list, or None."""
        token = accepted(accept, tokens)
        if token is None or not compressible(status, headers, length):
            return None
        out = [h for h in headers if h[0] != b"etag"] + [(b"content-encoding", token), (b"vary", b"accept-encoding")]
        return Encoder(token), out

    def later(self, conn: Any, delay: float, seq: int) -> None:
        """A retry after its backoff."""
        self.dp.loop.call_later(delay, conn.retry, seq)

    def finished(
        self, conn: Any, route: FastRoute, ep: Any, status: int, bytes_in: int, bytes_out: int, duration: float, error: str | None,
    ) -> None:
        """One access log line, the same fields as the Python path's."""
        client = conn.client_ip.decode()
        conf = route.conf
        table = self.server.table
        if conf is not None and conf.xff_enabled:
            xff = conn.xff
            client = detect_client_ip(client, xff.decode("latin-1") if xff else None, conf.xff_hops, conf.xff_trusted)
        gateway = route.gateway or str(table.gateway)
        dp = self.dp
        up_time = conn.up_time
        if dp.settings.access_log:
            headers = None
            if gateway in dp.access.header_hungry and conn.req_head:
                headers = request_headers(conn.req_head)  # as sent upstream: what %REQ(...)% reads in Envoy
            dp.access_line(
                gateway=gateway, client=client, method=conn.method.decode("latin-1"),
                host=conn.host.decode("latin-1"), path=conn.target.decode("latin-1"), protocol=conn.protocol,
                status=status, route=route.route_id, backend=ep.name if ep is not None else None,
                duration=duration, bytes_in=bytes_in, bytes_out=bytes_out,
                request_id=conn.request_id.decode("latin-1") if conn.request_id else None, error=error,
                user_agent=conn.ua.decode("latin-1") if conn.ua else None, xff=conn.xff.decode("latin-1") if conn.xff else None,
                attempts=conn.attempts, upstream_time=up_time if up_time >= 0 else None, cluster=route.cluster.name, headers=headers,
            )
        dp.record(table, gateway, client, conn.method, conn.host, conn.target, conn.protocol, status, duration,
                  ep.name if ep is not None else None, route.cluster.name, error, conn.attempts,
                  up_time if up_time >= 0 else None, route.route_id, self.server.host,
                  b"https" if table.protocol == "HTTPS" else b"http")


def served() -> int:
    return _fastlane.served() if _fastlane is not None else 0


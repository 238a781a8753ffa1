"""The Python side of the HTTP/1.1 fast lane (``_fastlane.c``).

The C protocol serves requests (without a body or with a Content-Length one) to rules without
filters or policies other than compression and connection retries, start to finish; everything else it hands to :class:`~homeplane.gateway.frontends.http1.Http1Connection` on
the same connection. This module decides which rules qualify (once per Snapshot, in
:func:`compile_table`), and does the few things the C side asks of Python: open upstream
connections, hand a connection over, write access log lines.

The fast lane is optional: without a C compiler at install time the extension is not built
and every request takes the Python path (``HOMEPLANE_FASTLANE=0`` turns it off too).
"""

from __future__ import annotations

import asyncio
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from homeplane.gateway.base import DataPlaneHooks, PortHooks
from homeplane.gateway.policies.compression import Encoder, accepted, compressible
from homeplane.gateway.exchange import RouteAction
from homeplane.gateway.routing.headers import detect_client_ip
from homeplane.gateway.routing.router import _EXACT, _PREFIX, PortTable, VHostTable
from homeplane.gateway.upstreams.pool import set_nodelay

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.cluster import Cluster, EndpointState

try:
    from homeplane.gateway.frontends import _fastlane
except ImportError:  # built without a C compiler
    _fastlane = None  # type: ignore[assignment]
else:
    _fastlane.set_reasons(tuple(
        (HTTPStatus(code).phrase.encode() if code in HTTPStatus._value2member_map_ else b"Unknown") for code in range(600)
    ))

_OPAQUE = 2  # a rule the C side cannot evaluate (regex path, method/header/query matches)
_CONNECTION_TRIGGERS = frozenset({"reset", "connect-failure", "refused-stream"})  # retries the C side makes


def enabled() -> bool:
    return _fastlane is not None and os.environ.get("HOMEPLANE_FASTLANE", "1") != "0"


def fast_route(action: RouteAction | None, clusters: dict[str, Cluster], conf: Any = None) -> tuple[Any, ...] | None:
    """The C side's view of a rule it may serve, or None when the rule needs the Python path:
    any filter, SecurityPolicy, Lua, mirror, retries on statuses, hashing, several backends, an
    h2c or TLS backend. Compression and retries after connect failures and resets are served."""
    a = action
    if a is None or a.direct_status is not None or a.redirect is not None:
        return None
    if a.rewrite_host is not None or a.rewrite_path_type is not None or a.req_ops is not None or a.resp_ops is not None:
        return None
    if a.security is not None or a.mirrors or a.hash_on is not None or a.lua:
        return None
    if a.retry.num_retries and (not a.retry.triggers <= _CONNECTION_TRIGGERS or a.retry.status_codes):
        return None  # retries on response statuses: the Python lane
    if len(a.backends) != 1:
        return None
    wc = a.backends[0]
    if wc.cluster is None or wc.req_ops is not None or wc.resp_ops is not None or wc.weight <= 0:
        return None
    cluster = clusters.get(wc.cluster)
    if cluster is None or cluster.h2c or cluster.pool.tls is not None:
        return None
    if any(e.address.startswith("unix:") for e in cluster.endpoints):
        return None
    return (
        a.route_id,
        cluster,
        float(a.timeout or 0.0),
        float(a.backend_timeout or 0.0),
        float(a.connect_timeout),
        int(cluster.config.max_requests),
        cluster.config.passive is not None,
        conf,  # the listener's ClientTrafficPolicy settings (client IP detection, for the log)
        a.compression,  # content-codings offered, in the policy's order (the encoder is Python's)
        a.retry.num_retries,
        float(a.retry.backoff_base),
    )


def _vhost(vh: VHostTable | None, clusters: dict[str, Cluster], conf: Any) -> tuple[tuple[Any, ...], ...] | None:
    if vh is None:
        return None
    out = []
    for m in vh.matches:
        simple = m.path_kind in (_EXACT, _PREFIX) and m.method is None and not m.headers and not m.query
        kind = m.path_kind if simple else _OPAQUE
        out.append((kind, m.path, m.path_slash, fast_route(m.action, clusters, conf) if simple else None))
    return tuple(out)


def compile_table(table: PortTable, clusters: dict[str, Cluster]) -> tuple[Any, ...] | None:
    """Listeners of one port in the shape the C lookup walks:
    ``((hostname|None, {host: vhost}, ((suffix, vhost), ...), vhost|None), ...)`` with a vhost a
    tuple of ``(kind, path, path + "/", route|None)`` in precedence order."""
    if not enabled():
        return None
    out = []
    for lt in table.listeners:
        out.append((
            lt.hostname,
            {h: _vhost(vh, clusters, lt.conf) for h, vh in lt.exact.items()},
            tuple((suffix, _vhost(vh, clusters, lt.conf)) for suffix, vh in lt.wildcards),
            _vhost(lt.any_host, clusters, lt.conf),
        ))
    return tuple(out)


class Hooks:
    """What the C protocol asks of Python; one per PortHooks."""

    def __init__(self, server: PortHooks):
        self.server = server
        self.dp: DataPlaneHooks = server.dp
        settings = self.dp.settings
        self.access_log = settings.access_log
        self.headers_timeout = settings.request_headers_timeout
        self.idle_timeout = settings.idle_timeout

    def protocol(self, client_override: tuple[str, int] | None = None) -> Any:
        return _fastlane.Http1Fast(self.server, self, client_override)

    def opened(self, conn: Any, transport: asyncio.Transport) -> tuple[bytes, bytes | None, bytes] | None:
        """A new client connection: (client ip, SNI, scheme), or None when ALPN chose h2."""
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            return None
        set_nodelay(transport)
        peer = conn.override or transport.get_extra_info("peername") or ("", 0)
        sni = self.server.sni_of(tls) if tls is not None else None
        self.dp.connection_opened(conn)
        return str(peer[0]).encode(), sni.encode() if sni else None, b"https" if tls is not None else b"http"

    def closed(self, conn: Any) -> None:
        self.dp.connection_closed(conn)

    def handoff(self, conn: Any, transport: asyncio.Transport | None, data: bytes, paused: bool) -> None:
        """The connection continues in Python from the first byte the fast lane did not answer."""
        from homeplane.gateway.frontends.http1 import Http1Connection

        if transport is None or transport.is_closing():
            return
        self.dp.connection_closed(conn)
        proto = Http1Connection(self.server, client_override=conn.override, fresh=False)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if paused:
            transport.resume_reading()
        if data and not proto.closed:
            proto.data_received(data)

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
        self, conn: Any, route: tuple[Any, ...], ep: Any, status: int, bytes_in: int, bytes_out: int, duration: float, error: str | None,
    ) -> None:
        """One access log line, the same fields as the Python path's."""
        client = conn.client_ip.decode()
        conf = route[7]
        table = self.server.table
        if conf is not None and conf.xff_enabled:
            xff = conn.xff
            client = detect_client_ip(client, xff.decode("latin-1") if xff else None, conf.xff_hops, conf.xff_trusted)
        self.dp.access_line(
            gateway=str(table.gateway), client=client, method=conn.method.decode("latin-1"),
            host=conn.host.decode("latin-1"), path=conn.target.decode("latin-1"), protocol="HTTP/1.1",
            status=status, route=route[0], backend=ep.name if ep is not None else None,
            duration=duration, bytes_in=bytes_in, bytes_out=bytes_out,
            request_id=conn.request_id.decode("latin-1") if conn.request_id else None, error=error,
        )


def served() -> int:
    return _fastlane.served() if _fastlane is not None else 0


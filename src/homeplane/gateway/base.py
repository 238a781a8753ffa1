"""The gateway's shared vocabulary, imported by every layer and importing none of them:
process and listener settings, what a connection knows of itself, the exchange's states, and
the small interfaces the layers reach each other through - so that the server, which wires
everything, is imported by nothing.

Layers, each importing only those before it (tests/structure/test_layers.py checks it):
``routing`` (pure request logic) -> ``upstreams`` (backend connections, clusters) ->
``policies`` (SecurityPolicy enforcement, CORS, compression) -> ``exchange`` (one request through
the proxy) -> ``frontends`` (client protocols) -> ``server`` (sockets, Snapshot swaps); beside
them ``base`` and ``tls`` (leaves) and ``compile`` (the Snapshot lowered to tables, pure).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from homeplane.gateway.routing.paths import DEFAULT as DEFAULT_PATH_SETTINGS
from homeplane.gateway.routing.paths import PathSettings

DEFAULT_MAX_STREAMS = 100
DEFAULT_STREAM_WINDOW = 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 16 * 1024 * 1024


@dataclass
class Settings:
    request_headers_timeout: float = 30.0  # a client must send its request head within this time
    idle_timeout: float = 3600.0  # Envoy's default HTTP idle timeout
    default_request_timeout: float | None = 15.0  # Envoy's default route timeout
    max_connections: int = 10_000  # above it new connections are closed at once (overload)
    max_memory: int | None = None  # bytes of RSS; see Overload
    access_log: bool = True
    access_log_format: str = "json"  # json (Envoy Gateway's fields) or text (Envoy's default line), when no EnvoyProxy says
    access_log_dir: str | None = None  # where an EnvoyProxy's File sinks may write (none: stdout only)
    # per-request records beside the access log: Envoy's request metrics and the flow ring
    # (observe/envoystats.py, observe/flows.py); off leaves the fast lane without a Python call
    # per request when the access log is off too
    request_stats: bool = True
    flows: int = 4095  # flow ring capacity (Hubble's default); 0: no flows
    reuse_port: bool = False
    fast_lane: bool = True  # simple HTTP/1.1 requests served by _fastlane.c when it is built
    native_h2: bool = True  # HTTP/2 on nghttp2 (frontends/http2.c) with the fast lane, when it is built
    # QUIC (HTTP/3) where a ClientTrafficPolicy asks for it; extra workers (--workers) leave it
    # to the main process, since the kernel's UDP reuseport spreading knows no connection IDs
    http3: bool = True
    # the secret TLS session ticket keys are derived from; shared with the workers (set by the
    # main process's DataPlane when None)
    ticket_secret: bytes | None = None


@dataclass
class ListenerConf:
    """Per-listener settings from its ClientTrafficPolicy."""

    xff_enabled: bool = False
    xff_hops: int | None = None
    xff_trusted: tuple[Any, ...] = ()
    idle_timeout: float | None = None
    alpn: tuple[str, ...] = ("h2", "http/1.1")  # Envoy Gateway default
    min_tls: str = "1.2"
    max_tls: str | None = None
    proxy_protocol: bool = False
    proxy_protocol_optional: bool = False
    h2_max_streams: int = DEFAULT_MAX_STREAMS
    h2_stream_window: int = DEFAULT_STREAM_WINDOW
    h2_connection_window: int = DEFAULT_CONNECTION_WINDOW
    connection_limit: int | None = None  # clientTrafficPolicy connection.connectionLimit.value
    buffer_limit: int | None = None  # connection.bufferLimit: request body kept for retries/mirrors
    path: PathSettings = DEFAULT_PATH_SETTINGS  # path.escapedSlashesAction / disableMergeSlashes
    http3: bool = False  # clientTrafficPolicy http3: this HTTPS listener also serves QUIC on its port
    alt_svc: bytes | None = None  # the Alt-Svc value TCP answers carry then (h3=":<bound port>"; ma=86400)


@dataclass(slots=True)
class ConnInfo:
    """Per client connection facts the exchange needs."""

    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    scheme: bytes  # b"http" / b"https"
    sni: str | None = None
    protocol: str = "HTTP/1.1"


class ExchangeState(IntEnum):
    ROUTING = 0  # routing, authenticating
    CONNECTING = 1  # waiting for an upstream connection (or a retry's backoff)
    WAITING = 2  # request sent, waiting for the response head
    STREAMING = 3  # relaying the response body
    TUNNEL = 4  # an upgraded connection (WebSocket): bytes both ways
    DONE = 5



def request_fields(fields: Any) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    """An HTTP/2 or HTTP/3 request's fields as an HTTP/1.1 exchange takes them: ``:method``,
    ``:path``, ``:authority``, and the other fields - cookie crumbs joined into one field after
    the others (RFC 9113 §8.2.3, RFC 9114 §4.2.1), Host from ``:authority`` where there is none."""
    method = path = authority = b""
    headers: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for n, v in fields:
        if n.startswith(b":"):
            if n == b":method":
                method = v
            elif n == b":path":
                path = v
            elif n == b":authority":
                authority = v
        elif n == b"cookie":
            cookies.append(v)
        else:
            headers.append((n, v))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if authority and not any(h[0] == b"host" for h in headers):
        headers.insert(0, (b"host", authority))
    return method, path, authority, headers


class NoUpgrade:
    """The tunnel side of a sink for protocols without Upgrade (HTTP/2, HTTP/3; RFC 9113 §8.6,
    RFC 9114 §4.4): a backend's 101 resets the stream."""

    __slots__ = ()

    def respond_abort(self) -> None: ...

    def start_tunnel(self, exchange: Any) -> None:
        self.respond_abort()

    def tunnel_write(self, data: bytes) -> None:
        pass

    def tunnel_close(self) -> None:
        pass


class DataPlaneHooks(Protocol):
    """What connections, exchanges and policies use of the data plane."""

    settings: Settings
    loop: asyncio.AbstractEventLoop
    clusters: dict[str, Any]  # name -> upstreams.cluster.Cluster
    auth: Any  # policies.auth.Auth
    log: logging.Logger
    overload: Any  # server.Overload
    per_request: bool  # finished/access_line wanted for every request (access log, metrics, flows)

    def finished(self, ex: Any) -> None: ...
    def mirror(self, cluster: str, head: bytes) -> None: ...
    def access_line(self, **fields: Any) -> None: ...
    def record(self, *fields: Any) -> None: ...
    def connection_opened(self, conn: Any, fresh: bool = True, client: tuple[str, int] | None = None) -> None: ...
    def connection_closed(self, conn: Any) -> None: ...
    def count_protocol_error(self, status: int) -> None: ...
    def stream_finished(self, splice: Any, gateway: Any, protocol: str, route: Any, endpoint: Any, sni: str | None) -> None: ...


class PortHooks(Protocol):
    """What a client connection uses of the port server that accepted it."""

    dp: DataPlaneHooks
    table: Any  # routing.router.PortTable
    hooks: Any  # frontends.fastlane.Hooks, when the fast lane serves this port
    fast: Any

    def sni_of(self, tls: Any) -> str | None: ...

"""The gateway data plane: listeners on sockets, Snapshot swaps, timers, access log.

:meth:`DataPlane.apply` takes a Snapshot and makes it live atomically: routing
tables and route actions are compiled first, then each port server's ``table``
reference is swapped. A request reads the table once when it starts, so
in-flight requests finish on the Snapshot they started with. Clusters (and
their pooled connections) survive swaps when their endpoints do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from typing import Any, Callable

from homeplane.gateway.base import ListenerConf, Settings  # noqa: F401 (re-exported: homeplane.gateway.server.Settings)
from homeplane.gateway.compile import BindPlan, compile_snapshot  # noqa: F401 (BindPlan re-exported)
from homeplane.gateway.frontends import proxyproto
from homeplane.gateway.policies.auth import Auth
from homeplane.gateway.upstreams.cluster import Cluster
from homeplane.gateway.exchange import Exchange
from homeplane.gateway.frontends.fastlane import Hooks, compile_table, make_native_context, native_tls_available, set_ticket_secret, tls_connection
from homeplane.gateway.frontends.fastlane import enabled as fastlane_enabled
from homeplane.gateway.upstreams.health import run_checks
from homeplane.policy.enforce import gateway_sources, head_allowed
from homeplane.observe.accesslog import AccessLogs, Record, first_values, request_headers
from homeplane.observe.envoystats import EnvoyStats
from homeplane.observe.flows import HTTP as FLOW_HTTP
from homeplane.observe.flows import MAX_FIELD
from homeplane.observe.flows import FlowRing
from homeplane.gateway.frontends.http1 import Http1Connection
from homeplane.gateway.frontends.http3 import new_session
from homeplane.gateway.frontends.quic import QuicEndpoint
from homeplane.gateway.frontends.late_tls import start_tls_after
from homeplane.gateway.frontends.streams import GatewayL4, PassthroughTable, spliced
from homeplane.gateway.routing.router import ListenerTable, PortTable
from homeplane.gateway.tls import choose, configure, make_context
from homeplane.gateway.frontends.tlspeek import NEED_MORE, NotTLS, client_hello_sni
from homeplane.l4.relay import Splice, Stream
from homeplane.translate import snapshot as ir

log = logging.getLogger("homeplane.gateway")


def default_port_map() -> dict[int, int]:
    """Ports this process may not bind move up by 8000 (80 -> 8080, 443 -> 8443): none for root
    or with CAP_NET_BIND_SERVICE (a systemd unit's AmbientCapabilities, a container's
    --cap-add), and only those below the kernel's ip_unprivileged_port_start otherwise."""
    if os.geteuid() == 0 or _has_capability(10):  # CAP_NET_BIND_SERVICE
        return {}
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            start = int(f.read().strip())
    except (OSError, ValueError):
        start = 1024
    return {p: p + 8000 for p in range(1, min(start, 1024))}


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


# --- TLS ---------------------------------------------------------------------------------


class PortServer:
    """One listening socket: a Gateway's listeners on one port."""

    def __init__(self, dp: DataPlane, host: str, port: int, table: PortTable):
        self.dp = dp
        self.host = host
        self.port = port
        self.table = table
        self.server: asyncio.base_events.Server | None = None
        self.ssl_ctx: ssl.SSLContext | None = None
        self.conns: set[Any] = set()  # open client connections on this port
        self.cx_total = 0  # connections accepted (envoy_http_downstream_cx_total)
        self.started_with_preamble = False
        self.passthrough: PassthroughTable | None = None  # TLS passthrough (TLSRoutes) on this port
        self.splices: set[Splice] = set()  # passed-through connections
        self.connection_limit: int | None = None
        self.source_allowed: Any = None  # network policy: policy.enforce.SourceCheck, or None (everyone)
        self.fast: tuple[Any, ...] | None = None  # the fast lane's routing table (gateway/fastlane.py)
        self.hooks = Hooks(self) if dp.settings.fast_lane and fastlane_enabled() else None
        self._contexts: list[tuple[ListenerTable, list[tuple[ir.TLSCert, ssl.SSLContext]]]] = []
        # TLS in the fast lane (tls.c) when it is built with OpenSSL; else Python's ssl
        self.native_tls = self.hooks is not None and native_tls_available()
        self.native_default: Any = None
        self._native: list[tuple[str | None, list[tuple[ir.TLSCert, Any]]]] = []
        self._native_cache: dict[str, Any] = {}
        self.quic: QuicEndpoint | None = None  # HTTP/3 on this port's UDP twin (ClientTrafficPolicy http3)
        self.http3_status: dict[str, Any] | None = None  # for /status: listening, or why not
        self.http3_policies: list[ir.Ref] = []  # the ClientTrafficPolicies asking for it here

    @property
    def tls(self) -> bool:
        return self.table.protocol == "HTTPS"

    def update(self, table: PortTable) -> None:
        """Swap in a new table (and certificates); existing connections are not touched."""
        limits = [lt.conf.connection_limit for lt in table.listeners if lt.conf is not None and lt.conf.connection_limit]
        self.connection_limit = min(limits) if limits else None
        if self.tls:
            h2 = self.dp.h2_enabled
            if not any(lt.listener.tls_certs for lt in table.listeners):
                raise RuntimeError("HTTPS port without a usable certificate")
            first_conf = table.listeners[0].conf or ListenerConf()
            c0 = next(c for lt in table.listeners for c in lt.listener.tls_certs)
            if self.native_tls:
                # the fast lane's OpenSSL contexts; the default one (for clients that send no
                # server name) asks _choose_native for the others -- unless there are none
                only_one = len(table.listeners) == 1 and len(table.listeners[0].listener.tls_certs) == 1
                self.native_default = make_native_context(c0, first_conf, h2, selector=None if only_one else self._choose_native)
                # the port's first listener's first certificate is the default context itself, so
                # a client asking for it keeps the context its connection started with
                self._native = [
                    (lt.listener.hostname, [
                        (c, self.native_default if (i, j) == (0, 0) else make_native_context(c, lt.conf or ListenerConf(), h2))
                        for j, c in enumerate(lt.listener.tls_certs)
                    ])
                    for i, lt in enumerate(table.listeners)
                ]
                self._native_cache = {}
            else:
                contexts = []
                for lt in table.listeners:
                    conf = lt.conf or ListenerConf()
                    contexts.append((lt, [(c, make_context(c, conf, h2)) for c in lt.listener.tls_certs]))
                self._contexts = contexts
                # the base context answers clients that send no SNI (the first certificate), and
                # its versions bound every connection (Python's ssl keeps them when SNI switches
                # the context); the listening server holds it, so it is changed in place
                if self.ssl_ctx is None:
                    self.ssl_ctx = make_context(c0, first_conf, h2)
                    self.ssl_ctx.sni_callback = self._sni
                else:
                    configure(self.ssl_ctx, c0, first_conf, h2)
        self.table = table
        self._compile_fast()

    def _sni(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        name = (server_name or "").lower()
        try:
            sslobj.hp_sni = name or None
        except AttributeError:
            pass
        chosen = choose([(lt.listener.hostname, ctxs) for lt, ctxs in self._contexts], name)
        if chosen is not None:
            sslobj.context = chosen

    def _choose_native(self, name: str | None) -> Any:
        """The fast lane's context for a ClientHello's server name (remembered per name)."""
        key = name or ""
        ctx = self._native_cache.get(key)
        if ctx is None:
            ctx = choose(self._native, key)
            if len(self._native_cache) < 4096:  # names are the client's choice: bounded
                self._native_cache[key] = ctx
        return ctx

    def tls_connection(self) -> Any:
        """A new client connection's TLS layer (the fast lane's), with Http1Fast behind it."""
        assert self.hooks is not None
        return tls_connection(self.native_default, self.hooks.new_connection, self.dp.loop)

    @property
    def terminates_tls(self) -> bool:
        return self.ssl_ctx is not None or self.native_default is not None

    def sni_of(self, tls: Any) -> str | None:
        return getattr(tls, "hp_sni", None)

    @property
    def proxy_protocol(self) -> tuple[bool, bool]:
        """(expected, optional) for this port: any listener on it asking for it turns it on."""
        wanted = [(True, lt.conf.proxy_protocol_optional) for lt in self.table.listeners if lt.conf is not None and lt.conf.proxy_protocol]
        if self.passthrough is not None and self.passthrough.proxy[0]:
            wanted.append(self.passthrough.proxy)
        return bool(wanted), bool(wanted) and all(optional for _, optional in wanted)

    @property
    def needs_preamble(self) -> bool:
        """Bytes to read before TLS: a PROXY protocol header, or the ClientHello's SNI for passthrough."""
        return self.proxy_protocol[0] or self.passthrough is not None

    async def start(self) -> None:
        loop = self.dp.loop
        self.started_with_preamble = self.needs_preamble
        if self.started_with_preamble:
            # the PROXY header / the ClientHello comes before TLS: accept plain TCP, read it, then
            # start TLS (or pass the connection through)
            self.server = await loop.create_server(
                lambda: ProxyPreamble(self), self.host, self.port, backlog=1024, reuse_address=True,
                reuse_port=self.dp.settings.reuse_port or None,
            )
            self._nodelay()
            return
        if self.native_default is not None:
            factory: Callable[[], asyncio.BaseProtocol] = self.tls_connection
        elif self.hooks is not None:
            factory = self.hooks.new_connection
        else:
            factory = lambda: Http1Connection(self)  # noqa: E731
        self.server = await loop.create_server(
            factory,
            self.host,
            self.port,
            ssl=self.ssl_ctx,
            backlog=1024,
            reuse_address=True,
            reuse_port=self.dp.settings.reuse_port or None,
            ssl_handshake_timeout=10.0 if self.ssl_ctx else None,
        )
        self._nodelay()

    async def adopt(self, sock: socket.socket, client: tuple[str, int]) -> None:
        """Serve a connection that arrived another way (the tunnel's connector, on a socket
        pair) as if accepted here from ``client``: TLS passthrough by SNI, TLS and HTTP as for
        any other; the peer address everything sees is the public client's."""
        loop = self.dp.loop
        hooks = self.hooks
        if hooks is not None and self.passthrough is None and self.native_default is not None:
            # the fast lane's TLS and HTTP, with nothing to read first
            await loop.connect_accepted_socket(lambda: tls_connection(self.native_default, lambda: hooks.protocol(client), loop), sock)
        elif hooks is not None and self.passthrough is None and self.ssl_ctx is None:
            await loop.connect_accepted_socket(lambda: hooks.protocol(client), sock)
        else:  # TLS passthrough by the ClientHello, or Python's TLS: as a connection with a known PROXY header
            pre = ProxyPreamble(self)
            pre.proxy_done = True
            pre.client = client
            await loop.connect_accepted_socket(lambda: pre, sock)

    async def sync_quic(self) -> None:
        """Serve QUIC on this port's address and port (UDP) while a listener on it asks for
        HTTP/3, with those listeners' certificates; stop (drain) when none does. A port that
        cannot be had or a certificate aioquic cannot use is reported (``http3_status``), TCP
        serves on, and its answers do not advertise what is not there."""
        h3 = [lt for lt in self.table.listeners if lt.conf is not None and lt.conf.http3 and lt.listener.tls_certs]
        self.http3_policies = [lt.listener.client_traffic.policy for lt in h3 if lt.listener.client_traffic is not None]
        if not (self.dp.settings.http3 and self.tls and h3):
            if self.quic is not None:
                self._drain_quic()
                log.info("stopped HTTP/3 on udp %s:%d (open connections finish their requests)", self.host, self.port)
            asked = [lt for lt in self.table.listeners if lt.conf is not None and lt.conf.http3]
            self.http3_status = {"listening": False, "reason": "NoCertificate", "message": "no listener asking for HTTP/3 has a usable certificate"} if (
                asked and self.dp.settings.http3) else None
            self._not_advertised(asked)
            return
        conf = h3[0].conf
        assert conf is not None
        endpoint = self.quic
        draining = self.dp.quic_draining.get((self.host, self.port))
        if endpoint is None and draining is not None and draining.transport is not None:
            endpoint = draining  # asked for again while draining: the same socket takes new connections
        endpoint = endpoint or QuicEndpoint(new_session(self), self.dp.settings.max_connections)
        try:
            endpoint.configure([(lt.listener.hostname, lt.listener.tls_certs) for lt in h3],
                               conf.idle_timeout or self.dp.settings.idle_timeout, conf.h2_max_streams,
                               conf.h2_stream_window, conf.h2_connection_window)
        except (ValueError, TypeError) as e:
            self.http3_status = {"listening": self.quic is not None, "reason": "InvalidCertificate", "message": f"certificate not usable for QUIC: {e}"}
            log.error("HTTP/3 on udp %s:%d: certificate not usable for QUIC: %s", self.host, self.port, e)
            if self.quic is None:
                self._not_advertised(h3)
            return
        if endpoint.transport is None:
            try:
                await endpoint.listen(self.host, self.port)
            except OSError as e:
                self.http3_status = {"listening": False, "reason": "PortUnavailable", "message": f"cannot listen on udp {self.host}:{self.port}: {e.strerror or e}"}
                log.error("Gateway %s: HTTP/3 cannot listen on udp %s:%d: %s (HTTPS on TCP serves on)", self.table.gateway, self.host, self.port, e.strerror or e)
                self._not_advertised(h3)
                return
            log.info("Gateway %s port %d: HTTP/3 (QUIC) listening on udp %s:%d", self.table.gateway, self.table.port, self.host, self.port)
        if endpoint is draining:
            del self.dp.quic_draining[(self.host, self.port)]
            endpoint.session_factory = new_session(self)  # (this port server may be a new one)
            endpoint.draining = False
        self.quic = endpoint
        self.http3_status = {"listening": True, "address": f"udp {self.host}:{self.port}", "listeners": [lt.listener.name for lt in h3]}

    def _drain_quic(self) -> None:
        """Stop taking QUIC connections; the open ones finish their requests. The socket is
        remembered by the data plane until then, so that HTTP/3 asked for again on this address
        and port - by this port server or by a new one - takes it back."""
        assert self.quic is not None
        self.quic.drain()
        if self.quic.transport is not None:
            self.dp.quic_draining[(self.host, self.port)] = self.quic
        self.quic = None

    def _not_advertised(self, listeners: list[Any]) -> None:
        """No Alt-Svc on these listeners' answers (both lanes): HTTP/3 is not served here."""
        if not any(lt.conf is not None and lt.conf.alt_svc for lt in listeners):
            return
        for lt in listeners:
            if lt.conf is not None:
                lt.conf.alt_svc = None
        self._compile_fast()

    def _compile_fast(self) -> None:
        self.fast = compile_table(self.table, self.dp.clusters) if self.hooks is not None and not self.dp.overload.refuse_requests else None

    def _nodelay(self) -> None:
        """Small writes (an answer) go out at once: TCP_NODELAY on the listening sockets, which
        the connections they accept inherit (Linux), instead of a system call per connection."""
        assert self.server is not None
        for sock in self.server.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.quic is not None:
            self._drain_quic()
        # the listener is gone (or the data plane stops): as Envoy drains a listener, HTTP/2
        # clients get a GOAWAY (no new streams here; those open finish) and idle HTTP/1.1
        # connections are closed; requests in flight finish
        for conn in list(self.conns):
            goaway = getattr(conn, "goaway", None)
            if goaway is not None:
                goaway()
            elif conn.idle() and conn.transport is not None:
                conn.transport.close()


class ProxyPreamble(asyncio.Protocol):
    """What comes before HTTP on a port: the PROXY protocol header (when expected), then, on a
    port with TLS passthrough, the ClientHello's SNI - a TLSRoute's name passes the connection
    through to its backend, any other goes to this port's HTTPS listeners (after TLS)."""

    def __init__(self, server: PortServer):
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.done = False
        self.proxy_done = False
        self.client: tuple[str, int] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # a client that never sends its header must not hold the socket forever
        self.timer = self.server.dp.loop.call_later(self.server.dp.settings.request_headers_timeout, self._expire)

    def _expire(self) -> None:
        if not self.done and self.transport is not None:
            log.info("connection closed: no PROXY protocol header in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        assert self.transport is not None
        if not self.proxy_done:
            expected, optional = self.server.proxy_protocol
            info = None
            try:
                if expected:
                    complete, info = proxyproto.take(self.buf, optional)
                    if not complete:
                        return
            except proxyproto.ProxyProtocolError as e:
                log.info("connection closed: %s", e)
                self.transport.close()
                return
            self.proxy_done = True
            if info is not None:
                self.buf = self.buf[info.length :]
                self.client = (info.client_ip, info.client_port) if info.client_ip else None
        table = self.server.passthrough
        if table is not None:
            try:
                sni = client_hello_sni(self.buf)
            except NotTLS:
                sni = None  # not TLS: HTTPS (if any) will refuse it
            if sni is NEED_MORE:
                return
            route = table.select(sni)  # type: ignore[arg-type]
            if route is not None:
                self._finish()
                self._pass_through(route, sni)  # type: ignore[arg-type]
                return
            if not self.server.terminates_tls:
                log.info("connection closed: no TLSRoute for server name %r", sni)
                self._finish()
                self.transport.close()
                return
        self._finish()
        self._handoff(self.buf, self.client)

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()

    def _pass_through(self, route: ir.L4Route, sni: str | None) -> None:
        t = self.transport
        assert t is not None
        splice = spliced(self.server.dp, self.server.splices, lambda: route, self.server.table.gateway, "TLS-passthrough", sni)
        splice.pending.append(self.buf)  # the ClientHello, for the backend
        t.set_protocol(splice.client)
        splice.client.connection_made(t)

    def _handoff(self, rest: bytes, client: tuple[str, int] | None) -> None:
        t = self.transport
        assert t is not None
        hooks = self.server.hooks
        if self.server.native_default is not None and hooks is not None:
            tls = tls_connection(self.server.native_default, lambda: hooks.protocol(client), self.server.dp.loop, rest)
            t.set_protocol(tls)
            tls.connection_made(t)
            return
        proto = hooks.protocol(client) if hooks is not None else Http1Connection(self.server, client_override=client)
        if self.server.ssl_ctx is None:
            t.set_protocol(proto)
            proto.connection_made(t)
            if rest:
                proto.data_received(rest)
            return
        start_tls_after(self.server.dp.loop, t, proto, self.server.ssl_ctx, rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


def shadow_host(request: bytes) -> bytes:
    """Envoy marks a mirrored request by appending ``-shadow`` to its host (before any port)."""
    start = request.find(b"\r\nhost: ")
    if start < 0:
        return request
    start += 8
    end = request.find(b"\r\n", start)
    host = request[start:end]
    name, sep, port = host.rpartition(b":") if not host.endswith(b"]") and b":" in host else (host, b"", b"")
    return request[:start] + name + b"-shadow" + sep + port + request[end:]


def _rss() -> int:
    """This process's resident memory in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cgroup_memory_limit() -> int | None:
    """The memory limit of this process's cgroup (v2), if there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            v = f.read().strip()
    except OSError:
        return None
    return int(v) if v.isdigit() else None


class Overload:
    """Envoy's overload manager, reduced to what a home gateway needs. Above 95 % of the memory
    budget idle keep-alive connections are shed and new connections refused; above 98 % new
    requests are answered 503 (Envoy's ``stop_accepting_requests``, which Envoy Gateway turns
    on at 0.98 of its heap budget) until memory is back under the first threshold. The
    connection count has its own cap (``Settings.max_connections``)."""

    SHED, STOP_REQUESTS = 0.95, 0.98

    def __init__(self, budget: int | None):
        self.budget = budget
        self.pressure = 0.0
        self.refuse_connections = False
        self.refuse_requests = False

    def update(self, rss: int) -> bool:
        """New pressure from a reading; True when idle connections should be shed now."""
        if not self.budget:
            return False
        self.pressure = rss / self.budget
        self.refuse_connections = self.pressure >= self.SHED
        self.refuse_requests = self.pressure >= self.STOP_REQUESTS
        return self.refuse_connections


class DataPlane:
    def __init__(self, settings: Settings | None = None, bind: BindPlan | None = None):
        self.settings = settings or Settings()
        if self.settings.ticket_secret is None:
            self.settings.ticket_secret = os.urandom(32)
        set_ticket_secret(self.settings.ticket_secret)
        self.bind = bind or BindPlan()
        self.loop = asyncio.get_event_loop()
        self.clusters: dict[str, Cluster] = {}
        self.servers: dict[tuple[str, int], PortServer] = {}
        self.connections: set[Any] = set()
        self.auth = Auth(self)
        self.log = log
        self.h2_enabled = True
        self.snapshot: ir.Snapshot | None = None
        self.bindings: list[dict[str, Any]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._health: dict[str, asyncio.Task[None]] = {}
        self.stats = {"requests": 0, "protocol_errors": 0, "streams": 0}
        st = self.settings
        self.per_request = st.access_log or st.request_stats or st.flows > 0  # the lanes report each request
        self.flow_ring: FlowRing | None = FlowRing(st.flows) if st.flows > 0 else None
        self.envoy_stats = EnvoyStats(self)
        self.access = AccessLogs(self.settings.access_log_format, self.settings.access_log_dir)
        self.l4 = GatewayL4(self)  # TCP and UDP listeners (TCPRoute, UDPRoute)
        self.quic_draining: dict[tuple[str, int], QuicEndpoint] = {}  # QUIC sockets whose connections finish
        self.overload = Overload(self.settings.max_memory)
        self.rss: Callable[[], int] = _rss  # the overload check's memory reading

    # --- snapshots ----------------------------------------------------------------------

    async def apply(self, snapshot: ir.Snapshot) -> None:
        # 1. compile everything before touching anything that serves traffic
        plan = compile_snapshot(snapshot, self.bind, self.settings)
        if self.flow_ring is not None:  # flows name the pods network policy knows (the ring is shared)
            self.flow_ring.identities = snapshot.network_policy.identities if snapshot.network_policy is not None else None
        self.access.configure(snapshot.gateways)
        for problem in plan.problems:
            log.error("%s", problem)
        wanted, bindings, cluster_policies = plan.ports, plan.bindings, plan.clusters
        wanted_l4, l4_bindings = plan.l4, plan.l4_bindings
        passthrough, passthrough_proxy = plan.passthrough, plan.passthrough_proxy
        # 2. clusters: update in place, create new, drop unused
        for key, (pool, policy, cfg) in cluster_policies.items():
            c = self.clusters.get(key)
            if c is None:
                c = self.clusters[key] = Cluster(pool, policy, cfg)
            else:
                c.update(pool, policy, cfg)
            task = self._health.get(key)
            if c.config.active is not None and (task is None or task.done()):
                self._health[key] = asyncio.ensure_future(run_checks(c))
            elif c.config.active is None and task is not None:
                task.cancel()
                del self._health[key]
        for key in [k for k in self.clusters if k not in cluster_policies]:
            self.clusters.pop(key).close()
            task = self._health.pop(key, None)
            if task is not None:
                task.cancel()
        # 3. swap tables into running servers, start new ones, stop removed ones
        for key, table in wanted.items():
            sources = gateway_sources(
                snapshot.network_policy, {f"{r.namespace}/{r.name}" for r in [table.gateway] + [lt.listener.gateway for lt in table.listeners]},
                table.port,
            )
            srv = self.servers.get(key)
            if srv is not None and srv.table.protocol != table.protocol:
                srv.close()
                del self.servers[key]
                srv = None
            routes = passthrough.get(key)
            proxies = [p for p in passthrough_proxy.get(key, []) if p[0]]
            pt_proxy = (bool(proxies), bool(proxies) and all(p[1] for p in proxies))
            if srv is None:
                srv = PortServer(self, key[0], key[1], table)
                srv.source_allowed = sources
                srv.passthrough = PassthroughTable(routes, pt_proxy) if routes else None
                try:
                    srv.update(table)
                    await srv.start()
                except (OSError, RuntimeError, ssl.SSLError) as e:
                    log.error("cannot listen on %s:%d for Gateway %s: %s", key[0], key[1], table.gateway, e)
                    continue
                self.servers[key] = srv
                await srv.sync_quic()
                log.info(
                    "Gateway %s port %d (%s: %s) listening on %s:%d",
                    table.gateway, table.port, table.protocol,
                    ", ".join(lt.listener.name for lt in table.listeners), key[0], key[1],
                )
            else:
                srv.source_allowed = sources
                try:
                    srv.update(table)
                    srv.passthrough = PassthroughTable(routes, pt_proxy) if routes else None
                except (OSError, RuntimeError, ssl.SSLError) as e:
                    log.error("cannot update %s:%d: %s; keeping the previous configuration", key[0], key[1], e)
                    continue
                if srv.needs_preamble != srv.started_with_preamble:
                    # PROXY protocol or passthrough changes what is accepted (plain TCP before
                    # TLS): listen anew; open connections are not touched
                    srv.close()
                    try:
                        await srv.start()
                    except OSError as e:
                        log.error("cannot listen again on %s:%d: %s", key[0], key[1], e)
                    else:
                        log.info("port %s:%d now %s bytes before TLS (PROXY protocol, passthrough)", key[0], key[1], "reads" if srv.started_with_preamble else "no longer reads")
                await srv.sync_quic()
        for key in [k for k in self.servers if k not in wanted]:
            self.servers.pop(key).close()
            log.info("stopped listening on %s:%d", *key)
        await self.l4.apply(wanted_l4)
        for b in bindings:
            srv = self.servers.get((b["address"], b["boundPort"]))
            if srv is not None and srv.http3_status is not None:
                b["http3"] = srv.http3_status
        self.bindings = bindings + l4_bindings
        self.snapshot = snapshot

    def patch_status(self, doc: dict[str, Any]) -> None:
        """What translation cannot know, in /status: a ClientTrafficPolicy whose HTTP/3 this
        machine could not serve (the UDP port taken, a certificate QUIC cannot use) gets its
        ``Programmed`` condition False with the reason."""
        failed: dict[tuple[str, str], dict[str, Any]] = {}
        for srv in self.servers.values():
            st = srv.http3_status
            if st is not None and not st["listening"] and st["reason"] != "NoCertificate":  # (that one translation reports)
                for ref in srv.http3_policies:
                    failed.setdefault((ref.namespace or "", ref.name), st)
        for p in doc.get("policies", []):
            st = failed.get((p.get("namespace") or "", p.get("name")))
            if p.get("kind") != "ClientTrafficPolicy" or st is None:
                continue
            cond = {"type": "Programmed", "status": "False", "reason": st["reason"], "message": "HTTP/3 not served: " + st["message"]}
            p["conditions"] = [c for c in p.get("conditions", []) if c.get("type") != "Programmed"] + [cond]

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._health.values():
            task.cancel()
        for srv in self.servers.values():
            srv.close()
            for sp in list(srv.splices):
                sp.close()
        self.servers.clear()
        self.l4.close()
        for c in self.clusters.values():
            c.close()
        self.access.close()

    async def _sweep(self) -> None:
        """Timeouts for every connection and exchange, checked twice a second."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for c in list(self.connections):
                try:
                    c.check_deadline(now)
                    for ex in c.exchanges() if hasattr(c, "exchanges") else ((c.current,) if c.current else ()):
                        ex.check_deadline(now)
                except Exception:  # a timer bug must not stop all timers
                    log.exception("timeout check failed")
            for cl in self.clusters.values():
                if not cl.all_available:
                    cl.refresh_availability()  # ejections expire
                for ep in cl.endpoints:
                    while ep.idle and now - ep.idle[0].idle_since > 60:
                        ep.idle.popleft().close()
                    while ep.fast_idle and now - ep.fast_idle[0].idle_since > 60:
                        ep.fast_idle.pop(0).close()
            self.l4.expire_udp(now)
            self._check_overload()

    def _check_overload(self) -> None:
        was = self.overload.refuse_requests
        if self.overload.update(self.rss()):
            for c in list(self.connections):
                if c.idle():
                    c.transport.close()
        if self.overload.refuse_requests != was:
            # the fast lane reads its table per request: without one every request comes to
            # the Python lane, which answers 503 while the pressure lasts
            for srv in self.servers.values():
                srv.fast = None if self.overload.refuse_requests else compile_table(srv.table, self.clusters) if srv.hooks else None
            log.warning("memory overload %s (%.0f%% of %d bytes)", "on" if self.overload.refuse_requests else "over",
                        self.overload.pressure * 100, self.overload.budget or 0)

    # --- hooks used by connections and exchanges --------------------------------------

    def health_of(self, pool: str) -> dict[str, bool]:
        """The endpoints of a backend pool as the data plane sees them now: "ip:port" -> may get
        requests (health checks and outlier detection agree)."""
        now = time.monotonic()
        out: dict[str, bool] = {}
        for c in list(self.clusters.values()):
            if c.name == pool:
                for e in c.endpoints:
                    out[e.name] = out.get(e.name, True) and e.available(now)
        return out

    def connection_opened(self, conn: Any, fresh: bool = True, client: tuple[str, int] | None = None) -> None:
        """A client connection starts (``fresh``) or moves to another protocol object."""
        self.connections.add(conn)
        srv = conn.server
        srv.conns.add(conn)
        if not fresh:
            return
        srv.cx_total += 1
        if self.overload.refuse_connections or len(self.connections) > self.settings.max_connections or (
            srv.connection_limit is not None and len(srv.conns) > srv.connection_limit
        ):
            conn.transport.close()
            return
        if srv.source_allowed is not None and client is not None:
            why = srv.source_allowed(client[0])
            if why is not None:
                # the Gateway's ingress policies refuse this client (Cilium drops its packets)
                conn.transport.close()
                if self.flow_ring is not None:
                    self.flow_ring.l4("TCP", client, f"{srv.table.gateway.namespace}/{srv.table.gateway.name}", None, None,
                                      0, 0, 0.0, error=why, reason="POLICY_DENIED")

    def connection_closed(self, conn: Any) -> None:
        self.connections.discard(conn)
        conn.server.conns.discard(conn)

    def count_protocol_error(self, status: int) -> None:
        self.stats["protocol_errors"] += 1

    def mirror(self, cluster: str, head: bytes) -> None:
        c = self.clusters.get(cluster)
        if c is None:
            return
        if c.pool.policy_http is not None and not head_allowed(c.pool.policy_http, head):
            return  # network policy's L7 rules refuse this request to the mirror's pods
        ep = c.pick()
        if ep is None:
            return

        async def send() -> None:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(ep.address, ep.port), 5)
                head2 = shadow_host(head).replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
                w.write(head2)
                await asyncio.wait_for(r.read(), 10)
                w.close()
            except (OSError, asyncio.TimeoutError):
                pass

        asyncio.ensure_future(send())

    def finished(self, ex: Exchange) -> None:
        self.stats["requests"] += 1
        if not self.per_request:
            return
        a = ex.action
        gateway = str(ex.gateway)
        if self.settings.access_log:
            ua = xff = None
            headers = None
            for n, v in ex.headers:  # the first of each, as Envoy's %REQ(...)% reads them
                if n == b"user-agent" and ua is None:
                    ua = v.decode("latin-1")
                elif n == b"x-forwarded-for" and xff is None:
                    xff = v.decode("latin-1")
            if gateway in self.access.header_hungry:  # a format that reads other request headers
                headers = request_headers(ex.req_head) if isinstance(ex.req_head, bytes) and ex.req_head else first_values(ex.headers)
            self.access_line(
                gateway=gateway, client=ex.client_ip, method=ex.method.decode("latin-1"),
                host=ex.host.decode("latin-1"), path=ex.target.decode("latin-1"), protocol=ex.conn.protocol,
                status=ex.status, route=a.route_id if a else None, backend=ex.endpoint.name if ex.endpoint else None,
                duration=time.monotonic() - ex.started, bytes_in=ex.bytes_in, bytes_out=ex.bytes_out,
                request_id=ex.request_id.decode("latin-1") if ex.request_id else None, error=ex.error,
                user_agent=ua, xff=xff, attempts=ex.attempts,
                upstream_time=ex.upstream_time, cluster=ex.cluster.name if ex.cluster is not None else None, headers=headers,
            )
        self.record(ex.table, gateway, ex.client_ip, ex.method, ex.host, ex.target, ex.conn.protocol, ex.status,
                    time.monotonic() - ex.started, ex.endpoint.name if ex.endpoint else None,
                    ex.cluster.name if ex.cluster is not None else None, ex.error or None, ex.attempts, ex.upstream_time,
                    a.route_id if a else None, ex.conn.local_ip, ex.conn.scheme)

    def record(self, table: PortTable | None, gateway: str, client: str, method: bytes, host: bytes, path: bytes, protocol: str,
               status: int, duration: float, backend: str | None, cluster: str | None, error: str | None, attempts: int,
               upstream_time: float | None, route: str | None, local_ip: str, scheme: bytes) -> None:
        """Every request, whichever lane served it: Envoy's request metrics and a flow. Positional
        and raw (bytes decoded only when a flow is read): this runs once per request."""
        if self.settings.request_stats:
            self.envoy_stats.request(table, gateway, protocol, status, duration, cluster, backend is not None, upstream_time,
                                     error, route, attempts)
        ring = self.flow_ring
        if ring is not None:
            # (bytes slicing returns the object itself when it is short: no copy on the common path)
            ring.entries.append((next(ring.seq), FLOW_HTTP, time.time(), client, gateway, route, method, host[:MAX_FIELD],
                                 path[:MAX_FIELD], protocol,
                                 status, duration, backend, cluster, error, table, local_ip, scheme, attempts))

    def access_line(
        self, *, gateway: str, client: str, method: str, host: str, path: str, protocol: str, status: int,
        route: str | None, backend: str | None, duration: float, bytes_in: int, bytes_out: int,
        request_id: str | None, error: str | None, user_agent: str | None = None, xff: str | None = None,
        attempts: int = 0, upstream_time: float | None = None, cluster: str | None = None,
        headers: dict[str, str] | None = None, sni: str | None = None,
    ) -> None:
        """One access log record per request, whichever lane served it, in the format the
        Gateway's EnvoyProxy asks for (else the default)."""
        self.access.write(Record(
            start=time.time() - duration, duration=duration, gateway=gateway, route=route, method=method, path=path,
            authority=host, protocol=protocol, status=status, bytes_in=bytes_in, bytes_out=bytes_out, client=client,
            request_id=request_id, user_agent=user_agent, xff=xff, upstream_host=backend, upstream_cluster=cluster,
            upstream_time=upstream_time, error=error or None, attempts=attempts, headers=headers, sni=sni,
        ))

    def stream_finished(self, splice: Stream, gateway: ir.Ref, protocol: str, route: ir.Ref | None, endpoint: Any, sni: str | None) -> None:
        """A TCP stream (TCPRoute, TLS terminated or passed through) or a UDP session ended: one
        access log line."""
        self.stats["streams"] += 1
        duration = time.monotonic() - splice.started
        if self.flow_ring is not None:
            self.flow_ring.l4("UDP" if protocol.startswith("UDP") else "TCP", splice.peer, str(gateway), str(route) if route else None,
                              endpoint.name if endpoint is not None else None, splice.bytes_in, splice.bytes_out, duration,
                              sni=sni)
        if self.settings.access_log:
            self.access.write(Record(
                start=time.time() - duration, duration=duration, gateway=str(gateway), route=str(route) if route else None,
                protocol=protocol, client=splice.peer[0], sni=sni, bytes_in=splice.bytes_in, bytes_out=splice.bytes_out,
                upstream_host=endpoint.name if endpoint is not None else None,
                error=None if endpoint is not None else "no healthy upstream: no backend connected",
            ))



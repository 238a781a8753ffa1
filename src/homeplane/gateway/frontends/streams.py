"""Gateway TCP and UDP listeners: TCPRoute and UDPRoute, as Envoy Gateway serves them (and TLS
listeners that terminate TLS in front of a TCPRoute; TLS passthrough is in PassthroughTable).

A listener's whole stream goes to its route's backends: a backendRef is chosen by weight
for each connection (UDP: for each client address), then an endpoint of it by the gateway's
usual balancer (LeastRequest: here, fewest open connections), skipping unhealthy and ejected
ones; a refused connect tries the next endpoint. A backendRef that does not resolve takes its
share of connections and closes them, as Envoy does for TCP. When a route changes, new
connections follow it; open ones keep their backend. A ClientTrafficPolicy's PROXY protocol
applies to TCP and TLS listeners too: the header is read (before TLS) and taken off the stream,
and its client address is the one logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from homeplane.gateway.base import DataPlaneHooks, ListenerConf
from homeplane.gateway.frontends import proxyproto
from homeplane.gateway.upstreams.cluster import Cluster, ClusterConfig, EndpointState, cluster_key, cluster_settings
from homeplane.gateway.frontends.late_tls import start_tls_after
from homeplane.gateway.tls import cert_matches, make_context
from homeplane.l4.relay import Splice, UDPRelay, UDPSession
from homeplane.policy.enforce import gateway_sources
from homeplane.translate import snapshot as ir


log = logging.getLogger("homeplane.gateway")
CONNECT_TIMEOUT = 10.0


def l4_cluster(pool: str, route: ir.L4Route) -> str:
    """The gateway cluster a route's backend uses (its BackendTrafficPolicy decides which)."""
    policy, settings_id, _ = cluster_settings(route.backend_traffic)
    return cluster_key(pool, policy, settings_id)


@dataclass
class _Wanted:
    gateway: ir.Ref
    listener: str
    route: ir.L4Route
    certs: tuple[ir.TLSCert, ...] = ()  # a TLS listener that terminates here (TCPRoute behind it)
    proxy: tuple[bool, bool] = (False, False)  # PROXY protocol (expected, optional), TCP and TLS only
    sources: Any = None  # network policy: who may connect (policy.enforce.SourceCheck), None: everyone


def choose(dp: DataPlaneHooks, route: ir.L4Route, exclude: tuple[EndpointState, ...] = ()) -> tuple[Cluster, EndpointState] | None:
    """A backendRef of the route by weight, then an endpoint of it; None refuses the stream."""
    backends = [b for b in route.backends if b.weight > 0]
    if not backends:
        return None
    b = random.choices(backends, weights=[b.weight for b in backends])[0]
    if b.pool is None:
        return None  # an invalid backendRef: its share of connections is refused
    cluster = dp.clusters.get(l4_cluster(b.pool, route))
    if cluster is None:
        return None
    ep = cluster.pick(None, exclude)
    return (cluster, ep) if ep is not None else None


def relay(dp: DataPlaneHooks, splice: Splice, route: ir.L4Route, peer: tuple[str, int]) -> None:
    """Open the route's backend for an accepted connection and splice the two (or close it)."""
    chosen = choose(dp, route)
    if chosen is None:
        log.debug("%s: no backend for %s:%d", route.route, *peer)
        splice.close()
        return
    asyncio.ensure_future(_connect(splice, *chosen))


async def _connect(splice: Splice, cluster: Cluster, ep: EndpointState) -> None:
    loop = asyncio.get_running_loop()
    tried: list[EndpointState] = []
    while True:
        ep.active += 1
        side = splice.backend_side()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: side, ep.address, ep.port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            ep.active -= 1
            cluster.result(ep, None, local_failure=True)
            tried.append(ep)
            nxt = cluster.pick(None, tuple(tried))
            if nxt is None or nxt in tried or splice.closed:
                splice.close()
                return
            ep = nxt
            continue
        break
    if splice.closed:
        ep.active -= 1
        if side.transport is not None:
            side.transport.close()
        return
    splice.context = ep
    splice.attach(side)


def spliced(
    dp: DataPlaneHooks, splices: set[Splice], route_for: Callable[[], ir.L4Route | None], gateway: ir.Ref, protocol: str,
    sni: str | None = None, sources: Callable[[], Any] | None = None,
) -> Splice:
    """A Splice whose backend is chosen from ``route_for()`` when the client connects, counted
    in ``splices`` while open (and on its endpoint, for LeastRequest), with an access log line
    when it ends."""
    chosen: list[ir.L4Route] = []

    def opened(splice: Splice, peer: tuple[str, int]) -> None:
        route = route_for()
        check = sources() if sources is not None else None
        if route is None or (check is not None and check(peer[0]) is not None):
            splice.close()  # no route, or the Gateway's ingress policies refuse this client
            return
        chosen.append(route)
        relay(dp, splice, route, peer)

    def closed(splice: Splice) -> None:
        splices.discard(splice)
        ep = splice.context
        if isinstance(ep, EndpointState):
            ep.active -= 1
            splice.context = None
        dp.stream_finished(splice, gateway, protocol, chosen[0].route if chosen else None, ep if isinstance(ep, EndpointState) else None, sni)

    splice = Splice(opened, closed)
    splices.add(splice)
    return splice


class L4Listener:
    def __init__(self, dp: DataPlaneHooks, key: tuple[str, int, str], wanted: _Wanted):
        self.dp = dp
        self.key = key
        self.wanted = wanted
        self.server: Any = None
        self.udp: UDPRelay | None = None
        self.splices: set[Splice] = set()
        self._contexts: list[tuple[ir.TLSCert, ssl.SSLContext]] = []
        self.proxy = wanted.proxy[0] and key[2] == "TCP"  # as listening: a change means listening anew
        self.tls_ctx: ssl.SSLContext | None = None

    def new_splice(self) -> Splice:
        w = self.wanted
        return spliced(self.dp, self.splices, lambda: self.wanted.route, w.gateway, "TLS" if w.certs else "TCP",
                       sources=lambda: self.wanted.sources)

    def accept(self) -> asyncio.Protocol:
        return _ProxyHeader(self) if self.proxy else self.new_splice().client

    # --- UDP --------------------------------------------------------------------------

    def pick_udp(self, addr: Any) -> tuple[str, int, Any] | None:
        route = self.wanted.route
        if self.wanted.sources is not None and self.wanted.sources(str(addr[0])) is not None:
            return None  # the Gateway's ingress policies refuse this client
        chosen = choose(self.dp, route)
        if chosen is None:
            return None
        ep = chosen[1]
        ep.active += 1
        return ep.address, ep.port, (ep, route.route)

    def udp_ended(self, sess: UDPSession) -> None:
        """A UDP session ended (idle, or the listener closed): one access log line, as for TCP."""
        ep, route = sess.context
        ep.active -= 1
        self.dp.stream_finished(sess, self.wanted.gateway, "UDP", route, ep, None)

    # --- lifecycle --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """For a TLS listener that terminates: the certificate by SNI (the first one without)."""
        if not self.wanted.certs:
            return None

        self._contexts = [(c, make_context(c, ListenerConf(), h2=False, http=False)) for c in self.wanted.certs]

        def by_name(sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
            for cert, c in self._contexts:
                if name and cert_matches(cert, name.lower()):
                    sslobj.context = c
                    return

        base = self._contexts[0][1]
        base.sni_callback = by_name
        return base

    async def start(self) -> None:
        host, port, proto = self.key
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        if proto == "TCP":
            self.tls_ctx = self.ssl_context()
            # with a PROXY header first, TLS starts after it (_ProxyHeader), not on accept
            early_tls = None if self.proxy else self.tls_ctx
            self.server = await loop.create_server(
                self.accept, host, port, family=fam, reuse_address=True, backlog=1024, ssl=early_tls,
                ssl_handshake_timeout=10.0 if early_tls else None,
            )
        else:
            self.udp = UDPRelay(self.pick_udp, self.udp_ended)
            self.server, _ = await loop.create_datagram_endpoint(lambda: self.udp, local_addr=(host, port), family=fam)

    def close(self) -> None:
        """Stop accepting; open TCP connections finish on their own (UDP sessions end now)."""
        if self.server is not None:
            self.server.close()
        if self.udp is not None:
            self.udp.close()


class _ProxyHeader(asyncio.Protocol):
    """The first bytes of a connection to a TCP/TLS listener with PROXY protocol: the header,
    then the stream (through TLS for a terminating listener) goes to a Splice."""

    def __init__(self, listener: L4Listener):
        self.listener = listener
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        dp = self.listener.dp
        self.timer = dp.loop.call_later(dp.settings.request_headers_timeout, self._expire)

    def _expire(self) -> None:
        if not self.done and self.transport is not None:
            log.info("connection closed: no PROXY protocol header in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.done or self.transport is None:
            return
        self.buf += data
        try:
            complete, info = proxyproto.take(self.buf, optional=self.listener.wanted.proxy[1])
            if not complete:
                return
        except proxyproto.ProxyProtocolError as e:
            log.info("connection closed: %s", e)
            self.transport.close()
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        rest = self.buf[info.length :] if info is not None else self.buf
        splice = self.listener.new_splice()
        if info is not None and info.client_ip:
            splice.peer_override = (info.client_ip, info.client_port or 0)
        t = self.transport
        if self.listener.tls_ctx is not None:
            start_tls_after(self.listener.dp.loop, t, splice.client, self.listener.tls_ctx, rest)
            return
        if rest:
            splice.pending.append(rest)
            splice.bytes_in += len(rest)
        t.set_protocol(splice.client)
        splice.client.connection_made(t)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class GatewayL4:
    """The TCP/UDP listeners of every Gateway, kept in step with the Snapshot."""

    def __init__(self, dp: DataPlaneHooks):
        self.dp = dp
        self.listeners: dict[tuple[str, int, str], L4Listener] = {}

    @staticmethod
    def clusters(snapshot: ir.Snapshot) -> dict[str, tuple[str, str, ClusterConfig | None]]:
        """Cluster key -> (pool, policy, settings) for the TCP/UDP listeners' served route and
        every TLS passthrough route."""
        out: dict[str, tuple[str, str, ClusterConfig | None]] = {}
        for gw in snapshot.gateways:
            for ls in gw.listeners:
                for r in ls.l4_routes if ls.protocol == "TLS" and ls.tls_mode == "Passthrough" else ls.l4_routes[:1]:
                    policy, _, cfg = cluster_settings(r.backend_traffic)
                    for b in r.backends:
                        if b.pool:
                            out[l4_cluster(b.pool, r)] = (b.pool, policy, cfg)
        return out

    async def apply(self, wanted: dict[tuple[str, int, str], _Wanted]) -> None:
        for key, w in wanted.items():
            lst = self.listeners.get(key)
            if lst is not None and (lst.wanted.certs != w.certs or lst.proxy != (w.proxy[0] and key[2] == "TCP")):
                lst.close()  # new certificates or PROXY protocol: listen anew (open connections carry on)
                del self.listeners[key]
                lst = None
            if lst is not None:
                lst.wanted = w  # new connections follow the new route; open ones keep their backend
                continue
            lst = L4Listener(self.dp, key, w)
            try:
                await lst.start()
            except OSError as e:
                log.error("cannot listen on %s:%d/%s for Gateway %s listener %s: %s", key[0], key[1], key[2], w.gateway, w.listener, e)
                continue
            self.listeners[key] = lst
            log.info("Gateway %s listener %s (%s) listening on %s:%d -> %s", w.gateway, w.listener, key[2], key[0], key[1], w.route.route)
        for key in [k for k in self.listeners if k not in wanted]:
            self.listeners.pop(key).close()
            log.info("stopped listening on %s:%d/%s", *key)

    def expire_udp(self, now: float) -> None:
        for lst in self.listeners.values():
            if lst.udp is not None:
                lst.udp.expire(now)

    def close(self) -> None:
        for lst in self.listeners.values():
            lst.close()
            for s in list(lst.splices):
                s.close()
        self.listeners.clear()


def wanted_listeners(snapshot: ir.Snapshot, address_for: Any, port_for: Any) -> tuple[dict[tuple[str, int, str], _Wanted], list[dict[str, Any]]]:
    """(bound address, port, protocol) -> what to serve there, and the bindings to report."""
    wanted: dict[tuple[str, int, str], _Wanted] = {}
    bindings = []
    for gw in snapshot.gateways:
        addr = address_for(gw)
        for ls in gw.listeners:
            terminated = ls.protocol == "TLS" and ls.tls_mode != "Passthrough"
            if (ls.protocol not in ("TCP", "UDP") and not terminated) or not ls.ready or not ls.l4_routes:
                continue
            key = (addr, port_for(ls.port), "TCP" if terminated else ls.protocol)
            if key in wanted:
                log.error("Gateway %s listener %s: %s:%d/%s is already used by Gateway %s; not served", gw.ref, ls.name, *key, wanted[key].gateway)
                continue
            proxy = proxyproto.wanted(ls.client_traffic.settings if ls.client_traffic else None)
            wanted[key] = _Wanted(gw.ref, ls.name, ls.l4_routes[0], ls.tls_certs if terminated else (), proxy,
                                  gateway_sources(snapshot.network_policy, [gw.key], ls.port, "UDP" if ls.protocol == "UDP" else "TCP"))
            bindings.append(
                {
                    "gateway": f"{gw.ref.namespace}/{gw.ref.name}", "port": ls.port, "protocol": ls.protocol,
                    "address": addr, "boundPort": key[1], "listeners": [ls.name],
                }
            )
    return wanted, bindings


class PassthroughTable:
    """TLS passthrough on one port: the TLSRoute for a ClientHello's server name. An exact name
    wins over a wildcard, a longer wildcard over a shorter, ``*`` (any) comes last; between
    routes for the same name the oldest wins (``routes`` comes oldest first)."""

    def __init__(self, routes: list[ir.L4Route], proxy: tuple[bool, bool] = (False, False)):
        self.proxy = proxy  # PROXY protocol asked for by a passthrough listener's ClientTrafficPolicy
        self.exact: dict[str, ir.L4Route] = {}
        wild: dict[str, ir.L4Route] = {}
        self.any: ir.L4Route | None = None
        for r in routes:
            for h in r.hostnames:
                if h == "*":
                    self.any = self.any or r
                elif h.startswith("*."):
                    wild.setdefault(h[1:], r)
                else:
                    self.exact.setdefault(h, r)
        self.wild = sorted(wild.items(), key=lambda kv: -len(kv[0]))

    def select(self, sni: str | None) -> ir.L4Route | None:
        if sni:
            r = self.exact.get(sni)
            if r is not None:
                return r
            for suffix, r in self.wild:
                if sni.endswith(suffix) and len(sni) > len(suffix):
                    return r
        return self.any


def passthrough_listeners(
    snapshot: ir.Snapshot, address_for: Any, port_for: Any
) -> Iterator[tuple[tuple[str, int], ir.Ref, int, str, tuple[ir.L4Route, ...], tuple[bool, bool]]]:
    """The ready TLS passthrough listeners with routes: (bound address and port, Gateway,
    listener port, listener name, its TLSRoutes oldest first, PROXY protocol (expected, optional))."""
    for gw in snapshot.gateways:
        addr = address_for(gw)
        for ls in gw.listeners:
            if ls.protocol == "TLS" and ls.tls_mode == "Passthrough" and ls.ready and ls.l4_routes:
                proxy = proxyproto.wanted(ls.client_traffic.settings if ls.client_traffic else None)
                yield (addr, port_for(ls.port)), gw.ref, ls.port, ls.name, ls.l4_routes, proxy

"""Backend clusters at run time: endpoints with in-flight counters, idle upstream
connections and health, kept across Snapshot swaps when the endpoint is unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from homeplane.gateway.upstreams.balancer import Balancer
from homeplane.gateway.upstreams.pool import H2C_PROTOCOLS
from homeplane.translate import snapshot as ir

if TYPE_CHECKING:
    from homeplane.gateway.upstreams.pool import PooledConnection


def cluster_key(pool: str, policy: str, settings_id: str = "") -> str:
    """Clusters are per (pool, load-balancing policy, BackendTrafficPolicy with cluster
    settings): like Envoy Gateway's per-route clusters, routes may treat one pool differently."""
    return f"{pool}|{policy}|{settings_id}"


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster-wide settings from a BackendTrafficPolicy (lowered by translate)."""

    active: ir.ActiveCheck | None = None
    passive: ir.PassiveCheck | None = None
    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024


def cluster_settings(bt: ir.BackendTrafficIR | None) -> tuple[str, str, ClusterConfig | None]:
    """(load-balancing policy, settings id for the cluster key, cluster settings) from the
    BackendTrafficPolicy in effect; clusters with their own health checks or circuit breaker
    are kept apart per policy."""
    s = bt.settings if bt is not None else None
    policy = s.lb_policy if s is not None else "LeastRequest"
    if bt is None or s is None or not s.own_cluster:
        return policy, "", None
    return policy, f"{bt.policy.namespace}/{bt.policy.name}", ClusterConfig(
        active=s.active, passive=s.passive, max_connections=s.max_connections, max_pending=s.max_pending,
        max_requests=s.max_requests,
    )


class EndpointState:
    __slots__ = (
        "address", "port", "fqdn", "name", "active", "idle", "healthy", "failures", "ejected_until", "key",
        "hc_ok", "hc_fail", "ejections", "gateway_failures", "local_failures", "connections", "h2_pending",
        "fast_idle",
    )

    def __init__(self, ep: ir.Endpoint):
        self.address = ep.address
        self.port = ep.port
        self.fqdn = ep.fqdn
        self.name = f"{ep.address}:{ep.port}"
        self.key = (ep.address, ep.port)
        self.active = 0  # in-flight requests
        self.idle: deque[PooledConnection] = deque()
        self.healthy = True  # active health checks
        self.failures = 0  # consecutive 5xx (passive outlier detection)
        self.gateway_failures = 0  # consecutive 502/503/504
        self.local_failures = 0  # consecutive connect failures and resets
        self.ejected_until = 0.0
        self.ejections = 0
        self.hc_ok = 0
        self.hc_fail = 0
        self.connections = 0
        self.h2_pending: asyncio.Future | None = None  # an h2c connection on its way (upstream_h2)
        self.fast_idle: list[Any] = []  # idle connections of the HTTP/1.1 fast lane (_fastlane.Upstream)

    def available(self, now: float) -> bool:
        return self.healthy and self.ejected_until <= now

    def close_idle(self) -> None:
        while self.idle:
            self.idle.popleft().close()
        while self.fast_idle:
            self.fast_idle.pop().close()


@dataclass
class UpstreamTLSContext:
    source: ir.UpstreamTLS
    context: ssl.SSLContext
    server_hostname: str
    subject_alt_names: tuple[str, ...]

    @staticmethod
    def build(t: ir.UpstreamTLS) -> UpstreamTLSContext:
        if not t.valid:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts nothing: every handshake fails, closed
        elif t.ca_pem:
            ctx = ssl.create_default_context(cadata=t.ca_pem.decode())
        else:
            ctx = ssl.create_default_context()
        if t.subject_alt_names:
            ctx.check_hostname = False  # the chain is still verified; the names are checked after the handshake
        ctx.set_alpn_protocols(["http/1.1"])
        return UpstreamTLSContext(t, ctx, t.hostname, t.subject_alt_names)


class Cluster:
    """A backend pool at run time. ``endpoints`` holds the ready ones, in a stable order."""

    def __init__(self, pool: ir.BackendPool, policy: str = "LeastRequest", config: ClusterConfig | None = None):
        self.name = pool.name
        self.pool = pool
        self.config = config or ClusterConfig()
        self.balancer: Balancer[EndpointState] = Balancer(policy)
        self.endpoints: list[EndpointState] = []
        self.names: list[str] = []
        self.all_available = True
        self._tls: UpstreamTLSContext | None = None
        self.update(pool, policy)

    def tls(self) -> UpstreamTLSContext | None:
        """The client TLS context for this pool's BackendTLSPolicy, built once per policy version."""
        t = self.pool.tls
        if t is None:
            return None
        if self._tls is None or self._tls.source != t:
            self._tls = UpstreamTLSContext.build(t)
        return self._tls

    @property
    def h2c(self) -> bool:
        """Does the backend speak HTTP/2 cleartext (Service appProtocol kubernetes.io/h2c)?"""
        return (self.pool.app_protocol or "") in H2C_PROTOCOLS

    def update(self, pool: ir.BackendPool, policy: str, config: ClusterConfig | None = None) -> list[EndpointState]:
        """Take a new endpoint list; returns endpoints that left (their idle connections are closed)."""
        if config is not None:
            self.config = config
        if self.pool.tls != pool.tls or self.pool.app_protocol != pool.app_protocol:
            # pooled connections were made for the old TLS settings or protocol: never reuse them
            for e in self.endpoints:
                e.close_idle()
        old = {e.key: e for e in self.endpoints}
        new: list[EndpointState] = []
        for ep in pool.ready_endpoints:
            st = old.pop((ep.address, ep.port), None)
            new.append(st if st is not None else EndpointState(ep))
        self.pool = pool
        self.endpoints = new
        self.names = [e.name for e in new]
        # set False by health checking / outlier detection while any endpoint is out
        self.all_available = True
        if policy != self.balancer.policy:
            self.balancer = Balancer(policy)
        gone = list(old.values())
        for e in gone:
            e.close_idle()
        return gone

    def pick(self, key: bytes | None = None, exclude: Sequence[EndpointState] = ()) -> EndpointState | None:
        eps = self.endpoints
        if not eps:
            return None
        if not exclude and self.all_available:
            if len(eps) == 1:
                return eps[0]
            return eps[self.balancer.pick(eps, [e.active for e in eps], self.names, key)]
        now = time.monotonic()
        cand = [e for e in eps if e.available(now) and e not in exclude]
        if not cand:
            # Envoy's panic mode: with no healthy endpoint left, use all of them.
            cand = [e for e in eps if e not in exclude] or list(eps)
        if len(cand) == 1:
            return cand[0]
        i = self.balancer.pick(cand, [e.active for e in cand], [e.name for e in cand], key)
        return cand[i]

    def refresh_availability(self) -> None:
        now = time.monotonic()
        self.all_available = all(e.available(now) for e in self.endpoints)

    def active_requests(self) -> int:
        eps = self.endpoints
        if len(eps) == 1:  # the usual home-lab Service: one replica
            return eps[0].active
        return sum(e.active for e in eps)

    def result(self, ep: EndpointState, status: int | None, local_failure: bool = False) -> None:
        """Passive health: count consecutive failures and eject an endpoint that crosses a threshold."""
        p = self.config.passive
        if p is None:
            return
        if local_failure:
            ep.local_failures += 1
        elif status is not None and status >= 500:
            ep.failures += 1
            if status in (502, 503, 504):
                ep.gateway_failures += 1
        else:
            ep.failures = ep.gateway_failures = ep.local_failures = 0
            return
        trip = (
            (p.consecutive_5xx and ep.failures >= p.consecutive_5xx)
            or (p.consecutive_gateway and ep.gateway_failures >= p.consecutive_gateway)
            or (p.consecutive_local and ep.local_failures >= p.consecutive_local)
        )
        if not trip:
            return
        now = time.monotonic()
        ejected = sum(1 for e in self.endpoints if e.ejected_until > now)
        # max_ejection_percent, but always allow one ejection (as Envoy does for small clusters)
        if ejected >= max(1, len(self.endpoints) * p.max_ejection_percent // 100):
            return
        ep.ejections += 1
        ep.ejected_until = now + p.base_ejection * ep.ejections
        ep.failures = ep.gateway_failures = ep.local_failures = 0
        self.all_available = False

    def close(self) -> None:
        for e in self.endpoints:
            e.close_idle()

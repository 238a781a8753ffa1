"""Backend clusters at run time: endpoints with in-flight counters, idle upstream
connections and health, kept across Snapshot swaps when the endpoint is unchanged.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Sequence

from homeplane.gateway.balancer import Balancer
from homeplane.translate import snapshot as ir

if TYPE_CHECKING:
    from homeplane.gateway.upstream import UpstreamConnection


def cluster_key(pool: str, policy: str) -> str:
    """Clusters are per (pool, load-balancing policy): routes may balance one pool differently."""
    return f"{pool}|{policy}"


class EndpointState:
    __slots__ = ("address", "port", "fqdn", "name", "active", "idle", "healthy", "failures", "ejected_until", "key")

    def __init__(self, ep: ir.Endpoint):
        self.address = ep.address
        self.port = ep.port
        self.fqdn = ep.fqdn
        self.name = f"{ep.address}:{ep.port}"
        self.key = (ep.address, ep.port)
        self.active = 0  # in-flight requests
        self.idle: deque[UpstreamConnection] = deque()
        self.healthy = True  # active health checks
        self.failures = 0  # consecutive failures (passive outlier detection)
        self.ejected_until = 0.0

    def available(self, now: float) -> bool:
        return self.healthy and self.ejected_until <= now

    def close_idle(self) -> None:
        while self.idle:
            self.idle.popleft().close()


class Cluster:
    """A backend pool at run time. ``endpoints`` holds the ready ones, in a stable order."""

    def __init__(self, pool: ir.BackendPool, policy: str = "LeastRequest"):
        self.name = pool.name
        self.pool = pool
        self.balancer: Balancer[EndpointState] = Balancer(policy)
        self.endpoints: list[EndpointState] = []
        self.names: list[str] = []
        self.all_available = True
        self.update(pool, policy)

    def update(self, pool: ir.BackendPool, policy: str) -> list[EndpointState]:
        """Take a new endpoint list; returns endpoints that left (their idle connections are closed)."""
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

    def close(self) -> None:
        for e in self.endpoints:
            e.close_idle()

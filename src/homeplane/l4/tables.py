"""Per-service load-balancing tables compiled from the Snapshot (shared by both L4 data paths).

For each Service port with ready endpoints: its virtual addresses (ClusterIP and
LoadBalancer IPs), and a Maglev table over the endpoints' stable names, built
the same way on every node.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from homeplane.l4 import maglev
from homeplane.translate import snapshot as ir


@dataclass(frozen=True)
class Backend:
    address: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ServiceTable:
    service: ir.Ref
    port: int
    protocol: str  # TCP | UDP
    vips: tuple[str, ...]
    backends: tuple[Backend, ...]  # sorted by name; table entries index into this
    table: tuple[int, ...]
    session_affinity: bool
    external_traffic_policy: str | None
    local_only: bool = False  # the LB-IP half of an externalTrafficPolicy: Local Service

    def pick(self, key: bytes, exclude: frozenset[str] = frozenset()) -> Backend | None:
        """The backend for a flow: Maglev entry of the flow hash; on an excluded (unhealthy)
        backend, the next entries in table order (consistent for everyone)."""
        if not self.backends:
            return None
        m = len(self.table)
        h = zlib.crc32(key) % m
        for i in range(min(m, 64)):
            b = self.backends[self.table[(h + i) % m]]
            if b.name not in exclude:
                return b
        # most backends excluded: the first one left after the flow's own entry
        n = len(self.backends)
        start = self.table[h]
        return next((self.backends[(start + i) % n] for i in range(n) if self.backends[(start + i) % n].name not in exclude), None)


def flow_key(client_ip: str, client_port: int, protocol: str, affinity: bool) -> bytes:
    # sessionAffinity ClientIP: every connection of a client goes to the same backend
    return client_ip.encode() if affinity else f"{client_ip}:{client_port}/{protocol}".encode()


def is_local(e: ir.Endpoint, node_name: str | None) -> bool:
    """On this node? Endpoints that name no node count as local (the one-machine setup)."""
    return node_name is None or e.node_name is None or e.node_name == node_name


def compile_tables(
    snap: ir.Snapshot, size: int = maglev.DEFAULT_SIZE, seed: bytes = b"", node_name: str | None = None
) -> list[ServiceTable]:
    """One table per Service port; an ``externalTrafficPolicy: Local`` Service gets a second
    one for its LB IPs with this node's endpoints only (no other node's, as kube-proxy and
    Cilium do it, so the client's address survives and an LB without local endpoints fails over)."""
    out = []
    for svc in snap.services:
        if svc.type not in ("ClusterIP", "NodePort", "LoadBalancer") or svc.headless:
            continue
        local = svc.external_traffic_policy == "Local" and bool(svc.lb_ips)
        groups: list[tuple[tuple[str, ...], bool]] = []
        if local:
            groups = [((svc.cluster_ip,) if svc.cluster_ip else (), False), (tuple(svc.lb_ips), True)]
        else:
            groups = [(tuple(x for x in ((svc.cluster_ip,) if svc.cluster_ip else ()) + tuple(svc.lb_ips) if x), False)]
        for p in svc.ports:
            if p.protocol not in ("TCP", "UDP"):
                continue
            pool = snap.pools.get(p.pool)
            ready = [e for e in (pool.ready_endpoints if pool else ()) if not e.fqdn]
            for vips, local_only in groups:
                if not vips:
                    continue
                chosen = [e for e in ready if is_local(e, node_name)] if local_only else ready
                out.append(_table(svc, p, vips, chosen, size, seed, local_only))
    return out


def _table(
    svc: ir.Service, p: ir.ServicePort, vips: tuple[str, ...], endpoints: list[ir.Endpoint], size: int, seed: bytes, local_only: bool
) -> ServiceTable:
    eps = sorted({Backend(e.address, e.port) for e in endpoints}, key=lambda b: b.name)
    names, table = maglev.build([b.name for b in eps], size, seed=seed) if eps else ([], [])
    order = {b.name: b for b in eps}
    return ServiceTable(
        service=svc.ref,
        port=p.port,
        protocol=p.protocol,
        vips=vips,
        backends=tuple(order[n] for n in names),
        table=tuple(table),
        session_affinity=svc.session_affinity == "ClientIP",
        external_traffic_policy=svc.external_traffic_policy,
        local_only=local_only,
    )

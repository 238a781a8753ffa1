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
        return None


def flow_key(client_ip: str, client_port: int, protocol: str, affinity: bool) -> bytes:
    # sessionAffinity ClientIP: every connection of a client goes to the same backend
    return client_ip.encode() if affinity else f"{client_ip}:{client_port}/{protocol}".encode()


def compile_tables(snap: ir.Snapshot, size: int = maglev.DEFAULT_SIZE, seed: bytes = b"") -> list[ServiceTable]:
    out = []
    for svc in snap.services:
        if svc.type not in ("ClusterIP", "NodePort", "LoadBalancer") or svc.headless:
            continue
        vips = tuple(x for x in ((svc.cluster_ip,) if svc.cluster_ip else ()) + tuple(svc.lb_ips) if x)
        if not vips:
            continue
        for p in svc.ports:
            if p.protocol not in ("TCP", "UDP"):
                continue
            pool = snap.pools.get(p.pool)
            eps = sorted({Backend(e.address, e.port) for e in (pool.ready_endpoints if pool else ()) if not e.fqdn}, key=lambda b: b.name)
            names, table = maglev.build([b.name for b in eps], size, seed=seed) if eps else ([], [])
            order = {b.name: b for b in eps}
            out.append(
                ServiceTable(
                    service=svc.ref,
                    port=p.port,
                    protocol=p.protocol,
                    vips=vips,
                    backends=tuple(order[n] for n in names),
                    table=tuple(table),
                    session_affinity=svc.session_affinity == "ClientIP",
                    external_traffic_policy=svc.external_traffic_policy,
                )
            )
    return out

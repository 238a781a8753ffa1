"""What a node may announce: CiliumL2AnnouncementPolicies applied to the Services of a Snapshot.

A policy selects Services (``serviceSelector`` on their labels, plus Cilium's
``io.kubernetes.service.namespace`` and ``io.kubernetes.service.name``), nodes (``nodeSelector``
on the node's labels) and interfaces (``interfaces``: regular expressions, any of which may match
the name anywhere, as Go's ``MatchString``), and which addresses: ``loadBalancerIPs`` (the
Service's LB IPAM addresses) and/or ``externalIPs``. No ``nodeSelector``: every node; no
``interfaces``: every interface. A Service with ``externalTrafficPolicy: Local`` is announced only
by nodes with one of its endpoints (homeplane's addition: Cilium's announcer does not look). Every
policy that selects a Service adds its addresses on its interfaces. ARP is IPv4: IPv6 addresses are left to neighbour
discovery, which is not done yet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import re2

from homeplane.translate import snapshot as ir


@dataclass(frozen=True)
class Announcement:
    service: ir.Ref
    pairs: tuple[tuple[str, str], ...]  # (interface of this node, address): what it answers for where
    policies: tuple[str, ...]  # the CiliumL2AnnouncementPolicies that selected it

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ip for _, ip in self.pairs))

    @property
    def interfaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for i, _ in self.pairs))


def _service_labels(svc: ir.Service) -> dict[str, str]:
    return {**svc.labels, "io.kubernetes.service.namespace": svc.ref.namespace or "default",
            "io.kubernetes.service.name": svc.ref.name}


def _has_local_endpoint(snap: ir.Snapshot, svc: ir.Service, node: str) -> bool:
    """As the L4 data paths count it: endpoints that name no node are everywhere."""
    from homeplane.l4.tables import is_local

    return any(is_local(e, node) for p in svc.ports if (pool := snap.pools.get(p.pool)) is not None for e in pool.ready_endpoints)


def announcements(snap: ir.Snapshot, policies: Iterable[Any], node: str, node_labels: Mapping[str, str],
                  interfaces: Iterable[str]) -> list[Announcement]:
    """The Services this node may announce, with the addresses and its interfaces for each."""
    labels = {**node_labels, "kubernetes.io/hostname": node}
    mine = []
    for o in sorted(policies, key=lambda o: o.name):
        spec = o.model.spec
        if spec.node_selector is not None and not spec.node_selector.matches(labels):
            continue
        patterns = [re2.compile(p) for p in spec.interfaces]  # checked at load
        ifaces = tuple(i for i in interfaces if not patterns or any(p.search(i) for p in patterns))
        if ifaces:
            mine.append((o, spec, ifaces))
    out = []
    for svc in snap.services:
        if svc.external_traffic_policy == "Local" and not _has_local_endpoint(snap, svc, node):
            continue
        pairs: dict[tuple[str, str], None] = {}
        names = []
        for o, spec, ifaces in mine:  # every policy that selects it adds its addresses on its interfaces (as Cilium)
            if spec.service_selector is not None and not spec.service_selector.matches(_service_labels(svc)):
                continue
            ips = (svc.lb_ips if spec.load_balancer_i_ps else ()) + (svc.external_ips if spec.external_i_ps else ())
            ips = tuple(ip for ip in ips if _v4(ip))
            if ips:
                names.append(o.name)
                pairs.update({(i, ip): None for i in ifaces for ip in ips})
        if pairs:
            out.append(Announcement(svc.ref, tuple(pairs), tuple(names)))
    return out


def _v4(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False

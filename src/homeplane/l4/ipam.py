"""ClusterIP allocation from the service CIDR (Kubernetes' default 10.43.0.0/16 in k3s layouts).

Pure: previous allocations and the Services in, new allocations and problems out.
A fixed ``spec.clusterIP`` is honoured (two Services asking for the same one is a
conflict, reported on both; the alphabetically first keeps it). Other Services
keep what they had; new ones get an address derived from a hash of their name,
probing upward for a free one - so even without a state store the same
manifests give the same addresses. The network address, the first host address
(the ``kubernetes`` Service's in a cluster) and the broadcast address are never
handed out.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping

DEFAULT_SERVICE_CIDR = "10.43.0.0/16"

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ServiceRequest:
    key: ServiceKey
    fixed: str | None = None  # spec.clusterIP as written ("None" = headless: no address)


@dataclass
class Allocation:
    addresses: dict[ServiceKey, str] = field(default_factory=dict)
    problems: dict[ServiceKey, str] = field(default_factory=dict)


def allocate_cluster_ips(
    requests: Iterable[ServiceRequest], cidr: str = DEFAULT_SERVICE_CIDR, previous: Mapping[ServiceKey, str] | None = None
) -> Allocation:
    net = ipaddress.ip_network(cidr, strict=False)
    previous = previous or {}
    reserved = {net.network_address, net.network_address + 1}
    if net.version == 4 and net.num_addresses > 2:
        reserved.add(net.broadcast_address)
    out = Allocation()
    used: dict[ipaddress._BaseAddress, ServiceKey] = {}
    reqs = sorted(requests, key=lambda r: r.key)
    dynamic: list[ServiceRequest] = []
    for r in reqs:
        if r.fixed in (None, ""):
            dynamic.append(r)
            continue
        if r.fixed == "None":
            continue  # headless
        try:
            ip = ipaddress.ip_address(r.fixed)
        except ValueError:
            out.problems[r.key] = f"spec.clusterIP {r.fixed!r} is not an IP address"
            continue
        if ip not in net:
            out.problems[r.key] = f"spec.clusterIP {ip} is outside the service CIDR {net}"
            continue
        if ip in used:
            other = used[ip]
            out.problems[r.key] = f"spec.clusterIP {ip} is already the address of Service {other[0]}/{other[1]}"
            continue
        used[ip] = r.key
        out.addresses[r.key] = str(ip)
    size = net.num_addresses
    for r in dynamic:
        prev = previous.get(r.key)
        if prev is not None:
            try:
                ip = ipaddress.ip_address(prev)
            except ValueError:
                ip = None
            if ip is not None and ip in net and ip not in used and ip not in reserved:
                used[ip] = r.key
                out.addresses[r.key] = str(ip)
                continue
        start = int.from_bytes(hashlib.sha256(f"{r.key[0]}/{r.key[1]}".encode()).digest()[:8], "big") % size
        for i in range(size):
            ip = net.network_address + (start + i) % size
            if ip not in used and ip not in reserved:
                used[ip] = r.key
                out.addresses[r.key] = str(ip)
                break
        else:
            out.problems[r.key] = f"the service CIDR {net} is full"
    return out

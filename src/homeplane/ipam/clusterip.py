"""ClusterIP allocation from the service CIDR (Kubernetes' default 10.43.0.0/16 in k3s layouts).

Pure: previous allocations and the Services in, new allocations and problems out.
Every address handed out before is kept first, whatever the names sort as (a
ClusterIP never moves under a running cluster). A fixed ``spec.clusterIP`` is then
honoured (asking for an address another Service has is a conflict, reported, as
the API server refuses it; between two new ones the alphabetically first keeps
it). New Services get an address derived from a hash of their name,
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

    def fixed_ip(r: ServiceRequest) -> ipaddress._BaseAddress | None | str:
        """The requested address, None for none, or the problem with it."""
        if r.fixed in (None, ""):
            return None
        try:
            ip = ipaddress.ip_address(str(r.fixed))
        except ValueError:
            return f"spec.clusterIP {r.fixed!r} is not an IP address"
        if ip not in net:
            return f"spec.clusterIP {ip} is outside the service CIDR {net}"
        return ip

    # 1. every address already handed out stays where it is (a ClusterIP is fixed for the
    #    Service's life): before anything new is placed, so a new Service - whatever its
    #    name sorts as - can never take an existing one's address
    for r in reqs:
        if r.fixed == "None":
            continue  # headless
        prev = previous.get(r.key)
        want = fixed_ip(r)
        if prev is None or isinstance(want, str):
            continue
        try:
            ip = ipaddress.ip_address(prev)
        except ValueError:
            continue
        if ip in net and ip not in used and ip not in reserved and (want is None or want == ip):
            used[ip] = r.key
            out.addresses[r.key] = str(ip)
    # 2. fixed spec.clusterIP requests; an address in use is a conflict (as the API refuses it)
    for r in reqs:
        if r.key in out.addresses or r.fixed in (None, "", "None"):
            continue
        want = fixed_ip(r)
        if isinstance(want, str):
            out.problems[r.key] = want
            continue
        assert want is not None
        if want in used:
            other = used[want]
            out.problems[r.key] = f"spec.clusterIP {want} is already the address of Service {other[0]}/{other[1]}"
            continue
        used[want] = r.key
        out.addresses[r.key] = str(want)
    # 3. new Services: an address from a hash of the name, probing upward for a free one
    size = net.num_addresses
    for r in reqs:
        if r.key in out.addresses or r.key in out.problems or r.fixed not in (None, ""):
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

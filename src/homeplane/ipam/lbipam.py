"""LoadBalancer IP address management with Cilium LB IPAM's semantics (pure).

Pools (``CiliumLoadBalancerIPPool``): ``blocks`` of a CIDR or a start/stop range,
IPv4 and IPv6; ``allowFirstLastIPs: "No"`` reserves the first and last address
of a CIDR (not for /31, /32, /127, /128); ``serviceSelector`` matches the
Service's labels plus the pseudo-labels ``io.kubernetes.service.namespace`` and
``io.kubernetes.service.name``; ``disabled`` pools give no new addresses but
keep the ones they gave. A pool overlapping an older one (creation time, then
name) is in conflict (``cilium.io/PoolConflict``) and not used.

Services: type LoadBalancer with no ``loadBalancerClass`` or one of Cilium's.
``lbipam.cilium.io/ips`` (or ``spec.loadBalancerIP``) asks for specific
addresses; ``lbipam.cilium.io/sharing-key`` lets Services share one address
when their ports do not clash (``sharing-cross-namespace`` lists the other
namespaces allowed, ``*`` for all). Each Service gets the condition
``cilium.io/IPAMRequestSatisfied``, and the same under its older name
``io.cilium/lb-ipam-request-satisfied`` for tools that look for that (reasons ``satisfied``, ``no_pool``,
``out_of_ips``, ``already_allocated``). Previous allocations (from the state
store) are kept first, so addresses never move on a restart or a reorder.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from homeplane.api.models.base import LabelSelector
from homeplane.api.models.cilium import LBIPAM_IPS, LBIPAM_SHARING_CROSS_NS, LBIPAM_SHARING_KEY

SERVED_CLASSES = ("io.cilium/bgp-control-plane", "io.cilium/l2-announcer")
IPS_ANNOTATION = LBIPAM_IPS
SHARING_KEY = LBIPAM_SHARING_KEY
SHARING_CROSS_NS = LBIPAM_SHARING_CROSS_NS

ServiceKey = tuple[str, str]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class PoolInput:
    name: str
    blocks: list[dict[str, str | None]]  # {"cidr"} or {"start", "stop"}
    allow_first_last: bool = True
    selector: LabelSelector | None = None
    disabled: bool = False
    age: tuple = ()


@dataclass
class ServiceInput:
    key: ServiceKey
    labels: dict[str, str]
    annotations: dict[str, str]
    ports: list[tuple[int, str]]  # (port, protocol)
    lb_ip: str | None = None  # spec.loadBalancerIP (deprecated spelling of a request)
    lb_class: str | None = None
    ip_families: list[str] = field(default_factory=list)
    ip_family_policy: str | None = None
    external_traffic_policy: str = "Cluster"
    selector: dict[str, str] | None = None


@dataclass
class ServiceResult:
    addresses: list[str]
    satisfied: bool
    reason: str
    message: str


@dataclass
class PoolResult:
    conflict: str = ""  # which pool it overlaps, when in conflict
    total: int = 0
    used: int = 0

    @property
    def available(self) -> int:
        return max(0, self.total - self.used)


@dataclass
class LBResult:
    services: dict[ServiceKey, ServiceResult] = field(default_factory=dict)
    pools: dict[str, PoolResult] = field(default_factory=dict)

    @property
    def addresses(self) -> dict[ServiceKey, list[str]]:
        return {k: r.addresses for k, r in self.services.items() if r.addresses}


@dataclass
class _Range:
    pool: PoolInput
    first: IP
    last: IP
    reserved: set[IP]

    def __contains__(self, ip: IP) -> bool:
        return ip.version == self.first.version and self.first <= ip <= self.last

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1 - len(self.reserved)


def _ranges(pool: PoolInput) -> list[_Range]:
    out = []
    for b in pool.blocks:
        if b.get("cidr"):
            net = ipaddress.ip_network(str(b["cidr"]), strict=False)
            first, last = net.network_address, net.broadcast_address
            reserved: set[IP] = set()
            if not pool.allow_first_last and net.num_addresses > 2:
                reserved = {first, last}
            out.append(_Range(pool, first, last, reserved))
        elif b.get("start"):
            first = ipaddress.ip_address(str(b["start"]))
            last = ipaddress.ip_address(str(b["stop"])) if b.get("stop") else first
            out.append(_Range(pool, first, last, set()))
    return out


def responsible(svc: ServiceInput) -> bool:
    return svc.lb_class is None or svc.lb_class in SERVED_CLASSES


def _families(svc: ServiceInput) -> tuple[bool, bool]:
    fams = svc.ip_families
    pol = svc.ip_family_policy
    if pol in ("PreferDualStack", "RequireDualStack"):
        if fams and pol == "PreferDualStack":
            return "IPv4" in fams, "IPv6" in fams
        return True, True
    if fams:
        return fams[0] == "IPv4", fams[0] == "IPv6"
    return True, False


def _sharing_ok(a: ServiceInput, b: ServiceInput) -> bool:
    key = a.annotations.get(SHARING_KEY)
    if not key or key != b.annotations.get(SHARING_KEY):
        return False
    if a.key[0] != b.key[0]:
        for x, y in ((a, b), (b, a)):
            allowed = {n.strip() for n in x.annotations.get(SHARING_CROSS_NS, "").split(",") if n.strip()}
            if "*" not in allowed and y.key[0] not in allowed:
                return False
    if set(a.ports) & set(b.ports):
        return False
    if "Local" in (a.external_traffic_policy, b.external_traffic_policy) and a.selector != b.selector:
        return False  # Local traffic must reach the same pods
    return True


def allocate(
    pools: list[PoolInput], services: list[ServiceInput], previous: Mapping[ServiceKey, list[str]] | None = None
) -> LBResult:
    previous = previous or {}
    res = LBResult()
    usable: list[_Range] = []
    for pool in sorted(pools, key=lambda p: (p.age, p.name)):
        pr = PoolResult()
        res.pools[pool.name] = pr
        try:
            ranges = _ranges(pool)
        except ValueError as e:
            pr.conflict = f"invalid block: {e}"
            continue
        for r in ranges:
            for u in usable:
                if u.pool is not pool and r.first.version == u.first.version and r.first <= u.last and u.first <= r.last:
                    pr.conflict = u.pool.name
        pr.total = sum(r.size for r in ranges)
        if not pr.conflict:
            usable += ranges
    owners: dict[IP, list[ServiceInput]] = {}

    def pool_for(ip: IP, svc: ServiceInput) -> _Range | None:
        for r in usable:
            if ip in r and ip not in r.reserved and _selects(r.pool, svc):
                return r
        return None

    def take(ip: IP, svc: ServiceInput) -> bool:
        holders = owners.get(ip)
        if holders and not all(_sharing_ok(svc, h) for h in holders):
            return False
        owners.setdefault(ip, []).append(svc)
        return True

    eligible = sorted((s for s in services if responsible(s)), key=lambda s: s.key)
    got: dict[ServiceKey, list[str]] = {s.key: [] for s in eligible}
    failed: dict[ServiceKey, tuple[str, str]] = {}
    # 1. what each Service had before, if still valid
    for s in eligible:
        for text in previous.get(s.key, []):
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            requested = _requested(s)
            if requested and ip not in requested:
                continue
            if pool_for(ip, s) is not None and take(ip, s):
                got[s.key].append(str(ip))
    # 2. specific requests
    for s in eligible:
        requested = _requested(s)
        for ip in requested:
            if str(ip) in got[s.key]:
                continue
            r = pool_for(ip, s)
            if r is None:
                failed[s.key] = ("no_pool", f"No enabled pool that matches this service holds the requested address {ip}")
            elif r.pool.disabled:
                failed[s.key] = ("no_pool", f"The pool {r.pool.name} holding {ip} is disabled")
            elif not take(ip, s):
                other = owners[ip][0].key
                failed[s.key] = ("already_allocated", f"The requested address {ip} is already allocated to {other[0]}/{other[1]}")
            else:
                got[s.key].append(str(ip))
    # 3. any address, per requested family
    for s in eligible:
        if _requested(s):
            continue
        want4, want6 = _families(s)
        for version, wanted in ((4, want4), (6, want6)):
            if not wanted or any(ipaddress.ip_address(a).version == version for a in got[s.key]):
                continue
            shared = next(
                (ip for ip, hs in owners.items() if ip.version == version and hs and all(_sharing_ok(s, h) for h in hs)),
                None,
            )
            if shared is not None:
                owners[shared].append(s)
                got[s.key].append(str(shared))
                continue
            matching = [r for r in usable if r.first.version == version and _selects(r.pool, s) and not r.pool.disabled]
            ip = _first_free(matching, owners)
            if ip is None:
                failed[s.key] = ("out_of_ips", "All enabled CiliumLoadBalancerIPPools that match this service ran out of allocatable IPs") if matching else (
                    "no_pool",
                    "There are no enabled CiliumLoadBalancerIPPools that match this service",
                )
                continue
            owners[ip] = [s]
            got[s.key].append(str(ip))
    for s in eligible:
        if s.key in failed and not got[s.key]:
            reason, msg = failed[s.key]
            res.services[s.key] = ServiceResult([], False, reason, msg)
        elif s.key in failed:
            reason, msg = failed[s.key]
            res.services[s.key] = ServiceResult(got[s.key], False, reason, msg)
        else:
            res.services[s.key] = ServiceResult(got[s.key], True, "satisfied", "")
    for ip in owners:
        for r in usable:
            if ip in r:
                res.pools[r.pool.name].used += 1
                break
    return res


def _requested(s: ServiceInput) -> list[IP]:
    text = s.annotations.get(IPS_ANNOTATION) or s.lb_ip or ""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part:
            try:
                out.append(ipaddress.ip_address(part))
            except ValueError:
                pass
    return out


def _selects(pool: PoolInput, s: ServiceInput) -> bool:
    if pool.selector is None:
        return True
    labels = dict(s.labels)
    labels["io.kubernetes.service.namespace"] = s.key[0]
    labels["io.kubernetes.service.name"] = s.key[1]
    return pool.selector.matches(labels)


def _first_free(ranges: list[_Range], owners: Mapping[IP, Any]) -> IP | None:
    for r in ranges:
        ip = r.first
        while ip <= r.last:
            if ip not in owners and ip not in r.reserved:
                return ip
            ip += 1
    return None

"""DNS data compiled from the Snapshot: precomputed answers, keyed by (name, type).

Compiled once per Snapshot; the responder only looks things up. Owner names of
answer records are written as a pointer to the question (see :mod:`wire`), so an
entry can answer any letter case of its name.

* Cluster zone (the Kubernetes DNS specification, as CoreDNS's ``kubernetes`` plugin):
  ``svc.ns.svc.zone`` A/AAAA (ClusterIP, or the ready endpoints of a headless
  Service), per-endpoint names of headless Services (hostname, else the dashed
  address), ExternalName as CNAME, SRV ``_port._proto.svc.ns.svc.zone`` for named
  ports (and SRV on the service name itself), PTR for service and endpoint
  addresses, ``dns-version`` TXT, SOA and NS at the apex.
* Gateway zones (k8s_gateway): hostnames of HTTPRoutes on the selected Gateways
  answer with the Gateway's addresses; LoadBalancer Services answer for the
  names in their ``external-dns.alpha.kubernetes.io/hostname`` or
  ``coredns.io/hostname`` annotation; routes win over Services for one name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from homeplane.dns import wire
from homeplane.dns.config import DNSConfig, TemplateRule
from homeplane.translate import snapshot as ir

HOSTNAME_ANNOTATIONS = ("external-dns.alpha.kubernetes.io/hostname", "coredns.io/hostname")


@dataclass(slots=True)
class Answer:
    rcode: int
    aa: bool
    answer: bytes = b""
    an: int = 0
    authority: bytes = b""
    ns: int = 0
    additional: bytes = b""
    ar: int = 0


@dataclass(slots=True)
class Zone:
    apex: bytes  # lower-case presentation, b"cluster.local"; b"" is the root
    soa: bytes  # the SOA record with its full owner name
    ttl: int
    fallthrough: bool = False  # names we do not know are forwarded instead of NXDOMAIN
    kind: str = "cluster"

    def contains(self, key: bytes) -> bool:
        return not self.apex or key == self.apex or key.endswith(b"." + self.apex)


@dataclass
class ZoneData:
    zones: list[Zone] = field(default_factory=list)  # most specific first
    answers: dict[tuple[bytes, int], Answer] = field(default_factory=dict)
    names: set[bytes] = field(default_factory=set)  # every name that exists (empty non-terminals too)
    templates: list[tuple[TemplateRule, Answer]] = field(default_factory=list)
    wildcards: dict[bytes, dict[int, Answer]] = field(default_factory=dict)  # ".suffix" -> type -> answer
    pods: dict[str, set[str]] = field(default_factory=dict)  # namespace -> endpoint addresses (pods verified)
    config: DNSConfig = field(default_factory=DNSConfig)

    def zone_for(self, key: bytes) -> Zone | None:
        for z in self.zones:
            if z.contains(key):
                return z
        return None


class _Builder:
    def __init__(self, data: ZoneData):
        self.data = data
        self.rrs: dict[tuple[bytes, int], list[bytes]] = {}
        self.extra: dict[tuple[bytes, int], list[bytes]] = {}

    def add(self, name: str, rtype: int, ttl: int, rdata: bytes, zone: Zone, extra: Iterable[bytes] = ()) -> None:
        key = name.lower().rstrip(".").encode()
        bucket = self.rrs.setdefault((key, rtype), [])
        rec = wire.rr(wire.POINTER_TO_QNAME, rtype, ttl, rdata)
        if rec not in bucket:
            bucket.append(rec)
        for e in extra:
            ex = self.extra.setdefault((key, rtype), [])
            if e not in ex:
                ex.append(e)
        self.exists(key, zone)

    def exists(self, key: bytes, zone: Zone) -> None:
        n = key
        while True:
            self.data.names.add(n)
            if n == zone.apex or b"." not in n:
                break
            n = n.split(b".", 1)[1]

    def finish(self) -> None:
        for (key, rtype), recs in self.rrs.items():
            extra = self.extra.get((key, rtype), [])
            self.data.answers[(key, rtype)] = Answer(wire.NOERROR, True, b"".join(recs), len(recs), b"", 0, b"".join(extra), len(extra))


def _soa(apex: str, ttl: int, mname: str, rname: str) -> bytes:
    return wire.rr(wire.encode_name(apex), 6, ttl, wire.soa_rdata(mname, rname, 1, 7200, 1800, 86400, ttl))


def compile_zones(
    snap: ir.Snapshot,
    cfg: DNSConfig,
) -> ZoneData:
    """Everything the responder answers for this Snapshot."""
    data = ZoneData(config=cfg)
    b = _Builder(data)
    ttl = cfg.ttl
    czone = cfg.cluster_domain.rstrip(".").lower()
    cluster = Zone(czone.encode(), _soa(czone, ttl, f"ns.dns.{czone}", f"hostmaster.{czone}"), ttl)
    data.zones.append(cluster)
    b.add(czone, 2, ttl, wire.encode_name(f"ns.dns.{czone}"), cluster)
    b.add(czone, 6, ttl, wire.soa_rdata(f"ns.dns.{czone}", f"hostmaster.{czone}", 1, 7200, 1800, 86400, ttl), cluster)
    b.add(f"dns-version.{czone}", 16, ttl, wire.txt_rdata("1.1.0"), cluster)
    reverse: list[Zone] = []
    if cfg.reverse_zones:
        for rz in cfg.reverse_zones:
            z = Zone(rz.encode(), _soa(rz, ttl, f"ns.dns.{czone}", f"hostmaster.{czone}"), ttl, fallthrough=cfg.reverse_fallthrough, kind="reverse")
            reverse.append(z)
    _cluster_records(snap, cfg, b, cluster, reverse, data)
    for dom in cfg.gateway_domains:
        d = dom.rstrip(".").lower()
        gz = Zone(d.encode(), _soa(d, cfg.gateway_ttl, f"ns1.{d}", f"hostmaster.{d}"), cfg.gateway_ttl, kind="gateway")
        data.zones.append(gz)
        b.add(d, 6, cfg.gateway_ttl, wire.soa_rdata(f"ns1.{d}", f"hostmaster.{d}", 1, 7200, 1800, 86400, cfg.gateway_ttl), gz)
        b.add(d, 2, cfg.gateway_ttl, wire.encode_name(f"ns1.{d}"), gz)
        _gateway_records(snap, cfg, b, gz, data)
    data.zones.extend(reverse)
    data.zones.sort(key=lambda z: -len(z.apex))
    b.finish()
    for rule in cfg.templates:
        zone_name = rule.zone.rstrip(".")
        soa = b""
        if rule.authority:
            soa = rule.authority_rr(zone_name or ".")
        data.templates.append((rule, Answer(rule.rcode, True, b"", 0, soa, 1 if soa else 0)))
    return data


def _cluster_records(snap: ir.Snapshot, cfg: DNSConfig, b: _Builder, zone: Zone, reverse: list[Zone], data: ZoneData) -> None:
    ttl = cfg.ttl
    z = zone.apex.decode()

    def rev_zone(ip: str) -> Zone | None:
        name = wire.reverse_name(ip)
        for r in reverse:
            if name.endswith(r.apex.decode()):
                return r
        return None

    for svc in snap.services:
        ns, name = svc.ref.namespace or "default", svc.ref.name
        base = f"{name}.{ns}.svc.{z}"
        b.exists(f"{ns}.svc.{z}".encode(), zone)
        if svc.type == "ExternalName" and svc.external_name:
            b.add(base, 5, ttl, wire.encode_name(svc.external_name), zone)
            continue
        endpoints: dict[str, ir.Endpoint] = {}
        for p in svc.ports:
            pool = snap.pools.get(p.pool)
            for e in pool.endpoints if pool else ():
                if e.fqdn:
                    continue
                data.pods.setdefault(ns, set()).add(e.address)
                if e.ready and e.address not in endpoints:
                    endpoints[e.address] = e
        if svc.headless:
            targets: list[tuple[str, str]] = []
            for addr, e in endpoints.items():
                host = e.hostname or addr.replace(".", "-").replace(":", "-")
                fq = f"{host}.{base}"
                rtype, rd = wire.a_rdata(addr)
                b.add(base, rtype, ttl, rd, zone)
                b.add(fq, rtype, ttl, rd, zone)
                targets.append((fq, addr))
                rz = rev_zone(addr)
                if rz is not None:
                    b.add(wire.reverse_name(addr), 12, ttl, wire.encode_name(fq), rz)
            if not endpoints:
                b.exists(base.encode(), zone)
            for p in svc.ports:
                if not p.name:
                    continue
                srv = f"_{p.name}._{p.protocol.lower()}.{base}"
                for fq, addr in targets:
                    port = p.port
                    rtype, rd = wire.a_rdata(addr)
                    glue = wire.rr(wire.encode_name(fq), rtype, ttl, rd)
                    b.add(srv, 33, ttl, wire.srv_rdata(0, 100, port, fq), zone, [glue])
                    b.add(base, 33, ttl, wire.srv_rdata(0, 100, port, fq), zone, [glue])
            continue
        if not svc.cluster_ip:
            b.exists(base.encode(), zone)
            continue
        rtype, rd = wire.a_rdata(svc.cluster_ip)
        b.add(base, rtype, ttl, rd, zone)
        rz = rev_zone(svc.cluster_ip)
        if rz is not None:
            b.add(wire.reverse_name(svc.cluster_ip), 12, ttl, wire.encode_name(base), rz)
        glue = wire.rr(wire.encode_name(base), rtype, ttl, rd)
        for p in svc.ports:
            if not p.name:
                continue
            srv = f"_{p.name}._{p.protocol.lower()}.{base}"
            b.add(srv, 33, ttl, wire.srv_rdata(0, 100, p.port, base), zone, [glue])
            b.add(base, 33, ttl, wire.srv_rdata(0, 100, p.port, base), zone, [glue])


def _listening_addresses(gw: ir.Gateway) -> list[str]:
    """What a client of this server should use: where the Gateway listens on this machine when
    that is not one of its own addresses (they are not here: it was given a loopback address
    of its own), else its addresses; a Snapshot made without a machine (check, dig -f) has no
    bind address and answers the Gateway's addresses."""
    import ipaddress

    def ip(a: str) -> bool:
        try:
            ipaddress.ip_address(a)
            return True
        except ValueError:
            return False
    bound = gw.bind_address
    if bound and ip(bound) and bound not in gw.addresses and bound not in ("0.0.0.0", "::"):
        return [bound]
    return [a for a in gw.reachable_addresses if ip(a)]  # a hostname is no A record


def _gateway_records(snap: ir.Snapshot, cfg: DNSConfig, b: _Builder, zone: Zone, data: ZoneData) -> None:
    ttl = cfg.gateway_ttl
    dom = zone.apex.decode()
    claimed: set[str] = set()
    for gw in snap.gateways:
        key = f"{gw.ref.namespace}/{gw.ref.name}"
        if cfg.gateways and key not in cfg.gateways and gw.ref.name not in cfg.gateways:
            continue
        addrs = _listening_addresses(gw)
        if not addrs:
            continue
        for ls in gw.listeners:
            if not ls.ready:
                continue
            # HTTPRoute hostnames, then TLSRoute ones (k8s_gateway's resource order)
            for h in [vh.hostname for vh in ls.vhosts] + [h for r in ls.l4_routes for h in r.hostnames]:
                if h == "*" or not (h == dom or h.endswith("." + dom)):
                    continue
                for a in addrs:
                    rtype, rd = wire.a_rdata(a)
                    if h.startswith("*."):
                        data.wildcards.setdefault(h[1:].encode(), {}).setdefault(rtype, Answer(wire.NOERROR, True))
                        ans = data.wildcards[h[1:].encode()][rtype]
                        rec = wire.rr(wire.POINTER_TO_QNAME, rtype, ttl, rd)
                        if rec not in ans.answer:
                            ans.answer += rec
                            ans.an += 1
                    else:
                        b.add(h, rtype, ttl, rd, zone)
                        claimed.add(h)
    for svc in snap.services:
        if svc.type != "LoadBalancer":
            continue
        names: list[str] = []
        for a in HOSTNAME_ANNOTATIONS:
            names += [n.strip().lower().rstrip(".") for n in svc.annotations.get(a, "").split(",") if n.strip()]
        ips = list(svc.requested_lb_ips) or list(svc.lb_ips)
        for n in names:
            if n in claimed or not (n == dom or n.endswith("." + dom)):
                continue  # an HTTPRoute already answers for it (routes come first)
            for ip in ips:
                try:
                    rtype, rd = wire.a_rdata(ip)
                except ValueError:
                    continue
                b.add(n, rtype, ttl, rd, zone)


def is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False

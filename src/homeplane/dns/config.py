"""DNS configuration in homeplane's own terms, and the reader for a CoreDNS HelmRelease's values.

Real repos carry CoreDNS's configuration as chart values (``servers[].zones``,
``servers[].plugins`` with ``name``/``parameters``/``configBlock``); when
such a HelmRelease is in the manifests its ``kubernetes``, ``forward``,
``cache``, ``template`` and ``k8s_gateway`` plugins are read from it. Plugins
homeplane does not implement are listed, not silently dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homeplane.api.units import parse_duration
from homeplane.dns import wire
from homeplane.dns.acl import PRIVATE_NETS, AclError, Network, Rule, parse_rule
from homeplane.dns.rrl import RRLConfig


@dataclass
class TemplateRule:
    """CoreDNS ``template CLASS TYPE [ZONE]`` with a fixed rcode and optional authority record."""

    qclass: str = "IN"  # IN or ANY
    qtype: str = "AAAA"
    zone: str = "."
    rcode: int = wire.NOERROR
    authority: str | None = None  # zone-file text, "{{ .Zone }}" is the matched zone

    def matches(self, qclass: int, qtype: int, key: bytes) -> bool:
        if self.qclass == "IN" and qclass != wire.CLASS_IN:
            return False
        if self.qtype != "ANY" and wire.QTYPE.get(self.qtype) != qtype:
            return False
        z = self.zone.rstrip(".").lower().encode()
        return not z or key == z or key.endswith(b"." + z)

    def authority_rr(self, zone: str) -> bytes:
        import dns.rrset

        text = (self.authority or "").replace("{{ .Zone }}", zone if zone.endswith(".") else zone + ".")
        import io

        rrset = dns.rrset.from_text_list(*_split_rr(text))
        buf = io.BytesIO()
        rrset.to_wire(buf)
        return buf.getvalue()


def _split_rr(text: str) -> tuple[str, int, str, str, list[str]]:
    text = text.replace("(", " ").replace(")", " ")
    parts = text.split()
    name, ttl, cls, rtype = parts[0], int(parts[1]), parts[2], parts[3]
    return name, ttl, cls, rtype, [" ".join(parts[4:])]


@dataclass
class CacheConfig:
    enabled: bool = True
    success_cap: int = 9984
    denial_cap: int = 9984
    max_ttl: int = 3600
    min_ttl: int = 5
    denial_max_ttl: int = 1800
    denial_min_ttl: int = 5
    prefetch_amount: int = 0  # 0: off
    prefetch_duration: float = 60.0
    prefetch_percentage: int = 10
    serve_stale: float = 0.0  # seconds; 0: off
    serve_stale_verify: bool = False
    servfail_ttl: float = 5.0


@dataclass
class ForwardConfig:
    upstreams: list[str] = field(default_factory=list)  # host:port (port 53 if omitted)
    policy: str = "random"  # random | round_robin | sequential
    max_concurrent: int = 0
    timeout: float = 2.0
    health_check: float = 0.5
    force_tcp: bool = False


@dataclass
class DNSConfig:
    cluster_domain: str = "cluster.local"
    ttl: int = 5
    pods: str = "disabled"  # disabled | insecure | verified
    # CoreDNS's default Corefile: `kubernetes cluster.local in-addr.arpa ip6.arpa` with
    # `fallthrough in-addr.arpa ip6.arpa`: PTR for ClusterIPs, everything else forwarded
    reverse_zones: list[str] = field(default_factory=lambda: ["in-addr.arpa", "ip6.arpa"])
    reverse_fallthrough: bool = True
    gateway_domains: list[str] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)  # ns/name or name; empty: all
    gateway_ttl: int = 60
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    templates: list[TemplateRule] = field(default_factory=list)
    ignored_plugins: list[str] = field(default_factory=list)
    acl: list[Rule] = field(default_factory=list)  # CoreDNS acl plugin blocks, in order
    recursion: tuple[Network, ...] = PRIVATE_NETS  # who may have names forwarded
    # response rate limiting: by default only for clients outside loopback and private ranges
    rrl: RRLConfig = field(default_factory=lambda: RRLConfig(responses_per_second=10.0))
    rrl_exempt_private: bool = True
    problems: list[str] = field(default_factory=list)  # plugin settings that could not be read


def resolv_conf_upstreams(path: str = "/etc/resolv.conf") -> list[str]:
    out = []
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append(f"{parts[1]}:53" if ":" not in parts[1] else f"[{parts[1]}]:53")
    except OSError:
        pass
    return out


def _block_lines(block: str | None) -> list[list[str]]:
    return [shlex.split(line) for line in (block or "").splitlines() if line.strip() and not line.strip().startswith("#")]


_UNSUPPORTED_OK = {"errors", "health", "ready", "log", "loop", "reload", "loadbalance", "prometheus", "autopath", "bind"}


def from_coredns_values(values: dict[str, Any], base: DNSConfig | None = None) -> DNSConfig:
    """A DNSConfig from CoreDNS chart values (the first server block)."""
    cfg = base or DNSConfig()
    servers = values.get("servers") or []
    if not servers:
        return cfg
    server = servers[0]
    for plugin in server.get("plugins") or []:
        name = plugin.get("name")
        params = shlex.split(str(plugin.get("parameters") or ""))
        block = _block_lines(plugin.get("configBlock"))
        if name == "kubernetes":
            zones = params or ["cluster.local"]
            cfg.cluster_domain = next((z for z in zones if not z.endswith("arpa")), "cluster.local").rstrip(".")
            cfg.reverse_zones = [z.rstrip(".") for z in zones if z.endswith("arpa")]
            for line in block:
                if line[0] == "pods" and len(line) > 1:
                    cfg.pods = line[1]
                elif line[0] == "ttl" and len(line) > 1:
                    cfg.ttl = int(line[1])
                elif line[0] == "fallthrough":
                    cfg.reverse_fallthrough = True
        elif name == "forward":
            ups = params[1:]
            resolved: list[str] = []
            for u in ups:
                if u.startswith("/"):
                    resolved += resolv_conf_upstreams(u)
                else:
                    u = u.split("://", 1)[-1]
                    resolved.append(u if re.search(r":\d+$", u) and not u.count(":") > 1 else f"{u}:53")
            cfg.forward.upstreams = resolved
            for line in block:
                if line[0] == "policy" and len(line) > 1:
                    cfg.forward.policy = line[1]
                elif line[0] == "max_concurrent" and len(line) > 1:
                    cfg.forward.max_concurrent = int(line[1])
                elif line[0] == "health_check" and len(line) > 1:
                    cfg.forward.health_check = parse_duration(line[1])
                elif line[0] == "force_tcp":
                    cfg.forward.force_tcp = True
        elif name == "cache":
            c = cfg.cache
            if params and params[0].isdigit():
                c.max_ttl = int(params[0])
            for line in block:
                if line[0] in ("success", "denial") and len(line) > 1:
                    cap = int(line[1])
                    ttl = int(line[2]) if len(line) > 2 else None
                    minttl = int(line[3]) if len(line) > 3 else None
                    if line[0] == "success":
                        c.success_cap = cap
                        c.max_ttl = ttl or c.max_ttl
                        c.min_ttl = minttl if minttl is not None else c.min_ttl
                    else:
                        c.denial_cap = cap
                        c.denial_max_ttl = ttl or c.denial_max_ttl
                        c.denial_min_ttl = minttl if minttl is not None else c.denial_min_ttl
                elif line[0] == "prefetch":
                    c.prefetch_amount = int(line[1]) if len(line) > 1 else 1
                    if len(line) > 2:
                        c.prefetch_duration = parse_duration(line[2])
                    if len(line) > 3:
                        c.prefetch_percentage = int(line[3].rstrip("%"))
                elif line[0] == "serve_stale":
                    c.serve_stale = parse_duration(line[1]) if len(line) > 1 else 3600.0
                    c.serve_stale_verify = len(line) > 2 and line[2] == "verify"
                elif line[0] == "servfail" and len(line) > 1:
                    c.servfail_ttl = parse_duration(line[1])
        elif name == "template":
            rule = TemplateRule(qclass=params[0] if params else "IN", qtype=params[1] if len(params) > 1 else "ANY", zone=params[2] if len(params) > 2 else ".")
            for line in block:
                if line[0] == "rcode" and len(line) > 1:
                    rule.rcode = {v: k for k, v in wire.RCODE_NAME.items()}.get(line[1], wire.NOERROR)
                elif line[0] == "authority" and len(line) > 1:
                    rule.authority = line[1]
            cfg.templates.append(rule)
        elif name == "acl":
            try:
                cfg.acl.append(parse_rule(params, block))
            except AclError as e:
                # fail closed: an acl that cannot be read blocks its zones rather than opening them
                cfg.problems.append(f"{e}; every query in its zones is blocked")
                cfg.acl.append(parse_rule(params, [["block"]]))
        elif name == "rrl":
            try:
                cfg.rrl = _rrl(block)
                cfg.rrl_exempt_private = False
            except ValueError as e:
                cfg.problems.append(f"rrl: {e}")
        elif name in ("k8s_gateway", "k8s-gateway"):
            cfg.gateway_domains = [p.rstrip(".") for p in params]
            for line in block:
                if line[0] == "ttl" and len(line) > 1:
                    cfg.gateway_ttl = int(line[1])
        elif name not in _UNSUPPORTED_OK:
            cfg.ignored_plugins.append(str(name))
    return cfg


def _rrl(block: list[list[str]]) -> RRLConfig:
    """CoreDNS's rrl plugin block (the names BIND uses)."""
    c = RRLConfig()
    for line in block:
        if len(line) < 2:
            raise ValueError(f"{line[0]} needs a value")
        k, v = line[0], line[1]
        if k == "responses-per-second":
            c.responses_per_second = float(v)
        elif k == "window":
            c.window = float(v)
        elif k == "slip-ratio":
            c.slip = int(v)
        elif k == "ipv4-prefix-length":
            c.ipv4_prefix = int(v)
        elif k == "ipv6-prefix-length":
            c.ipv6_prefix = int(v)
        elif k == "nxdomains-per-second":
            c.nxdomains_per_second = float(v)
        elif k == "errors-per-second":
            c.errors_per_second = float(v)
        elif k == "max-table-size":
            c.max_table_size = int(v)
        elif k not in ("nodata-per-second", "referrals-per-second", "requests-per-second", "report-only"):
            raise ValueError(f"unknown setting {k!r}")
    if not 0 <= c.ipv4_prefix <= 32 or not 0 <= c.ipv6_prefix <= 128 or c.slip < 0 or c.window <= 0:
        raise ValueError("out-of-range setting")
    return c

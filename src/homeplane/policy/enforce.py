"""Network policy turned into what the data planes apply (pure: translate calls it).

- **Gateways**: each Gateway is a source (its Envoy proxy pods). For every pool a Gateway's routes
  reach, the endpoints its egress and their ingress policies refuse are taken out of that
  Gateway's view of the pool (a pool of its own, ``POOL@NS/GATEWAY``); when Cilium L7 rules apply,
  the pool carries them and the gateway checks each request (403 ``Access denied``, as Cilium's
  proxy answers). A pool left with no endpoint answers 503 and its flows say ``POLICY_DENIED``.
- **The kernel path** gets :func:`kernel_filters`: per Service endpoint that policy closes to
  someone, the IPv4 source ranges that may open connections to it (nftables interval sets).
- **The userspace L4 proxy** asks :meth:`Verdicts.allowed_backends` per new connection: the client
  address decides the source identity (a pod, the host or the world), and only the endpoints the
  policies let it reach are picked; none: the connection is refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from homeplane.policy.identity import Identity, build_identities, world
from homeplane.policy.rules import compile_policies
from homeplane.policy.verdict import Decision, PolicySet, peer_matches
from homeplane.translate import snapshot as ir


def build_policy_set(objects: list[Any], services: Iterable[ir.Service], pools: Mapping[str, ir.BackendPool],
                     gateways: Iterable[ir.Gateway], host_addresses: Iterable[str] = ()) -> PolicySet | None:
    """The policies of the manifests with their identities; None when there are none."""
    compiled = compile_policies(objects)
    if not compiled.subjects and not compiled.errors:
        return None
    ids = build_identities(objects, services, pools, gateways, host_addresses)
    problems = [(str(s.policy), p) for s in compiled.subjects for p in s.problems]
    problems += [(str(ref), f"not enforced: {msg}") for ref, msg in compiled.errors]
    return PolicySet(tuple(compiled.subjects), ids, tuple(problems))


def endpoint_identity(ps: PolicySet, pool: ir.BackendPool, address: str) -> Identity:
    """Who an endpoint of a pool is: the pods of its Service, or whoever holds the address."""
    src = pool.source
    if src.kind == "Service":
        ident = ps.identities.service_pods.get((src.namespace or "default", src.name))
        if ident is not None:
            return replace(ident, address=address, name=f"{ident.name} {address}")
    return ps.identities.of_address(address)


def pool_decisions(ps: PolicySet, src: Identity, pool: ir.BackendPool, proto: str = "TCP") -> list[tuple[ir.Endpoint, Decision]]:
    return [(e, ps.decide(src, endpoint_identity(ps, pool, e.address), e.port, proto)) for e in pool.endpoints]


L7_ELSEWHERE = ("L7 rules apply to this port; homeplane checks HTTP rules only on a Gateway's HTTP routes and DNS "
                "rules only at its DNS server, so here (as Cilium's proxy would drop what it cannot parse) it is refused")


def refusal(d: Decision, http_ok: bool) -> str | None:
    """Why a connection is refused where L7 rules can be checked only for HTTP (``http_ok``: a
    Gateway's HTTP route) or not at all (L4 paths); None: it may go."""
    if not d.allowed:
        return next(s.text for s in d.steps if not s.allowed)
    if d.dns is not None or (d.http is not None and not http_ok):
        return L7_ELSEWHERE
    return None


def _restricted(ps: PolicySet, gw_ident: Identity, pool: ir.BackendPool, proto: str, name: str,
                http_ok: bool) -> ir.BackendPool | None:
    """The gateway's view of a pool, or None when policy changes nothing."""
    kept: list[ir.Endpoint] = []
    denied: list[tuple[str, str]] = []
    http = None
    for e, d in pool_decisions(ps, gw_ident, pool, proto):
        why = refusal(d, http_ok)
        if why is not None:
            denied.append((f"{e.address}:{e.port}", why))
            continue
        kept.append(e)
        if d.http is not None:
            http = d.http  # the pods of one pool share their labels, and so their L7 rules
    if not denied and http is None:
        return None
    return replace(pool, name=name, endpoints=tuple(kept), policy_denied=tuple(denied), policy_http=http)


def restrict_gateways(ps: PolicySet, gateways: list[ir.Gateway], pools: dict[str, ir.BackendPool]
                      ) -> tuple[list[ir.Gateway], dict[str, ir.BackendPool]]:
    pools = dict(pools)
    out: list[ir.Gateway] = []
    for gw in gateways:
        gw_ident = ps.identities.gateways.get(gw.key)
        if gw_ident is None:
            out.append(gw)
            continue
        memo: dict[tuple[str, str], str] = {}  # (pool, HTTP|TCP|UDP) -> the view's name

        def view(pool_name: str | None, proto: str = "HTTP") -> str | None:
            if pool_name is None or pool_name not in pools:
                return pool_name
            key = (pool_name, proto)
            if key not in memo:
                # a TCP/UDP route's or the auth service's view is a pool of its own: L7 rules are
                # checked only on the requests of HTTP routes
                name = f"{pool_name}@{gw.key}" if proto == "HTTP" else f"{pool_name}@{gw.key}/{proto.lower()}"
                restricted = _restricted(ps, gw_ident, pools[pool_name], "UDP" if proto == "UDP" else "TCP", name,
                                         proto == "HTTP")
                if restricted is not None:
                    pools[name] = restricted
                memo[key] = name if restricted is not None else pool_name
            return memo[key]

        def backends(bs: tuple[ir.WeightedBackend, ...], proto: str = "HTTP") -> tuple[ir.WeightedBackend, ...]:
            return tuple(b if view(b.pool, proto) == b.pool else replace(b, pool=view(b.pool, proto)) for b in bs)

        listeners = []
        for ls in gw.listeners:
            vhosts = []
            for vh in ls.vhosts:
                rules = []
                for r in vh.rules:
                    mirrors = tuple(m if view(m.pool) == m.pool else replace(m, pool=view(m.pool)) for m in r.filters.mirrors)
                    nr = replace(r, backends=backends(r.backends))
                    if mirrors != r.filters.mirrors:
                        nr = replace(nr, filters=replace(r.filters, mirrors=mirrors))
                    ext = r.security.settings.ext_auth if r.security is not None else None
                    if ext is not None and r.security is not None:
                        # the gateway asks the forward-auth service too (L7 rules on it: refused)
                        auth_pool = view(ext.pool, "AUTH")
                        if auth_pool != ext.pool:
                            settings = replace(r.security.settings, ext_auth=replace(ext, pool=auth_pool))
                            nr = replace(nr, security=replace(r.security, settings=settings))
                    rules.append(nr)
                vhosts.append(replace(vh, rules=tuple(rules)))
            l4 = tuple(replace(a, backends=backends(a.backends, "UDP" if a.route.kind == "UDPRoute" else "TCP"))
                       for a in ls.l4_routes)
            listeners.append(replace(ls, vhosts=tuple(vhosts), l4_routes=l4))
        out.append(replace(gw, listeners=tuple(listeners)))
    return out, pools


class Verdicts:
    """Per-connection answers for the userspace L4 proxy, remembered per (client, table)."""

    LIMIT = 8192

    def __init__(self, ps: PolicySet, snapshot: ir.Snapshot):
        self.ps = ps
        self.pools = snapshot.pools
        self.services = {(s.ref.namespace or "default", s.ref.name): s for s in snapshot.services}
        self._memo: dict[tuple[str, Any], tuple[frozenset[str], str | None]] = {}

    def allowed_backends(self, client_ip: str, table: Any) -> tuple[frozenset[str], str | None]:
        """(names of the backends this client may reach, why the first refused one was refused)."""
        key = (client_ip, id(table))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        src = self.ps.identities.of_address(client_ip)
        svc = self.services.get((table.service.namespace or "default", table.service.name))
        pool = None
        if svc is not None:
            pool = next((self.pools.get(p.pool) for p in svc.ports if p.port == table.port and p.protocol == table.protocol), None)
        allowed: set[str] = set()
        why: str | None = None
        for b in table.backends:
            dst = endpoint_identity(self.ps, pool, b.address) if pool is not None else self.ps.identities.of_address(b.address)
            refused = refusal(self.ps.decide(src, dst, b.port, table.protocol), http_ok=False)
            if refused is None:
                allowed.add(b.name)
            elif why is None:
                why = refused
        out = (frozenset(allowed), why)
        if len(self._memo) >= self.LIMIT:
            self._memo.clear()
        self._memo[key] = out
        return out


# --- the kernel path (nftables) ----------------------------------------------------------------

_ALL4 = ((0, 2**32 - 1),)
_WORLD4 = world("0.0.0.0")
Ranges = tuple[tuple[int, int], ...]


def _merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def _subtract(ranges: Iterable[tuple[int, int]], cut: Iterable[tuple[int, int]]) -> Ranges:
    """``ranges`` minus ``cut``, in one sweep over both (sorted and merged first)."""
    ranges, cut = _merge(ranges), _merge(cut)
    out: list[tuple[int, int]] = []
    j = 0
    for lo, hi in ranges:
        while j < len(cut) and cut[j][1] < lo:
            j += 1
        cur, k = lo, j
        while k < len(cut) and cut[k][0] <= hi and cur <= hi:
            clo, chi = cut[k]
            if clo > cur:
                out.append((cur, clo - 1))
            cur = max(cur, chi + 1)
            k += 1
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


def _net4(net: Any) -> tuple[int, int] | None:
    return (int(net.network_address), int(net.broadcast_address)) if net.version == 4 else None


def _peer_world4(e: Any) -> Ranges:
    """The IPv4 world addresses one rule's peers cover."""
    if e.requires:
        return ()  # fromRequires asks for labels the world does not have
    if e.any_peer:
        return _ALL4
    out: list[tuple[int, int]] = []
    for p in e.peers:
        if p.kind == "entities" and p.entities & {"all", "world", "world-ipv4"}:
            return _ALL4
        if p.kind == "endpoints" and peer_matches(p, _WORLD4, None):  # a selector on reserved:world
            return _ALL4
        if p.kind == "cidr":
            for net, exc in p.cidrs:
                r = _net4(net)
                if r is not None:
                    out += _subtract((r,), _merge(x for x in map(_net4, exc) if x is not None))
    return _merge(out)


def _world_allowed4(ps: PolicySet, dst: Identity, port: int, proto: str) -> Ranges:
    """The IPv4 world sources ``dst``'s ingress policies let in on port/proto (the world has no
    egress policies)."""
    subjects = ps.selecting(dst)
    named = dict(dst.ports)
    entries = [e for s in subjects for e in s.entries if e.direction == "ingress"
               and (not e.ports or any(p.matches(port, proto, named) for p in e.ports))]
    isolated = any(s.deny_ingress for s in subjects)
    # L7 rules cannot be checked in the kernel: a connection only they would allow is refused, and
    # they restrict even a pod policy leaves open (Cilium: enableDefaultDeny does not turn them off)
    plain = _merge(r for e in entries if not e.deny and not e.l7 for r in _peer_world4(e))
    l7_only = _subtract(_merge(r for e in entries if not e.deny and e.l7 for r in _peer_world4(e)), plain)
    allowed = plain if isolated else _subtract(_ALL4, l7_only)
    denied = _merge(r for e in entries if e.deny for r in _peer_world4(e))
    return _subtract(allowed, denied)


@dataclass(frozen=True)
class KernelFilter:
    """New connections to ``address:port/protocol`` pass only from these IPv4 source ranges."""

    address: str
    port: int
    protocol: str
    allowed: Ranges
    comment: str


def kernel_filters(ps: PolicySet | None, snapshot: ir.Snapshot, tables: Iterable[Any]) -> list[KernelFilter]:
    """Per Service endpoint (IPv4) that policy closes to someone: the sources that may open
    connections to it, as address ranges: allowed pods by address, the host (Cilium's
    allow-localhost) and the world's allowed blocks."""
    if ps is None:
        return []
    ids = ps.identities
    # this machine's own addresses are always the host (the gateway and the L4 proxy connect from
    # them); other loopback addresses too, unless an endpoint sits there
    own = _merge((int(ipaddress.ip_address(a)),) * 2 for a in ids.host_addresses if ipaddress.ip_address(a).version == 4)
    pods4 = {a: ident for a, ident in ids.by_address.items()
             if ipaddress.ip_address(a).version == 4 and a not in ids.host_addresses}
    pod_ranges = _merge([(int(ipaddress.ip_address(a)),) * 2 for a in pods4]
                        + [(int(ipaddress.ip_address(a)),) * 2 for a in ids.ambiguous if ipaddress.ip_address(a).version == 4])
    loopback = ((int(ipaddress.ip_address("127.0.0.0")), int(ipaddress.ip_address("127.255.255.255"))),)
    hosts = _merge(loopback + own)
    host_ranges = _merge(_subtract(loopback, pod_ranges) + own)
    services = {(s.ref.namespace or "default", s.ref.name): s for s in snapshot.services}
    out: dict[tuple[str, int, str], KernelFilter] = {}
    memo: dict[Any, Ranges] = {}
    for t in tables:
        svc = services.get((t.service.namespace or "default", t.service.name))
        pool = next((snapshot.pools.get(p.pool) for p in svc.ports if p.port == t.port and p.protocol == t.protocol), None) if svc else None
        for b in t.backends:
            key = (b.address, b.port, t.protocol)
            if key in out or ipaddress.ip_address(b.address).version != 4:
                continue
            dst = endpoint_identity(ps, pool, b.address) if pool is not None else ids.of_address(b.address)
            if dst.kind != "pod":
                continue
            # the endpoints of one Service share their identity: their sources are worked out once
            memo_key = (dst.namespace, frozenset(dst.labels.items()), frozenset(dst.ports.items()), b.port, t.protocol)
            allowed = memo.get(memo_key)
            if allowed is None:
                world = _subtract(_world_allowed4(ps, dst, b.port, t.protocol), _merge(pod_ranges + hosts))
                pods = _merge((int(ipaddress.ip_address(a)),) * 2 for a, who in pods4.items()
                              if refusal(ps.decide(who, dst, b.port, t.protocol), http_ok=False) is None)
                allowed = memo[memo_key] = _merge(world + pods + host_ranges)
            if allowed != _ALL4:
                out[key] = KernelFilter(b.address, b.port, t.protocol, allowed, f"{dst.name}:{b.port}/{t.protocol}")
    return list(out.values())


# --- homeplane's DNS server (kube-dns) ---------------------------------------------------------

DROP = "drop"


class DNSPolicy:
    """What network policy lets one client of homeplane's DNS server do, as Cilium does it for
    kube-dns: a client its policies refuse port 53 gets no answer (the packets are dropped); a
    client whose egress carries DNS rules (``rules.dns``) gets REFUSED for other names, as
    Cilium's DNS proxy answers; anyone else is not restricted (None)."""

    def __init__(self, ps: PolicySet):
        self.ps = ps
        self.target = ps.identities.dns

    def for_client(self, ip: str, proto: str = "UDP") -> Decision | str | None:
        if self.target is None:
            return None
        d = self.ps.decide(self.ps.identities.of_address(ip), self.target, 53, proto)
        if not d.allowed:
            return DROP
        return d if d.dns is not None else None


def dns_policy(ps: PolicySet | None) -> DNSPolicy | None:
    """None when no policy can touch the DNS server's clients (the query path stays as it was)."""
    if ps is None or ps.identities.dns is None:
        return None
    ids = ps.identities
    touches = any(s.selects(ids.dns) for s in ps.subjects) or any(
        e.direction == "egress" for s in ps.subjects for e in s.entries
    ) or any(s.deny_egress for s in ps.subjects)
    return DNSPolicy(ps) if touches else None


# --- L7 HTTP rules in the gateway --------------------------------------------------------------


def head_allowed(groups: tuple[tuple[Any, ...], ...], head: bytes) -> bool:
    """Do Cilium's L7 HTTP rules allow this request as it goes to the backend? ``head`` is the
    HTTP/1.1 request head the gateway sends upstream (after rewrites, header filters and Lua),
    which is what Cilium's proxy in front of the pod would see."""
    from homeplane.observe.accesslog import request_headers

    head = head.split(b"\r\n\r\n", 1)[0]  # a mirror's copy carries its body after the head
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.rpartition(" ")[0]
    headers = request_headers(head)
    host = headers.get("host", "")
    return all(any(r.matches(method, target, host, headers) for r in group) for group in groups)


# --- who may connect to a Gateway --------------------------------------------------------------


def envoy_container_port(port: int) -> int:
    """The port Envoy Gateway's proxy pods listen on for a listener port (privileged ports are
    moved up by 10000: 80 -> 10080, 443 -> 10443): what a policy on those pods names."""
    return port + 10000 if port < 1024 else port


class SourceCheck:
    """The ingress policies of a Gateway's proxy pods, asked per new client connection (client
    CIDRs: "only the LAN may reach envoy-internal"). Merged gateways share a port: a client one
    of them admits is admitted, as the listener is chosen only later."""

    LIMIT = 8192

    def __init__(self, ps: PolicySet, gateways: list[Identity], port: int, proto: str = "TCP"):
        self.ps, self.gateways, self.port, self.proto = ps, gateways, envoy_container_port(port), proto
        self._memo: dict[str, str | None] = {}

    def __call__(self, client_ip: str) -> str | None:
        """None: it may connect; else why not."""
        hit = self._memo.get(client_ip, "?")
        if hit != "?":
            return hit
        src = self.ps.identities.of_address(client_ip)
        why: str | None = "no Gateway"
        for gw in self.gateways:
            d = self.ps.decide(src, gw, self.port, self.proto)
            if d.allowed:
                why = None
                break
            why = next(s.text for s in d.steps if not s.allowed)
        if len(self._memo) >= self.LIMIT:
            self._memo.clear()
        self._memo[client_ip] = why
        return why


def gateway_sources(ps: PolicySet | None, gateway_keys: Iterable[str], port: int, proto: str = "TCP") -> SourceCheck | None:
    """The check for a port of these Gateways; None when no policy limits who may reach them."""
    if ps is None:
        return None
    idents = [ps.identities.gateways[k] for k in gateway_keys if k in ps.identities.gateways]
    if not idents or not any(s.deny_ingress or any(e.direction == "ingress" for e in s.entries)
                             for gw in idents for s in ps.selecting(gw)):
        return None
    return SourceCheck(ps, idents, port, proto)

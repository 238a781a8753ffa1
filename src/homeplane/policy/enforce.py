"""Network policy turned into what the data planes apply (pure: translate calls it).

- **Gateways**: each Gateway is a source (its Envoy proxy pods). For every pool a Gateway's routes
  reach, the endpoints its egress and their ingress policies refuse are taken out of that
  Gateway's view of the pool (a pool of its own, ``POOL@NS/GATEWAY``); when Cilium L7 rules apply,
  the pool carries them and the gateway checks each request (403 ``Access denied``, as Cilium's
  proxy answers). A pool left with no endpoint answers 503 and its flows say ``POLICY_DENIED``.
- **The userspace L4 proxy** asks :meth:`Verdicts.allowed_backends` per new connection: the client
  address decides the source identity (a pod, the host or the world), and only the endpoints the
  policies let it reach are picked; none: the connection is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping

from homeplane.policy.identity import Identity, build_identities
from homeplane.policy.rules import compile_policies
from homeplane.policy.verdict import Decision, PolicySet
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


def _restricted(ps: PolicySet, gw_ident: Identity, pool: ir.BackendPool, proto: str, name: str) -> ir.BackendPool | None:
    """The gateway's view of a pool, or None when policy changes nothing."""
    kept: list[ir.Endpoint] = []
    denied: list[tuple[str, str]] = []
    http = None
    for e, d in pool_decisions(ps, gw_ident, pool, proto):
        if not d.allowed:
            denied.append((f"{e.address}:{e.port}", next(s.text for s in d.steps if not s.allowed)))
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
        memo: dict[tuple[str, str], str] = {}

        def view(pool_name: str | None, proto: str = "TCP") -> str | None:
            if pool_name is None or pool_name not in pools:
                return pool_name
            key = (pool_name, proto)
            if key not in memo:
                name = f"{pool_name}@{gw.key}"
                restricted = _restricted(ps, gw_ident, pools[pool_name], proto, name)
                if restricted is not None:
                    pools[name] = restricted
                memo[key] = name if restricted is not None else pool_name
            return memo[key]

        def backends(bs: tuple[ir.WeightedBackend, ...], proto: str = "TCP") -> tuple[ir.WeightedBackend, ...]:
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
            d = self.ps.decide(src, dst, b.port, table.protocol)
            if d.allowed:
                allowed.add(b.name)
            elif why is None:
                why = next(s.text for s in d.steps if not s.allowed)
        out = (frozenset(allowed), why)
        if len(self._memo) >= self.LIMIT:
            self._memo.clear()
        self._memo[key] = out
        return out

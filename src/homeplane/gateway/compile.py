"""The Snapshot lowered to what the data plane runs (pure: no sockets, no clocks).

:func:`compile_snapshot` turns a Snapshot, with where this machine binds each Gateway, into a
:class:`CompiledGateway`: the port tables (``routing.router``) with each listener's settings
and each rule's :class:`~homeplane.gateway.exchange.RouteAction`, the clusters the actions
name with their load-balancing policy and settings, the TCP/UDP/TLS-passthrough listeners, and
the problems found (two Gateways wanting one address and port). :meth:`DataPlane.apply` then
only swaps: it starts and stops sockets and clusters to match. Golden files in
``tests/gateway/testdata`` show what a Snapshot compiles to (``--update-golden`` rewrites them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from homeplane.gateway.base import ListenerConf, Settings
from homeplane.gateway.exchange import RetryPolicy, RouteAction, WeightedCluster
from homeplane.gateway.frontends.streams import GatewayL4, passthrough_listeners, wanted_listeners
from homeplane.gateway.policies.auth import compile_security
from homeplane.gateway.policies.cors import compile_cors
from homeplane.gateway.routing.filters import compile_header_ops
from homeplane.gateway.routing.paths import PathSettings
from homeplane.gateway.routing.router import PortTable, compile_gateway
from homeplane.gateway.upstreams.cluster import ClusterConfig, cluster_key, cluster_settings
from homeplane.lua import script as lua_script
from homeplane.translate import snapshot as ir
from homeplane.translate.hostnames import specificity

ClusterSpec = tuple[ir.BackendPool, str, "ClusterConfig | None"]  # pool, load-balancing policy, settings


@dataclass
class CompiledGateway:
    ports: dict[tuple[str, int], PortTable] = field(default_factory=dict)  # (address, bound port) -> table
    bindings: list[dict[str, Any]] = field(default_factory=list)  # what listens where (for /status)
    clusters: dict[str, ClusterSpec] = field(default_factory=dict)
    l4: dict[Any, Any] = field(default_factory=dict)  # TCP/UDP listeners (frontends.streams)
    l4_bindings: list[dict[str, Any]] = field(default_factory=list)
    passthrough: dict[tuple[str, int], list[ir.L4Route]] = field(default_factory=dict)
    passthrough_proxy: dict[tuple[str, int], list[tuple[bool, bool]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --- binding ---------------------------------------------------------------------------


@dataclass
class BindPlan:
    """Where listeners go on this machine. The address is the Gateway's ``bind_address``, which
    the binding controller decided before translation (homeplane.ipam.binding); without one (a
    Snapshot made for a test or a tool) ``gateway_addresses["ns/name"]``, the Gateway's own
    address, ``default_address`` or 127.0.0.1. The port is ``port_map``'s, if the listener port
    is in it."""

    port_map: dict[int, int] = field(default_factory=dict)
    gateway_addresses: dict[str, str] = field(default_factory=dict)
    default_address: str | None = None

    def address_for(self, gw: ir.Gateway) -> str:
        if gw.bind_address:
            return gw.bind_address
        if gw.key in self.gateway_addresses:
            return self.gateway_addresses[gw.key]
        return self.default_address or (gw.addresses[0] if gw.addresses else "127.0.0.1")

    def port_for(self, port: int) -> int:
        return self.port_map.get(port, port)


def compile_snapshot(snapshot: ir.Snapshot, bind: BindPlan, settings: Settings) -> CompiledGateway:
    out = CompiledGateway()
    wanted, bindings, cluster_policies, problems = out.ports, out.bindings, out.clusters, out.problems
    groups: dict[tuple[str, int], str | None] = {}  # the merge group of each port's first Gateway
    for gw in snapshot.gateways:
        addr = bind.address_for(gw)
        for port, table in compile_gateway(gw).items():
            for lt in table.listeners:
                lt.conf = listener_conf(lt.listener)
            for m in iter_matches(table):
                m.action = build_action(m.rule, settings)
                used = [wc.cluster for wc in m.action.backends if wc.cluster] + [n for n, _ in m.action.mirrors]
                sec = m.action.security
                if sec is not None and sec.ext_cluster:
                    used.append(sec.ext_cluster)
                for name in used:
                    pool, policy, _ = name.split("|", 2)
                    if pool in snapshot.pools:
                        cfg = m.action.cluster_config if name in [wc.cluster for wc in m.action.backends] else None
                        cluster_policies[name] = (snapshot.pools[pool], policy, cfg)
            bport = bind.port_for(port)
            for lt in table.listeners:
                if lt.conf is not None and lt.conf.http3:
                    # Envoy Gateway's advertisement: the port the client must use (here the
                    # bound one, after --port-map), remembered for a day
                    lt.conf.alt_svc = b'h3=":%d"; ma=86400' % bport
            key = (addr, bport)
            if key in wanted:
                if gw.merge_group is not None and groups.get(key) == gw.merge_group and wanted[key].protocol == table.protocol:
                    # merged gateways: one port table for the listeners of all of them (translate
                    # has refused the listeners that conflict across Gateways)
                    merged = list(wanted[key].listeners) + list(table.listeners)
                    merged.sort(key=lambda lt: specificity(lt.listener.hostname))
                    wanted[key] = PortTable(wanted[key].gateway, port, table.protocol, tuple(merged))
                    b = next(b for b in bindings if (b["address"], b["boundPort"]) == key)
                    b["listeners"] += [f"{gw.ref.namespace}/{gw.ref.name}/{lt.listener.name}" for lt in table.listeners]
                    b.setdefault("mergedGateways", [b["gateway"]]).append(f"{gw.ref.namespace}/{gw.ref.name}")
                    continue
                problems.append(
                    f"Gateway {gw.ref} port {port}: {addr}:{bport} is already used by Gateway {wanted[key].gateway}; not served "
                    "(merged gateways - EnvoyProxy mergeGateways or --merge-gateways - would share it)"
                )
                continue
            wanted[key] = table
            groups[key] = gw.merge_group
            bindings.append(
                {
                    "gateway": f"{gw.ref.namespace}/{gw.ref.name}",
                    "port": port,
                    "protocol": table.protocol,
                    "address": addr,
                    "boundPort": bport,
                    "listeners": [lt.listener.name for lt in table.listeners],
                }
            )
    wanted_l4, l4_bindings = wanted_listeners(snapshot, bind.address_for, bind.port_for)
    # TLS passthrough listeners (TLSRoutes) share their port's server with HTTPS listeners
    passthrough: dict[tuple[str, int], list[ir.L4Route]] = {}
    passthrough_proxy: dict[tuple[str, int], list[tuple[bool, bool]]] = {}
    for key, gw_ref, port, name, routes, proxy in passthrough_listeners(snapshot, bind.address_for, bind.port_for):
        if key in wanted and wanted[key].gateway != gw_ref:
            problems.append(f"Gateway {gw_ref} listener {name}: {key[0]}:{key[1]} is already used by Gateway {wanted[key].gateway}; not served")
            continue
        if key not in wanted:
            wanted[key] = PortTable(gw_ref, port, "TLS", ())
            bindings.append({"gateway": f"{gw_ref.namespace}/{gw_ref.name}", "port": port, "protocol": "TLS", "address": key[0], "boundPort": key[1], "listeners": []})
        passthrough.setdefault(key, []).extend(routes)
        passthrough_proxy.setdefault(key, []).append(proxy)
        next(b for b in bindings if (b["address"], b["boundPort"]) == key)["listeners"].append(name)
    for key, (pool, policy, cfg) in GatewayL4.clusters(snapshot).items():
        if pool in snapshot.pools:
            cluster_policies.setdefault(key, (snapshot.pools[pool], policy, cfg))
    out.l4, out.l4_bindings = wanted_l4, l4_bindings
    out.passthrough, out.passthrough_proxy = passthrough, passthrough_proxy
    return out


def listener_conf(ls: ir.Listener) -> ListenerConf:
    """The listener's settings (its ClientTrafficPolicy, lowered by translate) in the form the
    connections read them."""
    s = ls.client_traffic.settings if ls.client_traffic else None
    if s is None:
        return ListenerConf()
    return ListenerConf(
        xff_enabled=s.xff_enabled, xff_hops=s.xff_hops, xff_trusted=s.xff_trusted, idle_timeout=s.idle_timeout,
        alpn=s.alpn, min_tls=s.min_tls, max_tls=s.max_tls, proxy_protocol=s.proxy_protocol,
        proxy_protocol_optional=s.proxy_protocol_optional, h2_max_streams=s.h2_max_streams,
        h2_stream_window=s.h2_stream_window, h2_connection_window=s.h2_connection_window,
        connection_limit=s.connection_limit, buffer_limit=s.buffer_limit,
        path=PathSettings(s.escaped_slashes, s.merge_slashes), http3=s.http3 and ls.protocol == "HTTPS",
    )


# --- route actions ---------------------------------------------------------------------


def build_action(rule: ir.RouteRule, settings: Settings) -> RouteAction:
    a = RouteAction(rule=rule, route_id=rule.id)
    if rule.direct_status is not None:
        a.direct_status = rule.direct_status
        a.direct_body = rule.direct_body
        if rule.direct_content_type:
            a.direct_headers = [(b"content-type", rule.direct_content_type.encode())]
        return a
    f = rule.filters
    a.redirect = f.redirect
    if f.rewrite is not None:
        a.rewrite_host = f.rewrite.hostname.encode() if f.rewrite.hostname else None
        a.rewrite_path_type = f.rewrite.path_type
        a.rewrite_path_value = f.rewrite.path_value.encode() if f.rewrite.path_value is not None else None
    if rule.match.path_type == "PathPrefix":
        a.matched_prefix = rule.match.path.encode()
    a.req_ops = compile_header_ops(f.request_headers)
    a.resp_ops = compile_header_ops(f.response_headers)
    bt = rule.backend_traffic.settings if rule.backend_traffic else None
    policy, settings_id, a.cluster_config = cluster_settings(rule.backend_traffic)
    if bt is not None and bt.hash_on is not None:
        a.hash_on = (bt.hash_on[0], bt.hash_on[1].encode())
    for b in rule.backends:
        wc = WeightedCluster(cluster_key(b.pool, policy, settings_id) if b.pool else None, b.weight)
        if b.filters is not None:
            wc.req_ops = compile_header_ops(b.filters.request_headers)
            wc.resp_ops = compile_header_ops(b.filters.response_headers)
            if b.filters.rewrite is not None and b.filters.rewrite.hostname:
                wc.rewrite_host = b.filters.rewrite.hostname.encode()
        a.backends.append(wc)
    a.total_weight = sum(wc.weight for wc in a.backends)
    for m in f.mirrors:
        if m.pool:
            a.mirrors.append((cluster_key(m.pool, "LeastRequest"), m.percent))
    # Timeouts: HTTPRoute first, then BackendTrafficPolicy, then Envoy's 15 s default; 0 disables.
    timeout = settings.default_request_timeout
    if bt is not None and bt.request_timeout is not None:
        timeout = bt.request_timeout or None
    if rule.timeout_request is not None:
        timeout = rule.timeout_request or None  # 0s disables
    a.timeout = timeout
    a.backend_timeout = rule.timeout_backend_request or None
    if bt is not None and bt.connect_timeout:
        a.connect_timeout = bt.connect_timeout
    if bt is not None and bt.retry is not None:
        r = bt.retry
        a.retry = RetryPolicy(r.num_retries, r.triggers, r.status_codes, backoff_base=r.backoff_base)
        if r.per_try_timeout:
            a.backend_timeout = a.backend_timeout or r.per_try_timeout
    if rule.retry is not None:  # the HTTPRoute's retry replaces the policy's (as in Envoy Gateway)
        r = rule.retry
        a.retry = RetryPolicy(r.num_retries, r.triggers, r.status_codes, backoff_base=r.backoff_base)
    if bt is not None:
        a.compression = tuple(t.encode() for t in bt.compression)
    if f.cors is not None:
        a.cors = compile_cors(f.cors)
    if rule.security is not None and rule.security.valid:
        a.security = compile_security(rule.security)
    if rule.extension is not None and rule.extension.valid:
        a.lua = tuple(lua_script(src, name, json.loads(ctx)) for name, src, ctx in rule.extension.lua)
    return a


def iter_matches(table: PortTable) -> Iterable[Any]:
    for lt in table.listeners:
        for vh in (*lt.exact.values(), *(t for _, t in lt.wildcards), *([lt.any_host] if lt.any_host else [])):
            yield from vh.matches


def summary(plan: CompiledGateway) -> dict[str, Any]:
    """What a Snapshot compiled to, as plain data (the golden tests' form; readable in review):
    ports with their listeners' settings and each virtual host's rules in match order with the
    action the data plane takes, clusters, and problems."""
    from dataclasses import asdict, fields

    from homeplane.gateway.frontends.fastlane import fast_eligible, fast_pool

    def changed(obj: Any) -> dict[str, Any]:
        default = type(obj)()
        out = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if v != getattr(default, f.name):
                out[f.name] = [str(x) for x in v] if isinstance(v, tuple) else (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
        return out

    def action(m: Any) -> dict[str, Any]:
        a: RouteAction = m.action
        out: dict[str, Any] = {"route": a.route_id}
        if a.direct_status is not None:
            out["direct"] = a.direct_status
            return out
        if a.redirect is not None:
            out["redirect"] = {k: v for k, v in asdict(a.redirect).items() if v is not None}
        if a.rewrite_host or a.rewrite_path_type:
            out["rewrite"] = {"host": (a.rewrite_host or b"").decode() or None, "path": a.rewrite_path_type}
        out["backends"] = [{"cluster": wc.cluster, "weight": wc.weight} for wc in a.backends]
        out["timeout"] = a.timeout
        if a.backend_timeout:
            out["backendTimeout"] = a.backend_timeout
        if a.retry.num_retries:
            out["retry"] = {"retries": a.retry.num_retries, "on": sorted(a.retry.triggers), "codes": sorted(a.retry.status_codes)}
        if a.mirrors:
            out["mirrors"] = [list(x) for x in a.mirrors]
        if a.hash_on:
            out["hashOn"] = [a.hash_on[0], a.hash_on[1].decode()]
        if a.compression:
            out["compression"] = [t.decode() for t in a.compression]
        if a.security is not None:
            sec = a.security
            out["security"] = [k for k in ("ext_cluster", "users", "api_keys", "jwt", "authz", "cors") if getattr(sec, k)]
        if a.lua:
            out["lua"] = len(a.lua)
        return out

    ports = []
    for (addr, port), table in sorted(plan.ports.items()):
        listeners = []
        for lt in table.listeners:
            vhosts = []
            for vh in (*lt.exact.values(), *(t for _, t in lt.wildcards), *([lt.any_host] if lt.any_host else [])):
                rules = []
                for m in vh.matches:
                    match = {"path": f"{m.rule.match.path_type} {m.rule.match.path}"}
                    if m.method:
                        match["method"] = m.method.decode()
                    if m.headers or m.query:
                        match["headers/query"] = len(m.headers) + len(m.query)
                    name = fast_eligible(m.action)
                    spec = plan.clusters.get(name) if name else None
                    rules.append({"match": match, **action(m), "fastLane": spec is not None and fast_pool(spec[0])})
                vhosts.append({"host": vh.hostname, "rules": rules})
            listeners.append({
                "name": lt.listener.name, "hostname": lt.listener.hostname, "settings": changed(lt.conf), "vhosts": vhosts,
            })
        ports.append({"address": addr, "port": port, "protocol": table.protocol, "gateway": str(table.gateway), "listeners": listeners})
    clusters = {
        name: {"pool": pool.name, "policy": policy, "endpoints": [f"{e.address}:{e.port}" for e in pool.endpoints],
               **({"settings": asdict(cfg)} if cfg is not None else {})}
        for name, (pool, policy, cfg) in sorted(plan.clusters.items())
    }
    return {
        "ports": ports,
        "clusters": clusters,
        "streams": plan.l4_bindings,
        "passthrough": {f"{a}:{p}": [str(r.route) for r in routes] for (a, p), routes in sorted(plan.passthrough.items())},
        "problems": plan.problems,
    }

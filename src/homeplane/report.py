"""The check report: what would be served and every problem found, as one JSON document.

``homeplane check -o json``, the admin endpoint ``/status`` and the text output of
``homeplane check`` are all views of :func:`build_report`. The schema is
documented in ``docs/check-report.md``; field names are stable.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterator

from homeplane import __version__
from homeplane.api import registry
from homeplane.api.diagnostics import Diagnostic, Diagnostics, Severity
from homeplane.api.objects import Obj, ObjectKey
from homeplane.translate import Translation
from homeplane.translate import snapshot as ir
from homeplane.translate import status as st

REPORT_API_VERSION = "homeplane.dev/v1alpha1"
INTERNET_FACING_ANNOTATION = "homeplane.dev/internet-facing"

# A tunnel (cloudflared) ingress rule pointing at a gateway's Service, as home-ops repos write it.
_TUNNEL_SERVICE = re.compile(r"service:\s*[\"']?https?://([a-z0-9-]+)\.[^\s\"']*svc\.cluster\.local")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def internet_facing_gateways(objects: list[Obj], snapshot: ir.Snapshot) -> tuple[set[tuple[str, str]], str]:
    """Gateways reachable from the internet, and how that was decided.

    In order: the ``homeplane.dev/internet-facing`` annotation on the Gateway; a tunnel
    ingress rule (cloudflared ``config.yaml`` in a ConfigMap or HelmRelease values)
    whose ``service:`` names the gateway; failing both, gateways named like
    ``*external*``, the home-ops convention.
    """
    names = {g.ref.name: (g.ref.namespace or "", g.ref.name) for g in snapshot.gateways}
    explicit: dict[tuple[str, str], bool] = {}
    for g in snapshot.gateways:
        v = g.annotations.get(INTERNET_FACING_ANNOTATION)
        if v is not None:
            explicit[(g.ref.namespace or "", g.ref.name)] = v.lower() == "true"
    tunneled: set[tuple[str, str]] = set()
    for o in objects:
        if o.kind not in ("ConfigMap", "HelmRelease", "Secret"):
            continue
        for text in _strings(o.raw.get("data") if o.kind != "HelmRelease" else (o.raw.get("spec") or {}).get("values")):
            if "ingress" not in text:
                continue
            for m in _TUNNEL_SERVICE.finditer(text):
                if m.group(1) in names:
                    tunneled.add(names[m.group(1)])
    if tunneled:
        how = "tunnel ingress rules"
        facing = tunneled
    else:
        how = "gateway name (*external*)"
        facing = {key for name, key in names.items() if "external" in name}
    facing = {k for k in facing if explicit.get(k, True)} | {k for k, v in explicit.items() if v}
    return facing, how


def status_diagnostics(objects: list[Obj], status: dict[ObjectKey, dict[str, Any]]) -> Diagnostics:
    """Turn every unhealthy status condition into a diagnostic that points at the object's file."""
    out = Diagnostics()
    by_key = {o.key: o for o in objects}
    for key, s in status.items():
        obj = by_key.get(key)
        if obj is None:
            continue
        where = dict(
            file=obj.source.file,
            line=obj.source.line,
            document=obj.source.document,
            kind=obj.kind,
            namespace=obj.namespace,
            name=obj.name,
        )
        for c in s.get("conditions", []):
            _cond_diag(out, c, "", where)
        for ls in s.get("listeners", []):
            for c in ls.get("conditions", []):
                if c["type"] == st.PROGRAMMED:
                    continue  # follows from the other listener conditions
                _cond_diag(out, c, f"listener {ls['name']}", where)
        for p in s.get("parents", []):
            pr = p["parentRef"]
            for c in p.get("conditions", []):
                _cond_diag(out, c, f"parent {pr['kind']} {pr['namespace']}/{pr['name']}", where)
        seen: set[tuple] = set()
        for a in s.get("ancestors", []):
            for c in a.get("conditions", []):
                k = (c["type"], c["reason"], c["message"])
                if k in seen:
                    continue
                seen.add(k)
                _cond_diag(out, c, "", where)
    return out


def _cond_diag(out: Diagnostics, c: dict[str, Any], context: str, where: dict[str, Any]) -> None:
    t, status, reason = c["type"], c["status"], c["reason"]
    if t.startswith("cilium.io/IPs"):
        return  # pool counters, not problems
    if t in (st.CONFLICTED, "cilium.io/PoolConflict"):
        if status != "True":
            return
        sev = Severity.ERROR
    elif t == st.OVERRIDDEN:
        if status != "True":
            return
        sev = Severity.INFO
    elif t == st.PROGRAMMED and status != "True":
        sev = Severity.ERROR
    elif status == "True":
        return
    elif reason == st.R_UNSUPPORTED_PROTOCOL:
        sev = Severity.WARNING
    else:
        sev = Severity.ERROR
    prefix = f"{context}: " if context else ""
    out.add(
        Diagnostic(sev, f"{prefix}{t}={status} ({reason}): {c['message']}", code=reason, **where)  # type: ignore[arg-type]
    )


def _endpoints_json(pool: ir.BackendPool | None) -> list[dict[str, Any]]:
    if pool is None:
        return []
    return [
        {"address": e.address, "port": e.port, "ready": e.ready, **({"hostname": e.hostname} if e.hostname else {})}
        for e in pool.endpoints
    ]


def _backend_json(b: ir.WeightedBackend, pools: dict[str, ir.BackendPool]) -> dict[str, Any]:
    pool = pools.get(b.pool) if b.pool else None
    r = b.ref
    text = f"{r.kind} {r.namespace}/{r.name}" + (f":{r.section}" if r.section else "")
    d: dict[str, Any] = {"ref": text, "weight": b.weight, "pool": b.pool}
    if b.invalid_reason:
        d["invalid"] = b.invalid_reason
    if pool is not None:
        d["endpoints"] = {"ready": len(pool.ready_endpoints), "total": len(pool.endpoints)}
    return d


def _match_json(m: ir.Match) -> dict[str, Any]:
    d: dict[str, Any] = {"path": {"type": m.path_type, "value": m.path}}
    if m.method:
        d["method"] = m.method
    if m.headers:
        d["headers"] = [{"type": t, "name": n, "value": v} for t, n, v in m.headers]
    if m.query:
        d["queryParams"] = [{"type": t, "name": n, "value": v} for t, n, v in m.query]
    return d


def _rule_json(r: ir.RouteRule, pools: dict[str, ir.BackendPool]) -> dict[str, Any]:
    d: dict[str, Any] = {"index": r.rule_index, "matches": [_match_json(r.match)]}
    if r.rule_name:
        d["name"] = r.rule_name
    d["backends"] = [_backend_json(b, pools) for b in r.backends]
    if r.filters.redirect:
        rd = r.filters.redirect
        d["redirect"] = {
            k: v
            for k, v in {
                "scheme": rd.scheme,
                "hostname": rd.hostname,
                "port": rd.port,
                "path": {"type": rd.path_type, "value": rd.path_value} if rd.path_type else None,
                "statusCode": rd.status_code,
            }.items()
            if v is not None
        }
    if r.direct_status:
        d["directResponse"] = {"status": r.direct_status, "reason": r.direct_reason}
    return d


def _authenticates(sec: Any) -> bool:
    """Does a SecurityPolicy keep strangers out? CORS alone or an optional JWT does not; an
    invalid one does (its routes answer 500)."""
    s = sec.settings
    return not sec.valid or bool(
        s.ext_auth or s.basic_auth or s.api_key or (s.jwt and not s.jwt.optional) or s.authorization
    )


def _certificates(objects: list[Obj]) -> list[dict[str, Any]]:
    from homeplane.certs.spec import report as certificates_report

    return certificates_report(objects)


def _network_policies(snap: Any) -> dict[str, Any]:
    """Network policy in the report: each policy with whom it selects and what homeplane cannot
    enforce of it, and where the gateways see fewer endpoints (or L7 rules) because of it."""
    ps = snap.network_policy
    if ps is None:
        return {"policies": [], "gatewayViews": []}
    from homeplane.policy.trace import check

    policies = [{"policy": name, **r} for name, r in sorted(check(ps).items())]
    views = [{"pool": name, "endpoints": len(p.endpoints), "refused": [{"endpoint": e, "reason": why} for e, why in p.policy_denied],
              "httpRules": [[str(r) for r in g] for g in p.policy_http] if p.policy_http is not None else None}
             for name, p in sorted(snap.pools.items()) if p.policy_denied or p.policy_http is not None]
    return {"policies": policies, "gatewayViews": views}


def build_report(objects: list[Obj], load_diags: Diagnostics, translation: Translation, files: int) -> dict[str, Any]:
    snap = translation.snapshot
    pools = dict(snap.pools)
    status = translation.status
    diags = Diagnostics(list(load_diags.items) + list(translation.diagnostics.items))
    diags.extend(status_diagnostics(objects, status).items)

    gateways = []
    # route key -> per-rule summaries, protection and serving gateways
    route_rules: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    route_security: dict[tuple[str, str], set[str]] = {}
    route_authenticated: set[tuple[str, str]] = set()
    route_gateways: dict[tuple[str, str], set[str]] = {}
    for g in snap.gateways:
        gstatus = status.get(("gateway.networking.k8s.io", "Gateway", g.ref.namespace, g.ref.name), {})
        lstatus = {x["name"]: x for x in gstatus.get("listeners", [])}
        listeners = []
        for ls in g.listeners:
            entry: dict[str, Any] = {
                "name": ls.name,
                "port": ls.port,
                "protocol": ls.protocol,
                "hostname": ls.hostname,
                "ready": ls.ready,
                "attachedRoutes": ls.attached_routes,
                "conditions": lstatus.get(ls.name, {}).get("conditions", []),
            }
            if ls.protocol in ("HTTPS", "TLS"):
                entry["tls"] = {
                    "mode": ls.tls_mode,
                    "certificates": [
                        {"secret": f"{c.secret.namespace}/{c.secret.name}", "dnsNames": list(c.dns_names), "notAfter": c.not_after}
                        for c in ls.tls_certs
                    ],
                }
            if ls.client_traffic:
                entry["clientTrafficPolicy"] = f"{ls.client_traffic.policy.namespace}/{ls.client_traffic.policy.name}"
            if ls.protocol in ("TCP", "UDP", "TLS"):
                # TCP/UDP (and TLS terminated here): the first is served, any later one waits;
                # TLS passthrough: each serves its hostnames
                entry["l4Routes"] = [
                    {
                        "route": f"{r.route.kind} {r.route.namespace}/{r.route.name}",
                        "hostnames": list(r.hostnames),
                        "served": i == 0 or ls.tls_mode == "Passthrough",
                        "backends": [_backend_json(b, pools) for b in r.backends],
                    }
                    for i, r in enumerate(ls.l4_routes)
                ]
            listeners.append(entry)
            for vh in ls.vhosts:
                for r in vh.rules:
                    key = (r.route.namespace or "", r.route.name)
                    route_rules.setdefault(key, {}).setdefault(r.rule_index, _rule_json(r, pools))
                    rules = route_rules[key][r.rule_index]
                    m = _match_json(r.match)
                    if m not in rules["matches"]:
                        rules["matches"].append(m)
                    route_gateways.setdefault(key, set()).add(f"{g.ref.namespace}/{g.ref.name}")
                    if r.security:
                        route_security.setdefault(key, set()).add(
                            f"{r.security.policy.namespace}/{r.security.policy.name}" + ("" if r.security.valid else " (invalid)")
                        )
                        if _authenticates(r.security):
                            route_authenticated.add(key)
                        rules.setdefault("securityPolicy", f"{r.security.policy.namespace}/{r.security.policy.name}")
                    if r.backend_traffic:
                        rules.setdefault(
                            "backendTrafficPolicy", f"{r.backend_traffic.policy.namespace}/{r.backend_traffic.policy.name}"
                        )
                    if r.extension:
                        rules.setdefault(
                            "envoyExtensionPolicy", f"{r.extension.policy.namespace}/{r.extension.policy.name}"
                        )
        gateways.append(
            {
                "namespace": g.ref.namespace,
                "name": g.ref.name,
                "class": g.class_name,
                "addresses": list(g.addresses),
                "programmed": g.programmed,
                "conditions": gstatus.get("conditions", []),
                "listeners": listeners,
            }
        )

    routes = []
    for o in objects:
        if o.kind != "HTTPRoute" or not o.served:
            continue
        key = (o.namespace or "", o.name)
        s = status.get(o.key, {})
        parents = []
        for p in s.get("parents", []):
            conds = {c["type"]: c for c in p["conditions"]}
            acc = conds.get(st.ACCEPTED, {})
            pr = p["parentRef"]
            parents.append(
                {
                    "gateway": f"{pr['namespace']}/{pr['name']}",
                    "sectionName": pr.get("sectionName"),
                    "accepted": acc.get("status") == "True",
                    "reason": acc.get("reason"),
                    "message": acc.get("message"),
                    "resolvedRefs": conds.get(st.RESOLVED_REFS, {}).get("status") == "True",
                }
            )
        spec = o.model.spec  # type: ignore[union-attr]
        routes.append(
            {
                "namespace": o.namespace,
                "name": o.name,
                "file": o.source.file,
                "hostnames": list(spec.hostnames),
                "parents": parents,
                "servedBy": sorted(route_gateways.get(key, set())),
                "securityPolicies": sorted(route_security.get(key, set())),
                "rules": [route_rules[key][i] for i in sorted(route_rules.get(key, {}))],
            }
        )

    services = []
    for svc in snap.services:
        services.append(
            {
                "namespace": svc.ref.namespace,
                "name": svc.ref.name,
                "type": svc.type,
                "clusterIP": svc.cluster_ip,
                "loadBalancerIPs": list(svc.lb_ips or svc.requested_lb_ips),
                "externalName": svc.external_name,
                "endpointSource": svc.endpoint_source,
                "ports": [
                    {
                        "name": p.name,
                        "port": p.port,
                        "protocol": p.protocol,
                        "targetPort": p.target_port,
                        "endpoints": _endpoints_json(pools.get(p.pool)),
                    }
                    for p in svc.ports
                ],
            }
        )

    policies = []
    for p in snap.policies:
        pst = status.get(("gateway.envoyproxy.io", p.policy.kind, p.policy.namespace, p.policy.name), {})
        anc = pst.get("ancestors", [])
        policies.append(
            {
                "kind": p.policy.kind,
                "namespace": p.policy.namespace,
                "name": p.policy.name,
                "targets": [str(t) for t in p.targets],
                "accepted": p.accepted,
                "message": p.message,
                "conditions": anc[0]["conditions"] if anc else [],
            }
        )

    facing, how = internet_facing_gateways(objects, snap)
    facing_names = {f"{ns}/{name}" for ns, name in facing}
    by_key = {(o.namespace or "", o.name): o for o in objects if o.kind == "HTTPRoute" and o.served}
    for r in routes:
        if (r["namespace"], r["name"]) in route_authenticated or not set(r["servedBy"]) & facing_names:
            continue
        if r["rules"] and all("redirect" in rule or "directResponse" in rule for rule in r["rules"]):
            continue  # nothing behind it to protect
        o = by_key[(r["namespace"], r["name"])]
        diags.warning(
            f"internet-facing route without authentication: served by {', '.join(sorted(set(r['servedBy']) & facing_names))} "
            f"(internet-facing by {how}) and no SecurityPolicy protects it",
            file=o.source.file,
            line=o.source.line,
            document=o.source.document,
            kind="HTTPRoute",
            namespace=o.namespace,
            name=o.name,
            code="UnprotectedInternetRoute",
        )
    for r in routes:
        r["internetFacing"] = bool(set(r["servedBy"]) & facing_names)

    served = Counter(o.kind for o in objects if o.served and registry.enforced(o.group, o.kind))
    not_enforced = Counter(o.kind for o in objects if o.served and not registry.enforced(o.group, o.kind))
    not_served = Counter(o.kind for o in objects if not o.served)
    errors = len(diags.errors)
    return {
        "apiVersion": REPORT_API_VERSION,
        "kind": "CheckReport",
        "homeplaneVersion": __version__,
        "snapshot": {"version": snap.version, "digest": snap.digest},
        "summary": {
            "files": files,
            "objects": len(objects),
            "served": dict(sorted(served.items())),
            "loadedNotEnforced": dict(sorted(not_enforced.items())),
            "notServed": dict(sorted(not_served.items())),
            "errors": errors,
            "warnings": len(diags.warnings),
        },
        "gateways": [{**g, "internetFacing": f"{g['namespace']}/{g['name']}" in facing_names} for g in gateways],
        "routes": routes,
        "services": services,
        "policies": policies,
        "networkPolicies": _network_policies(snap),
        "certificates": _certificates(objects),
        "diagnostics": [d.to_json() for d in diags],
    }

"""``homeplane describe KIND NAME``: one object as ``kubectl describe`` shows it.

What it is and where it was written, its spec, the status conditions homeplane computed, the
objects it is tied to (the routes on each listener of a Gateway; the parents, backends and
policies of a route; the endpoints and routes of a Service; a policy's targets), and as events
the diagnostics that concern it.
"""

from __future__ import annotations

from typing import Any, Iterable

from homeplane.api.yamlio import dump

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute")
POLICY_KINDS = ("SecurityPolicy", "ClientTrafficPolicy", "BackendTrafficPolicy", "EnvoyExtensionPolicy", "BackendTLSPolicy")


def _indent(text: str, n: int = 2) -> str:
    pad = " " * n
    return "\n".join(pad + ln if ln else ln for ln in text.rstrip("\n").splitlines())


def _conditions(conds: Iterable[dict[str, Any]], n: int) -> list[str]:
    rows = [(str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")), str(c.get("message", "")))
            for c in conds if isinstance(c, dict)]
    if not rows:
        return []
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("Type", "Status", "Reason"))]
    pad = " " * n
    out = [pad + "  ".join(h.ljust(widths[i]) for i, h in enumerate(("Type", "Status", "Reason"))) + "  Message"]
    out += [pad + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    return out


def _refs(obj: Any, field: str) -> list[dict[str, Any]]:
    spec = obj.raw.get("spec") or {}
    out: list[dict[str, Any]] = []
    if field == "parentRefs":
        out = [r for r in spec.get("parentRefs") or [] if isinstance(r, dict)]
    elif field == "backendRefs":
        for rule in spec.get("rules") or []:
            if isinstance(rule, dict):
                out += [r for r in rule.get("backendRefs") or [] if isinstance(r, dict)]
    elif field == "targetRefs":
        out = [r for r in spec.get("targetRefs") or [] if isinstance(r, dict)]
        if isinstance(spec.get("targetRef"), dict):
            out.append(spec["targetRef"])
    return out


def _names(obj: Any, ref: dict[str, Any], kind: str) -> bool:
    return ref.get("kind", kind) == kind and ref.get("name") == obj.name


def describe(obj: Any, result: Any, redact: bool = False) -> str:
    status = result.translation.status.get(obj.key, {})
    lines = [f"Name:         {obj.name}"]
    if obj.namespace:
        lines.append(f"Namespace:    {obj.namespace}")
    lines += [f"Kind:         {obj.kind}", f"API Version:  {obj.api_version}",
              f"Source:       {obj.source.file}:{obj.source.line or 1}"]
    for title, values in (("Labels", obj.labels), ("Annotations", obj.annotations)):
        items = sorted(values.items())
        if not items:
            lines.append(f"{title + ':':<14}<none>")
        for i, (k, v) in enumerate(items):
            shown = "(redacted)" if redact and title == "Annotations" else v
            lines.append(f"{(title + ':') if i == 0 else '':<14}{k}={shown}")
    spec = obj.raw.get("spec")
    if spec is not None:
        lines += ["Spec:", _indent(dump(spec))]
    elif redact:
        keys = sorted({*(obj.raw.get("data") or {}), *(obj.raw.get("stringData") or {})})
        lines += ["Data:"] + [f"  {k}: (redacted)" for k in keys]
    lines += _status(obj, status)
    related = _related(obj, result)
    if related:
        lines += ["Related:"] + ["  " + r for r in related]
    events = _events(obj, result)
    lines += ["Events:"] + (events or ["  <none>"])
    return "\n".join(lines) + "\n"


def _status(obj: Any, status: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if not status:
        return ["Status:       " + ("<not computed: homeplane does not serve this kind>" if not obj.served else "<none>")]
    out.append("Status:")
    if status.get("addresses"):
        out.append("  Addresses:  " + ", ".join(str(a.get("value")) for a in status["addresses"] if isinstance(a, dict)))
    if status.get("conditions"):
        out += ["  Conditions:"] + _conditions(status["conditions"], 4)
    for ls in status.get("listeners") or []:
        out.append(f"  Listener {ls.get('name')}: {ls.get('attachedRoutes', 0)} attached route(s)")
        out += _conditions(ls.get("conditions") or [], 4)
    for p in status.get("parents") or []:
        ref = p.get("parentRef") or {}
        where = f"{ref.get('kind', 'Gateway')} {ref.get('namespace', obj.namespace)}/{ref.get('name')}"
        out.append(f"  Parent {where}{'#' + ref['sectionName'] if ref.get('sectionName') else ''}:")
        out += _conditions(p.get("conditions") or [], 4)
    ancestors = status.get("ancestors") or []
    for a in ancestors:
        ref = a.get("ancestorRef") or {}
        out.append(f"  Ancestor {ref.get('kind', 'Gateway')} {ref.get('namespace', obj.namespace)}/{ref.get('name')}"
                   f"{'#' + ref['sectionName'] if ref.get('sectionName') else ''}:")
        out += _conditions(a.get("conditions") or [], 4)
    return out


def _related(obj: Any, result: Any) -> list[str]:
    objects = result.load.objects
    snap = result.translation.snapshot
    out: list[str] = []
    if obj.kind == "Gateway":
        listeners = [ls.get("name") for ls in (obj.raw.get("spec") or {}).get("listeners") or [] if isinstance(ls, dict)]
        for ls in listeners:
            routes = []
            for r in objects:
                if r.kind not in ROUTE_KINDS:
                    continue
                for p in _refs(r, "parentRefs"):
                    if _names(obj, p, "Gateway") and p.get("namespace", r.namespace) == obj.namespace \
                            and p.get("sectionName") in (None, ls):
                        routes.append(f"{r.kind} {r.namespace}/{r.name}")
            out.append(f"Listener {ls}: " + (", ".join(sorted(set(routes))) or "no routes"))
    if obj.kind in ROUTE_KINDS:
        for p in _refs(obj, "parentRefs"):
            out.append(f"Parent: {p.get('kind', 'Gateway')} {p.get('namespace', obj.namespace)}/{p.get('name')}"
                       f"{'#' + p['sectionName'] if p.get('sectionName') else ''}")
        for b in _refs(obj, "backendRefs"):
            ns = b.get("namespace", obj.namespace)
            svc = snap.service(ns, b.get("name")) if b.get("kind", "Service") == "Service" else None
            eps = _endpoints(snap, svc, b.get("port"))
            out.append(f"Backend: {b.get('kind', 'Service')} {ns}/{b.get('name')}:{b.get('port', '')}"
                       f"{' weight ' + str(b['weight']) if 'weight' in b else ''} -> {eps}")
    if obj.kind in ROUTE_KINDS or obj.kind == "Gateway":
        for pol in objects:
            if pol.kind in POLICY_KINDS and any(_names(obj, t, obj.kind) for t in _refs(pol, "targetRefs")) \
                    and pol.namespace == obj.namespace:
                out.append(f"Policy: {pol.kind} {pol.namespace}/{pol.name}")
    if obj.kind == "Service":
        svc = snap.service(obj.namespace or "default", obj.name)
        if svc is not None:
            out.append(f"ClusterIP: {svc.cluster_ip or 'None'}" + (f"  LoadBalancer: {', '.join(svc.lb_ips)}" if svc.lb_ips else ""))
            for p in svc.ports:
                out.append(f"Port {p.name or p.port} ({p.port}/{p.protocol}): {_endpoints(snap, svc, p.port)}")
        for r in objects:
            if r.kind in ROUTE_KINDS and any(b.get("kind", "Service") == "Service" and b.get("name") == obj.name
                                             and b.get("namespace", r.namespace) == obj.namespace for b in _refs(r, "backendRefs")):
                out.append(f"Used by: {r.kind} {r.namespace}/{r.name}")
    if obj.kind in POLICY_KINDS:
        for t in _refs(obj, "targetRefs"):
            out.append(f"Target: {t.get('kind')} {obj.namespace}/{t.get('name')}{'#' + t['sectionName'] if t.get('sectionName') else ''}")
    return out


def _endpoints(snap: Any, svc: Any, port: Any) -> str:
    if svc is None:
        return "not found"
    for p in svc.ports:
        if port is None or p.port == port:
            pool = snap.pools.get(p.pool)
            if pool is None:
                return "no endpoints"
            eps = ", ".join(f"{e.address}:{e.port}{'' if e.ready else ' (not ready)'}" for e in pool.endpoints)
            return eps or "no endpoints"
    return f"no port {port}"


def _events(obj: Any, result: Any) -> list[str]:
    out = []
    for d in result.load.diagnostics:
        mine = (d.name == obj.name and d.kind in (None, obj.kind) and d.namespace in (None, obj.namespace)) or \
               (d.file == obj.source.file and d.document is not None and d.document == obj.source.document)
        if mine:
            kind = {"error": "Error", "warning": "Warning"}.get(d.severity.value, "Normal")
            out.append(f"  {kind:<8} {d.code or '-':<24} {d.message}")
    for d in result.translation.diagnostics:
        if d.name == obj.name and d.kind in (None, obj.kind):
            kind = {"error": "Error", "warning": "Warning"}.get(d.severity.value, "Normal")
            out.append(f"  {kind:<8} {d.code or '-':<24} {d.message}")
    return out

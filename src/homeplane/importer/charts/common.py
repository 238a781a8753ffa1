"""What the charts' route and Service templates share: Helm's fullname rule, ``tpl`` over
structures, and the HTTPRoute shape most charts render from ``route.<key>`` values."""

from __future__ import annotations

from typing import Any, Callable

from homeplane.importer.helm import TemplateError, render_tpl

GATEWAY_API = "gateway.networking.k8s.io/v1"
Warn = Callable[[str], None]


def fullname(release: str, values: dict[str, Any], chart: str, limit: int = 63) -> str:
    """The ``<chart>.fullname`` helper every chart copies from ``helm create``: the override; the
    release name when it contains the chart's name; else ``<release>-<name>``; cut to 63."""
    override = values.get("fullnameOverride") or (values.get("global") or {}).get("fullnameOverride")
    if override:
        return str(override)[:limit].rstrip("-")
    name = str((values.get("global") or {}).get("nameOverride") or values.get("nameOverride") or chart)
    full = release if name in release else f"{release}-{name}"
    return full[:limit].rstrip("-")


class Tpl:
    """Helm's ``tpl`` over strings, lists and maps (the subset :func:`render_tpl` knows);
    an expression it cannot evaluate is reported and left as written."""

    def __init__(self, release: str, namespace: str, values: dict[str, Any], chart: str, warn: Warn):
        self.args = (release, namespace, values, chart)
        self.warn = warn

    def __call__(self, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return render_tpl(v, self.args[0], self.args[1], self.args[2], self.args[3])
            except TemplateError as e:
                self.warn(str(e))
                return v
        if isinstance(v, list):
            return [self(x) for x in v]
        if isinstance(v, dict):
            return {k: self(x) for k, x in v.items()}
        return v


def service(name: str, namespace: str, ports: list[dict[str, Any]], selector: dict[str, str], headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "ClusterIP", "selector": selector, "ports": ports}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def enabled_routes(routes: Any, warn: Warn) -> list[tuple[str, dict[str, Any]]]:
    """``route`` as a map of keyed routes (``main`` first), only those ``enabled``."""
    out = []
    if not isinstance(routes, dict):
        return out
    for key, r in sorted(routes.items(), key=lambda kv: (kv[0] != "main", str(kv[0]))):
        if not isinstance(r, dict) or not r.get("enabled"):
            continue
        kind = r.get("kind", "HTTPRoute")
        if kind != "HTTPRoute":
            warn(f"route {key}: kind {kind} is not rendered")
            continue
        out.append((str(key), r))
    return out


def http_route(
    name: str,
    namespace: str,
    r: dict[str, Any],
    backend: dict[str, Any],
    tpl: Tpl,
    *,
    default_matches: list[dict[str, Any]] | None = None,
    extra_rules_key: str = "additionalRules",
    redirect: bool = True,
    tpl_matches: bool = False,
    rule_extras: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The common chart template: extra rules first, then either the https redirect rule
    (``httpsRedirect``) or one rule to ``backend`` with the route's filters and matches."""
    rules = list(tpl(r.get(extra_rules_key)) or [])
    if redirect and r.get("httpsRedirect"):
        rules.append({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]})
    else:
        rule: dict[str, Any] = {"backendRefs": [{"group": "", "kind": "Service", "weight": 1, **backend}]}
        if r.get("filters"):
            rule["filters"] = r["filters"]
        matches = r.get("matches") or default_matches or [{"path": {"type": "PathPrefix", "value": "/"}}]
        rule["matches"] = tpl(matches) if tpl_matches else matches
        for key in rule_extras:
            if r.get(key):
                rule[key] = r[key]
        rules.append(rule)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if r.get("annotations"):
        meta["annotations"] = {k: str(v) for k, v in tpl(r["annotations"]).items()}
    if r.get("labels"):
        meta["labels"] = {k: str(v) for k, v in r["labels"].items()}
    spec: dict[str, Any] = {"parentRefs": r.get("parentRefs") or [], "rules": rules}
    if r.get("hostnames"):
        spec["hostnames"] = [str(h) for h in tpl(r["hostnames"])]
    return {"apiVersion": r.get("apiVersion", GATEWAY_API), "kind": "HTTPRoute", "metadata": meta, "spec": spec}


def keyed(name: str, key: str) -> str:
    return name if key == "main" else f"{name}-{key}"

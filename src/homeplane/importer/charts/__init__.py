"""Charts whose networking objects homeplane renders from HelmRelease values.

Real repos get many HTTPRoutes from charts' own ``route:`` values. Each module renders what
one chart's templates produce - names, hostnames, parentRefs, rules, and the Services the
routes point at - read from that chart's sources; :data:`RENDERERS` maps chart names to them.
For any other chart, :func:`route_like_values` finds values that look like a route, so that
``check`` says which would go unserved instead of serving less in silence.
"""

from __future__ import annotations

from typing import Any, Callable

from homeplane.importer import apptemplate, kubeprometheus
from homeplane.importer.charts import authentik, echo, grafana, rookceph, victoriametrics

Renderer = Callable[[str, str, dict[str, Any], Callable[[str], None]], list[dict[str, Any]]]

RENDERERS: dict[str, Renderer] = {
    "app-template": apptemplate.render,
    "kube-prometheus-stack": kubeprometheus.render,
    authentik.CHART: authentik.render,
    grafana.CHART: grafana.render,
    victoriametrics.CHART: victoriametrics.render,
    rookceph.CHART: rookceph.render,
    echo.CHART: echo.render,
}

_ROUTE_KEYS = {"route", "routes", "httproute", "httproutes", "tcproute", "grpcroute", "tlsroute", "gatewayroute"}
_ROUTE_FIELDS = {"hostnames", "parentRefs", "host", "hosts", "parentref", "gateway"}


def route_like_values(values: Any, path: str = "", depth: int = 0) -> list[str]:
    """Value paths that look like a route a chart would render: a key such as ``route`` or
    ``httpRoute`` holding ``enabled: true``, ``hostnames`` or ``parentRefs`` (or a map of such)."""
    found: list[str] = []
    if not isinstance(values, dict) or depth > 6:
        return found
    for k, v in values.items():
        p = f"{path}.{k}" if path else str(k)
        if not isinstance(v, dict):
            continue
        if str(k).lower() in _ROUTE_KEYS:
            if _looks_on(v):
                found.append(p)
                continue
            subs = [f"{p}.{sk}" for sk, sv in v.items() if isinstance(sv, dict) and _looks_on(sv)]
            if subs:
                found += subs
                continue
        found += route_like_values(v, p, depth + 1)
    return found


def _looks_on(v: dict[str, Any]) -> bool:
    if v.get("enabled") is False:
        return False
    return v.get("enabled") is True or any(f in v for f in _ROUTE_FIELDS)

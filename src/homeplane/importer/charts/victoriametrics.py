"""VictoriaMetrics' ``victoria-metrics-k8s-stack`` chart: ``vmsingle.route``, ``vmagent.route``,
``vmalert.route``, ``alertmanager.route`` (templates/route.yaml) and ``grafana.route`` (the
grafana subchart, see :mod:`grafana`).

* a component's route and its Service (made by the VictoriaMetrics operator from the custom
  resource the chart renders) are ``<prefix>-<base>``: the prefix ``vmsingle``, ``vmagent``,
  ``vmalert`` or ``vmalertmanager``; the base the component's ``name``, else the chart's
  fullname (``victoria-metrics-k8s-stack``); ``useLegacyNaming`` swaps them;
* the port is ``route.port``, by default the component's ``spec.port`` (8428, 8429, 8080, 9093);
  the default match is the component's path prefix (``spec.extraArgs.http.pathPrefix``, or
  ``spec.routePrefix`` for Alertmanager) or ``/``; ``extraRules`` come first.
"""

from __future__ import annotations

from typing import Any

from homeplane.importer.charts import grafana
from homeplane.importer.charts.common import Tpl, Warn, fullname, http_route, service

CHART = "victoria-metrics-k8s-stack"
# values key -> (name prefix, default port, Service headless)
COMPONENTS = {
    "vmsingle": ("vmsingle", 8428, False),
    "vmagent": ("vmagent", 8429, False),
    "vmalert": ("vmalert", 8080, False),
    "alertmanager": ("vmalertmanager", 9093, True),
}


def render(release: str, namespace: str, values: dict[str, Any], warn: Warn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base_default = fullname(release, values, CHART)
    ns = str(values.get("namespaceOverride") or (values.get("global") or {}).get("namespaceOverride") or namespace)
    tpl = Tpl(release, ns, values, CHART, warn)
    for key, (prefix, default_port, headless) in COMPONENTS.items():
        comp = values.get(key) or {}  # the chart enables all four by default
        if not isinstance(comp, dict) or comp.get("enabled", True) is False:
            continue
        spec = comp.get("spec") or {}
        base = str(comp.get("name") or base_default)
        legacy = values.get("useLegacyNaming") or comp.get("useLegacyNaming")
        name = (f"{base}-{prefix}" if legacy else f"{prefix}-{base}")[:63].rstrip("-")
        port = int(spec.get("port") or default_port)
        cns = str(comp.get("namespaceOverride") or ns)
        out.append(service(name, cns, [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}], {
            "app.kubernetes.io/name": prefix, "app.kubernetes.io/instance": base,
            "app.kubernetes.io/component": "monitoring", "managed-by": "vm-operator",
        }, headless=headless))
        r = comp.get("route")
        if not isinstance(r, dict) or not r.get("enabled"):
            continue
        route_port = int(tpl(str(r["port"]))) if r.get("port") not in (None, "") else port
        path = spec.get("routePrefix") if key == "alertmanager" else (spec.get("extraArgs") or {}).get("http.pathPrefix")
        out.append(http_route(
            name, cns, r, {"name": name, "port": route_port}, tpl,
            default_matches=[{"path": {"type": "PathPrefix", "value": str(path or "/")}}],
            extra_rules_key="extraRules", redirect=False, tpl_matches=True,
        ))
    sub = values.get("grafana")
    if isinstance(sub, dict) and sub.get("enabled", True) is not False:
        out += grafana.render(release, namespace, sub, lambda m: warn(f"grafana: {m}"))
    return out

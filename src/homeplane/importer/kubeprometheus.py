"""The routes of the ``kube-prometheus-stack`` chart (and its grafana subchart), from values.

Real repos expose Alertmanager, Prometheus and Grafana through the chart's own ``route:`` values
rather than standalone HTTPRoutes. Rendered as the chart does it:

* the chart's full name is the release name when it contains ``kube-prometheus-stack`` (else
  ``<release>-kube-prometheus-stack``), ``fullnameOverride`` wins; both cut to 26 characters;
* each component's Service is ``<fullname>-alertmanager`` (port 9093) or ``<fullname>-prometheus``
  (9090), ``<component>.service.port`` overriding; Grafana is the grafana subchart (charts/grafana.py);
* ``<component>.route.<key>`` with ``enabled: true`` becomes an HTTPRoute named like the
  Service, plus ``-<key>`` for keys other than ``main``: its ``hostnames``, ``parentRefs``,
  ``matches`` and ``filters`` on one rule to the Service, then ``additionalRules``;
  ``httpsRedirect: true`` makes that rule a redirect to https instead.
"""

from __future__ import annotations

from typing import Any, Callable

from homeplane.importer.apptemplate import GATEWAY_API

CHART = "kube-prometheus-stack"
# component -> (service suffix, default port, enabled unless said otherwise)
COMPONENTS = {"alertmanager": ("alertmanager", 9093), "prometheus": ("prometheus", 9090)}


def fullname(release: str, values: dict[str, Any]) -> str:
    if values.get("fullnameOverride"):
        return str(values["fullnameOverride"])[:26].rstrip("-")
    name = str(values.get("nameOverride") or CHART)
    full = release if name in release else f"{release}-{name}"
    return full[:26].rstrip("-")


def _service(name: str, namespace: str, port: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ClusterIP", "selector": selector, "ports": [{"name": "http-web", "port": port, "targetPort": port}]},
    }


def _routes(comp: dict[str, Any], svc_name: str, port: int, namespace: str, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    routes = comp.get("route")
    if not isinstance(routes, dict):
        return out
    for key, r in sorted(routes.items()):
        if not isinstance(r, dict) or not r.get("enabled"):
            continue
        kind = r.get("kind", "HTTPRoute")
        if kind != "HTTPRoute":
            warn(f"route {key}: kind {kind} is not rendered")
            continue
        rule: dict[str, Any]
        if r.get("httpsRedirect"):
            rule = {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}
        else:
            rule = {"backendRefs": [{"name": svc_name, "port": port}]}
            if r.get("filters"):
                rule["filters"] = r["filters"]
        if r.get("matches"):
            rule["matches"] = r["matches"]
        meta: dict[str, Any] = {"name": svc_name if key == "main" else f"{svc_name}-{key}", "namespace": namespace}
        if r.get("annotations"):
            meta["annotations"] = dict(r["annotations"])
        if r.get("labels"):
            meta["labels"] = dict(r["labels"])
        spec: dict[str, Any] = {"parentRefs": r.get("parentRefs") or [], "rules": [rule, *(r.get("additionalRules") or [])]}
        if r.get("hostnames"):
            spec["hostnames"] = r["hostnames"]
        out.append({"apiVersion": r.get("apiVersion", GATEWAY_API), "kind": "HTTPRoute", "metadata": meta, "spec": spec})
    return out


def render(release: str, namespace: str, values: dict[str, Any], warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """Services and HTTPRoutes of Alertmanager, Prometheus and Grafana for one release."""
    full = fullname(release, values)
    out: list[dict[str, Any]] = []
    for comp_name, (suffix, default_port) in COMPONENTS.items():
        comp = values.get(comp_name) or {}
        if not isinstance(comp, dict) or comp.get("enabled", True) is False:
            continue
        port = int((comp.get("service") or {}).get("port") or default_port)
        svc = f"{full}-{suffix}"
        out.append(_service(svc, namespace, port, {"app.kubernetes.io/name": comp_name, f"{comp_name}": svc}))
        out += _routes(comp, svc, port, namespace, lambda m, c=comp_name: warn(f"{c}: {m}"))
    sub = values.get("grafana") or {}
    if isinstance(sub, dict) and sub.get("enabled", True) is not False:
        from homeplane.importer.charts import grafana

        out += grafana.render(release, namespace, sub, lambda m: warn(f"grafana: {m}"))
    return out

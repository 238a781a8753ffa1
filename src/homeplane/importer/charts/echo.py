"""home-operations' ``echo`` chart: ``httpRoute`` (charts/echo/templates/httproute.tpl).

One route named like the release's fullname (``echo``), its ``annotations``, ``parentRefs``,
``hostnames`` and ``matches`` templated, one rule to the Service on ``service.port`` (80); the
Service maps http 80 -> the pods' 8080 (and metrics 8081 unless ``config.metricsEnabled`` is false).
"""

from __future__ import annotations

from typing import Any

from homeplane.importer.charts.common import GATEWAY_API, Tpl, Warn, fullname, service

CHART = "echo"


def render(release: str, namespace: str, values: dict[str, Any], warn: Warn) -> list[dict[str, Any]]:
    name = fullname(release, values, CHART)
    port = int((values.get("service") or {}).get("port") or 80)
    ports = [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]
    if (values.get("config") or {}).get("metricsEnabled", True) is not False:
        ports.append({"name": "metrics", "port": 8081, "targetPort": 8081, "protocol": "TCP"})
    out = [service(name, namespace, ports, {"app.kubernetes.io/name": CHART, "app.kubernetes.io/instance": release})]
    r = values.get("httpRoute") or {}
    if not isinstance(r, dict) or not r.get("enabled"):
        return out
    tpl = Tpl(release, namespace, values, CHART, warn)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if r.get("annotations"):
        meta["annotations"] = {k: str(v) for k, v in tpl(r["annotations"]).items()}
    spec: dict[str, Any] = {
        "parentRefs": tpl(r.get("parentRefs") or []),
        "rules": [{
            "matches": tpl(r.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]),
            "backendRefs": [{"name": name, "port": port}],
        }],
    }
    if r.get("hostnames"):
        spec["hostnames"] = [str(h) for h in tpl(r["hostnames"])]
    out.append({"apiVersion": r.get("apiVersion", GATEWAY_API), "kind": r.get("kind", "HTTPRoute"), "metadata": meta, "spec": spec})
    return out

"""The ``grafana`` chart (grafana-community/helm-charts, before that grafana/helm-charts):
``route.<key>`` (templates/route.yaml), alone or as a subchart (kube-prometheus-stack,
victoria-metrics-k8s-stack).

* route and Service are the chart's fullname (``grafana`` is the name), ``-<key>`` on routes
  other than ``main``; the backend port is ``service.port`` (80); ``matches`` default to ``/``
  and are not templated; ``timeouts`` and ``sessionPersistence`` carry over to the rule;
* the Service maps ``service.port`` onto the pods' ``grafana`` port (``service.targetPort``, 3000).
"""

from __future__ import annotations

from typing import Any

from homeplane.importer.charts.common import Tpl, Warn, enabled_routes, fullname, http_route, keyed, service

CHART = "grafana"


def render(release: str, namespace: str, values: dict[str, Any], warn: Warn) -> list[dict[str, Any]]:
    namespace = str(values.get("namespaceOverride") or namespace)
    name = fullname(release, values, CHART)
    svc = values.get("service") or {}
    port = int(svc.get("port") or 80)
    out = []
    if svc.get("enabled", True) is not False:
        selector = {"app.kubernetes.io/name": str(values.get("nameOverride") or CHART), "app.kubernetes.io/instance": release}
        out.append(service(name, namespace, [
            {"name": str(svc.get("portName") or "service"), "port": port, "targetPort": int(svc.get("targetPort") or 3000), "protocol": "TCP"},
        ], selector))
    tpl = Tpl(release, namespace, values, CHART, warn)
    for key, r in enabled_routes(values.get("route"), warn):
        out.append(http_route(keyed(name, key), namespace, r, {"name": name, "port": port}, tpl,
                              rule_extras=("timeouts", "sessionPersistence")))
    return out

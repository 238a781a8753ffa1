"""goauthentik's ``authentik`` chart: ``server.route.<key>`` (charts/authentik/templates/server/route.yaml).

* the route and the Service are ``<fullname>-<server.name>`` (``server`` by default), with
  ``-<key>`` on routes other than ``main``; fullname from ``fullnameOverride``, else the release
  name when it contains ``authentik``, else ``<release>-authentik``;
* the backend port is ``server.service.servicePortHttps`` (443) when ``server.ingress.https``,
  else ``servicePortHttp`` (80); the default match is ``authentik.web.path`` (``/``) as a prefix;
* the Service maps http 80 -> 9000 and https 443 -> 9443 onto the server pods.
"""

from __future__ import annotations

from typing import Any

from homeplane.importer.charts.common import Tpl, Warn, enabled_routes, fullname, http_route, keyed, service

CHART = "authentik"


def render(release: str, namespace: str, values: dict[str, Any], warn: Warn) -> list[dict[str, Any]]:
    server = values.get("server") or {}
    if not isinstance(server, dict) or server.get("enabled", True) is False:
        return []
    namespace = str(values.get("namespaceOverride") or namespace)
    name = f"{fullname(release, values, CHART)}-{server.get('name') or 'server'}"[:63].rstrip("-")
    svc = server.get("service") or {}
    http_port = int(svc.get("servicePortHttp") or 80)
    https_port = int(svc.get("servicePortHttps") or 443)
    selector = {"app.kubernetes.io/name": CHART, "app.kubernetes.io/instance": release, "app.kubernetes.io/component": "server"}
    cports = server.get("containerPorts") or {}
    out = [service(name, namespace, [
        {"name": str(svc.get("servicePortHttpName") or "http"), "port": http_port, "targetPort": int(cports.get("http") or 9000), "protocol": "TCP"},
        {"name": str(svc.get("servicePortHttpsName") or "https"), "port": https_port, "targetPort": int(cports.get("https") or 9443), "protocol": "TCP"},
    ], selector)]
    port = https_port if (server.get("ingress") or {}).get("https") else http_port
    path = str(((values.get("authentik") or {}).get("web") or {}).get("path") or "/")
    tpl = Tpl(release, namespace, values, CHART, warn)
    for key, r in enabled_routes(server.get("route"), warn):
        out.append(http_route(
            keyed(name, key), namespace, r, {"name": name, "port": port}, tpl,
            default_matches=[{"path": {"type": "PathPrefix", "value": path}}], tpl_matches=True,
        ))
    return out

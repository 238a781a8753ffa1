"""rook's ``rook-ceph-cluster`` chart: ``route.dashboard`` (templates/httproute.yaml) and the
object stores' ``cephObjectStores[].route`` (templates/cephobjectstore-httproute.yaml).

The dashboard route, rendered when ``route.dashboard.host`` is set, is ``<clusterName or the
release namespace>-dashboard`` with one rule to ``rook-ceph-mgr-dashboard`` on the dashboard
port: ``cephClusterSpec.dashboard.port``, else 8443 with ``ssl`` (the default) or 7000 without.
That Service is made by the Rook operator (mgr/spec.go): rendered here so the route resolves.
"""

from __future__ import annotations

from typing import Any

from homeplane.importer.charts.common import GATEWAY_API, Warn, service

CHART = "rook-ceph-cluster"
DASHBOARD_SERVICE = "rook-ceph-mgr-dashboard"


def _route(name: str, namespace: str, r: dict[str, Any], hostnames: list[str], rule: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if r.get("labels"):
        meta["labels"] = {k: str(v) for k, v in r["labels"].items()}
    if r.get("annotations"):
        meta["annotations"] = {k: str(v) for k, v in r["annotations"].items()}
    spec: dict[str, Any] = {"parentRefs": r.get("parentRefs") or [], "rules": [rule]}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": meta, "spec": spec}


def render(release: str, namespace: str, values: dict[str, Any], warn: Warn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    dashboard = (values.get("cephClusterSpec") or {}).get("dashboard") or {}
    route = (values.get("route") or {}).get("dashboard") or {}
    host = route.get("host") or {}
    if isinstance(host, dict) and host.get("name") and dashboard.get("enabled", True) is not False:
        ssl = dashboard.get("ssl", True)
        port = int(dashboard.get("port") or (8443 if ssl else 7000))
        cluster = str(values.get("clusterName") or namespace)
        out.append(service(DASHBOARD_SERVICE, namespace, [
            {"name": "https-dashboard" if ssl else "http-dashboard", "port": port, "targetPort": port, "protocol": "TCP"},
        ], {"app": "rook-ceph-mgr", "rook_cluster": namespace, "mgr_role": "active"}))
        out.append(_route(f"{cluster}-dashboard", namespace, route, [str(host["name"])], {
            "matches": [{"path": {"type": host.get("pathType") or "PathPrefix", "value": host.get("path") or "/"}}],
            "backendRefs": [{"name": DASHBOARD_SERVICE, "port": port}],
        }))
    for store in values.get("cephObjectStores") or []:
        if not isinstance(store, dict) or not (store.get("route") or {}).get("enabled"):
            continue
        r = store["route"]
        gw = ((store.get("spec") or {}).get("gateway") or {})
        port = int(r.get("port") or gw.get("securePort") or gw.get("port") or 80)
        backend = f"rook-ceph-rgw-{store.get('name')}"
        out.append(service(backend, namespace, [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
                           {"app": "rook-ceph-rgw", "rook_object_store": str(store.get("name"))}))
        host = r.get("host") or {}
        out.append(_route(str(store.get("name")), namespace, r, [str(host["name"])] if host.get("name") else [], {
            "matches": [{"path": {"type": host.get("pathType") or "PathPrefix", "value": host.get("path") or "/"}}],
            "backendRefs": [{"name": backend, "port": port}],
        }))
    return out

"""Chart route values rendered as each chart's templates render them (names, hostnames,
parentRefs, backends, Services), and route-looking values of charts homeplane does not render."""

from __future__ import annotations

from typing import Any

from homeplane.importer.charts import RENDERERS, route_like_values
from homeplane.importer.charts import authentik, grafana, rookceph, victoriametrics

GW = [{"name": "envoy-internal", "namespace": "network"}]


def objs(out: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in out if o["kind"] == kind}


def backends(route: dict[str, Any]) -> list[tuple[str, int]]:
    return [(b["name"], b["port"]) for r in route["spec"]["rules"] for b in r.get("backendRefs", [])]


def test_authentik_server_route() -> None:
    warnings: list[str] = []
    values = {
        "authentik": {"web": {"path": "/"}},
        "server": {"route": {
            "main": {"enabled": True, "hostnames": ["sso.{{ .Values.domain }}"], "parentRefs": GW},
            "admin": {"enabled": True, "hostnames": ["admin.example.test"], "parentRefs": GW, "httpsRedirect": True},
            "off": {"enabled": False, "hostnames": ["x"]},
        }},
        "domain": "example.test",
    }
    out = authentik.render("authentik", "security", values, warnings.append)
    routes, services = objs(out, "HTTPRoute"), objs(out, "Service")
    assert set(routes) == {"authentik-server", "authentik-server-admin"} and not warnings
    main = routes["authentik-server"]
    assert main["spec"]["hostnames"] == ["sso.example.test"] and main["spec"]["parentRefs"] == GW
    assert backends(main) == [("authentik-server", 80)]
    assert main["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert routes["authentik-server-admin"]["spec"]["rules"][0]["filters"][0]["requestRedirect"] == {"scheme": "https", "statusCode": 301}
    svc = services["authentik-server"]["spec"]
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(80, 9000), (443, 9443)]
    assert svc["selector"]["app.kubernetes.io/component"] == "server"
    # another release name: <release>-authentik-server; https ingress: port 443
    out = authentik.render("sso", "security", {"server": {"ingress": {"https": True}, "route": {"main": {"enabled": True}}}}, warnings.append)
    assert backends(objs(out, "HTTPRoute")["sso-authentik-server"]) == [("sso-authentik-server", 443)]


def test_grafana_route_and_its_additional_rules() -> None:
    values = {"route": {"main": {
        "enabled": True, "hostnames": ["grafana.example.test"], "parentRefs": GW,
        "additionalRules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api/live"}}], "backendRefs": [{"name": "live", "port": 3001}]}],
        "timeouts": {"request": "30s"},
    }}}
    out = grafana.render("grafana", "observability", values, print)
    route = objs(out, "HTTPRoute")["grafana"]
    assert backends(route) == [("live", 3001), ("grafana", 80)]  # additional rules come first, as the template writes them
    assert route["spec"]["rules"][1]["timeouts"] == {"request": "30s"}
    (svc,) = objs(out, "Service").values()
    assert svc["spec"]["ports"] == [{"name": "service", "port": 80, "targetPort": 3000, "protocol": "TCP"}]
    assert "monitoring-grafana" in objs(grafana.render("monitoring", "o11y", {"route": {"main": {"enabled": True}}}, print), "HTTPRoute")


def test_victoria_metrics_k8s_stack_routes() -> None:
    values = {
        "vmsingle": {"route": {"enabled": True, "hostnames": ["vm.example.test"], "parentRefs": GW}},
        "vmagent": {"route": {"enabled": True, "hostnames": ["vmagent.example.test"], "parentRefs": GW}},
        "vmalert": {"enabled": False, "route": {"enabled": True}},
        "alertmanager": {"spec": {"routePrefix": "/am"}, "route": {"enabled": True, "hostnames": ["am.example.test"], "parentRefs": GW}},
        "grafana": {"route": {"main": {"enabled": True, "hostnames": ["grafana.example.test"], "parentRefs": GW}}},
    }
    out = victoriametrics.render("vm", "observability", values, print)
    routes = objs(out, "HTTPRoute")
    base = "vm-victoria-metrics-k8s-stack"
    assert set(routes) == {f"vmsingle-{base}", f"vmagent-{base}", f"vmalertmanager-{base}", "vm-grafana"}
    assert backends(routes[f"vmsingle-{base}"]) == [(f"vmsingle-{base}", 8428)]
    assert backends(routes[f"vmagent-{base}"]) == [(f"vmagent-{base}", 8429)]
    am = routes[f"vmalertmanager-{base}"]
    assert backends(am) == [(f"vmalertmanager-{base}", 9093)] and am["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/am"
    assert backends(routes["vm-grafana"]) == [("vm-grafana", 80)]
    services = objs(out, "Service")
    assert f"vmalert-{base}" not in services and services[f"vmalertmanager-{base}"]["spec"]["clusterIP"] == "None"
    # fullnameOverride and a component's own name
    out = victoriametrics.render("vm", "o", {"fullnameOverride": "vm", "vmsingle": {"name": "main", "route": {"enabled": True}}}, print)
    assert "vmsingle-main" in objs(out, "HTTPRoute") and "vmagent-vm" in objs(out, "Service")


def test_rook_ceph_cluster_dashboard_and_object_store_routes() -> None:
    values = {
        "cephClusterSpec": {"dashboard": {"enabled": True, "ssl": True}},
        "route": {"dashboard": {"host": {"name": "rook.example.test", "path": "/"}, "parentRefs": GW}},
        "cephObjectStores": [{"name": "ceph-objectstore", "spec": {"gateway": {"port": 80}},
                              "route": {"enabled": True, "host": {"name": "s3.example.test"}, "parentRefs": GW}}],
    }
    out = rookceph.render("rook-ceph-cluster", "rook-ceph", values, print)
    routes = objs(out, "HTTPRoute")
    assert backends(routes["rook-ceph-dashboard"]) == [("rook-ceph-mgr-dashboard", 8443)]  # ssl: 8443
    assert routes["rook-ceph-dashboard"]["spec"]["hostnames"] == ["rook.example.test"]
    assert backends(routes["ceph-objectstore"]) == [("rook-ceph-rgw-ceph-objectstore", 80)]
    assert not rookceph.render("r", "rook-ceph", {"route": {"dashboard": {}}}, print)  # no host: nothing


def test_every_renderer_is_registered_by_its_chart_name() -> None:
    assert {"app-template", "kube-prometheus-stack", "authentik", "grafana", "victoria-metrics-k8s-stack",
            "rook-ceph-cluster", "echo"} <= set(RENDERERS)


def test_route_like_values_of_unknown_charts() -> None:
    values = {
        "tcpRoute": {"enabled": True, "parentRefs": GW},
        "httpRoute": {"enabled": False, "hostnames": ["x"]},
        "server": {"route": {"main": {"hostnames": ["a.test"]}, "other": {"enabled": False}}},
        "ingress": {"enabled": True, "hosts": ["h"]},  # not a route
        "routes": ["not", "a", "map"],
    }
    assert sorted(route_like_values(values)) == ["server.route.main", "tcpRoute"]

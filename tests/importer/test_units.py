"""Patches, Helm values merging and tpl, app-template naming: small pure functions."""

from __future__ import annotations

import pytest

from homeplane.importer.apptemplate import render, resource_name
from homeplane.importer.docs import Doc
from homeplane.importer.helm import TemplateError, merge_values, render_tpl
from homeplane.importer.patches import PatchError, json6902, strategic_merge, target_matches


def test_strategic_merge() -> None:
    base = {"spec": {"a": 1, "list": [1, 2], "containers": [{"name": "app", "image": "x"}, {"name": "side", "image": "y"}]}}
    patch = {"spec": {"b": 2, "list": [3], "containers": [{"name": "app", "image": "z"}, {"name": "side", "$patch": "delete"}], "a": None}}
    out = strategic_merge(base, patch)
    assert out == {"spec": {"b": 2, "list": [3], "containers": [{"name": "app", "image": "z"}]}}
    assert strategic_merge({"x": {"y": 1}}, {"x": {"$patch": "replace", "z": 2}}) == {"x": {"z": 2}}


def test_json6902() -> None:
    doc = {"spec": {"items": ["a", "b"], "m": {"k": "v"}}}
    out = json6902(
        doc,
        [
            {"op": "add", "path": "/spec/items/-", "value": "c"},
            {"op": "replace", "path": "/spec/m/k", "value": "w"},
            {"op": "remove", "path": "/spec/items/0"},
            {"op": "add", "path": "/spec/new~1key", "value": 1},
            {"op": "copy", "from": "/spec/m", "path": "/spec/m2"},
        ],
    )
    assert out == {"spec": {"items": ["b", "c"], "m": {"k": "w"}, "new/key": 1, "m2": {"k": "w"}}}
    assert doc["spec"]["items"] == ["a", "b"]  # the input is not modified
    with pytest.raises(PatchError):
        json6902(doc, [{"op": "replace", "path": "/spec/nope", "value": 1}])


def test_patch_targets() -> None:
    d = Doc({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": "app-1", "namespace": "x", "labels": {"tier": "web"}}}, "f")
    assert target_matches({"group": "helm.toolkit.fluxcd.io", "kind": "HelmRelease"}, d)
    assert target_matches({"name": "app-.*"}, d)
    assert not target_matches({"name": "app"}, d)  # names are anchored regexes
    assert target_matches({"labelSelector": "tier=web"}, d) and not target_matches({"labelSelector": "tier!=web"}, d)


def test_helm_merge_and_tpl() -> None:
    assert merge_values({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": 3, "c": None}, "l": [2]}) == {"a": {"b": 3}, "l": [2]}
    vals = {"x": {"y": "v"}}
    assert render_tpl("{{ .Release.Name }}.{{ .Release.Namespace }}.{{ .Values.x.y | upper }}", "app", "ns", vals) == "app.ns.V"
    with pytest.raises(TemplateError):
        render_tpl("{{ include \"x\" . }}", "a", "b", {})


def test_app_template_naming_rules() -> None:
    tpl = lambda v: v  # noqa: E731
    assert resource_name("paperless", "app", {}, 1, tpl) == "paperless"
    assert resource_name("paperless", "app", {}, 2, tpl) == "paperless-app"
    assert resource_name("go2rtc", "streams", {}, 2, tpl) == "go2rtc-streams"
    assert resource_name("home-assistant", "assistant", {}, 2, tpl) == "home-assistant"  # already ends with -assistant
    assert resource_name("x", "y", {"forceRename": "Custom"}, 2, tpl) == "custom"
    assert resource_name("x", "y", {"suffix": "ext"}, 1, tpl) == "x-ext"


def test_app_template_default_route_and_primary_port() -> None:
    values = {
        "controllers": {"main": {}},
        "service": {"app": {"ports": {"metrics": {"port": 9090}, "web": {"port": 8080, "primary": True}}}},
        "route": {"app": {"hostnames": ["{{ .Release.Name }}.example.com"], "parentRefs": [{"name": "gw", "namespace": "network"}]}},
    }
    warnings: list[str] = []
    objs = render("demo", "apps", values, warnings.append)
    route = next(o for o in objs if o["kind"] == "HTTPRoute")
    assert route["metadata"] == {"name": "demo", "namespace": "apps"}
    assert route["spec"]["hostnames"] == ["demo.example.com"]
    assert route["spec"]["rules"] == [{"backendRefs": [{"group": "", "kind": "Service", "name": "demo", "namespace": "apps", "weight": 1, "port": 8080}]}]
    svc = next(o for o in objs if o["kind"] == "Service")
    assert svc["spec"]["selector"]["app.kubernetes.io/controller"] == "main"
    assert warnings == []


def test_kube_prometheus_stack_routes_follow_the_chart() -> None:
    from homeplane.importer import kubeprometheus

    warnings: list[str] = []
    values = {
        "alertmanager": {"route": {"main": {"enabled": True, "hostnames": ["am.lab.test"], "parentRefs": [{"name": "envoy-internal"}]}}},
        "prometheus": {
            "service": {"port": 9091},
            "route": {
                "main": {"enabled": False},
                "redirect": {"enabled": True, "httpsRedirect": True, "hostnames": ["prom.lab.test"]},
                "grpc": {"enabled": True, "kind": "GRPCRoute"},
            },
        },
        "grafana": {"route": {"main": {"enabled": True, "hostnames": ["grafana.lab.test"], "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}}},
    }
    objs = kubeprometheus.render("monitoring", "o11y", values, warnings.append)
    got = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert got == {
        ("Service", "monitoring-kube-prometheus-alertmanager"),
        ("HTTPRoute", "monitoring-kube-prometheus-alertmanager"),
        ("Service", "monitoring-kube-prometheus-prometheus"),
        ("HTTPRoute", "monitoring-kube-prometheus-prometheus-redirect"),
        ("Service", "monitoring-grafana"),
        ("HTTPRoute", "monitoring-grafana"),
    }
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    redirect = by[("HTTPRoute", "monitoring-kube-prometheus-prometheus-redirect")]["spec"]["rules"][0]
    assert redirect == {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}
    assert by[("Service", "monitoring-kube-prometheus-prometheus")]["spec"]["ports"][0]["port"] == 9091
    grafana = by[("HTTPRoute", "monitoring-grafana")]["spec"]["rules"][0]
    assert [(b["name"], b["port"]) for b in grafana["backendRefs"]] == [("monitoring-grafana", 80)]
    assert grafana["matches"][0]["path"]["value"] == "/"
    assert warnings == ["prometheus: route grpc: kind GRPCRoute is not rendered"]
    assert kubeprometheus.fullname("kube-prometheus-stack", {}) == "kube-prometheus-stack"
    assert kubeprometheus.fullname("x", {"fullnameOverride": "kps"}) == "kps"

"""The check report: protection per route and internet-facing routes without auth."""

from __future__ import annotations

from homeplane.report import build_report
from tests.conftest import translate_text
from tests.translate.helpers import BASE

EXTERNAL = BASE.replace("metadata: {name: gw, namespace: network}", "metadata: {name: envoy-external, namespace: network}")
ROUTE = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: apps}
spec:
  parentRefs: [{name: envoy-external, namespace: network}]
  hostnames: [app.example.com]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""
POLICY = """
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {name: lan, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  authorization: {defaultAction: Deny, rules: [{action: Allow, principal: {clientCIDRs: [10.0.0.0/8]}}]}
"""
TUNNEL = """
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cloudflared, namespace: network}
data:
  config.yaml: |
    ingress:
      - hostname: "*.example.com"
        service: https://OTHER.network.svc.cluster.local:443
      - service: http_status:404
"""


def report(text: str) -> dict:
    loaded, tr = translate_text(text)
    return build_report(loaded.objects, loaded.diagnostics, tr, 1)


def unprotected(rep: dict) -> list[str]:
    return [d["name"] for d in rep["diagnostics"] if d["code"] == "UnprotectedInternetRoute"]


def test_external_gateway_route_without_auth_is_flagged() -> None:
    rep = report(EXTERNAL + ROUTE)
    assert unprotected(rep) == ["app"]
    d = next(d for d in rep["diagnostics"] if d["code"] == "UnprotectedInternetRoute")
    assert d["severity"] == "warning" and "gateway name" in d["message"]
    assert rep["routes"][0]["internetFacing"] is True


def test_protected_route_is_not_flagged_and_shows_its_policy() -> None:
    rep = report(EXTERNAL + ROUTE + POLICY)
    assert unprotected(rep) == []
    assert rep["routes"][0]["securityPolicies"] == ["apps/lan"]
    assert rep["routes"][0]["rules"][0]["securityPolicy"] == "apps/lan"


def test_cors_alone_or_optional_jwt_is_not_protection() -> None:
    cors = POLICY.replace(
        "  authorization: {defaultAction: Deny, rules: [{action: Allow, principal: {clientCIDRs: [10.0.0.0/8]}}]}",
        "  cors: {allowOrigins: ['https://ui.example.com']}",
    )
    rep = report(EXTERNAL + ROUTE + cors)
    assert rep["routes"][0]["securityPolicies"] == ["apps/lan"] and unprotected(rep) == ["app"]
    jwks = '{"keys": []}'
    jwt = cors.replace("  cors: {allowOrigins: ['https://ui.example.com']}", f"  jwt: {{optional: true, providers: [{{name: idp, localJWKS: {{type: Inline, inline: '{jwks}'}}}}]}}")
    assert unprotected(report(EXTERNAL + ROUTE + jwt)) == ["app"]
    assert unprotected(report(EXTERNAL + ROUTE + jwt.replace("optional: true", "optional: false"))) == []


OTHER_GATEWAY = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: network}
spec:
  gatewayClassName: envoy
  listeners: [{name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}]
"""


def test_tunnel_config_decides_which_gateway_faces_the_internet() -> None:
    # the tunnel points at "other", so envoy-external is not internet-facing after all
    rep = report(EXTERNAL + ROUTE + OTHER_GATEWAY + TUNNEL.replace("OTHER", "other"))
    assert unprotected(rep) == []
    assert {g["name"]: g["internetFacing"] for g in rep["gateways"]} == {"envoy-external": False, "other": True}


def test_annotation_overrides() -> None:
    text = (EXTERNAL + ROUTE).replace(
        "metadata: {name: envoy-external, namespace: network}",
        "metadata: {name: envoy-external, namespace: network, annotations: {homeplane.dev/internet-facing: 'false'}}",
    )
    assert unprotected(report(text)) == []
